"""Every course assignment, graded end to end through nbgrader.

* ``notebooks/`` never drifts from ``solutions/``: regenerating the student versions
  into a temp course gives the committed files, byte for byte.
* Round trip: the solution notebook submitted as-is earns full marks; the unmodified
  student notebook earns 0 autograded points, and grading it does not crash.
  Scores come from the gradebook. Each full notebook is graded once as the solution and
  once blank; the hostile cases live in test_grading.py on a small fixture.
* Autograding skips the ungraded measurement cells tagged ``skip-autograde``
  (course_lib.autograde). The autograded solution must then run without a single error:
  no kept cell may need a name that only a skipped cell defines.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.autograde import SKIP_TAG, SKIPPED_NOTE, is_nbgrader_cell

ROOT = Path(__file__).resolve().parent.parent
AIDS = grading.assignments(ROOT)


def _course_copy(root: Path) -> None:
    shutil.copytree(ROOT / "solutions", root / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")


def test_every_assignment_has_solution_and_release():
    assert AIDS, "no assignments found in solutions/"
    for aid in AIDS:
        assert (ROOT / "notebooks" / aid / f"{aid}.ipynb").is_file(), f"run `make release` for {aid}"


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("assignments")
    _course_copy(root)
    grading.release(root, AIDS)
    return root


@pytest.mark.parametrize("aid", AIDS)
def test_student_notebooks_match_a_fresh_release(course, aid):
    fresh = (course / "notebooks" / aid / f"{aid}.ipynb").read_text()
    committed = (ROOT / "notebooks" / aid / f"{aid}.ipynb").read_text()
    assert fresh == committed, f"notebooks/{aid} is stale: run `make release`"


def test_student_notebooks_hide_solutions_and_hidden_tests():
    for aid in AIDS:
        text = (ROOT / "notebooks" / aid / f"{aid}.ipynb").read_text()
        # (visible tests may run the student's code under `reference_disabled(...)`: each prompt says which
        # course_lib functions are disabled while grading, so the student sees the graded condition)
        for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            assert marker not in text, f"{aid}: student notebook contains {marker!r}"
        nb = nbformat.reads(text, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def graded(course):
    for aid in AIDS:
        for student, src in (("solution", course / "solutions" / aid), ("blank", course / "notebooks" / aid)):
            dest = course / "submitted" / student / aid
            dest.mkdir(parents=True)
            shutil.copy(src / f"{aid}.ipynb", dest / f"{aid}.ipynb")
    # two at a time (each kernel on one thread): the real notebooks through the parallel path, in half the time
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading", "--root", str(course), "--skip-release",
                           "--no-feedback", "--jobs", "2"], capture_output=True, text=True, timeout=3600)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    return course, proc


def test_grading_run_succeeds(graded):
    _, proc = graded
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.parametrize("aid", AIDS)
def test_solution_gets_full_marks(graded, aid):
    course, _ = graded
    score, max_score, cells = grading.scores(course, "solution", aid)
    assert max_score > 0
    assert score == max_score, {k: v for k, v in cells.items()}


@pytest.mark.parametrize("aid", AIDS)
def test_blank_notebook_gets_zero(graded, aid):
    course, _ = graded
    score, max_score, cells = grading.scores(course, "blank", aid)
    assert max_score > 0
    assert score == 0, {k: v for k, v in cells.items() if v}


def _skip_tagged(nb):
    return [i for i, c in enumerate(nb.cells) if SKIP_TAG in c.metadata.get("tags", [])]


@pytest.mark.parametrize("aid", AIDS)
def test_skip_tags_only_on_ungraded_code_cells_and_kept_in_release(aid):
    source = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    release = nbformat.read(ROOT / "notebooks" / aid / f"{aid}.ipynb", as_version=4)
    tagged = _skip_tagged(source)
    for i in tagged:
        cell = source.cells[i]
        assert cell.cell_type == "code" and not is_nbgrader_cell(cell), f"{aid} cell {i}"
    assert [release.cells[i].source for i in _skip_tagged(release)] == [source.cells[i].source for i in tagged]


@pytest.mark.parametrize("aid", AIDS)
def test_autograded_solution_runs_without_errors(graded, aid):
    course, _ = graded
    nb = nbformat.read(course / "autograded" / "solution" / aid / f"{aid}.ipynb", as_version=4)
    errors = [(i, o.ename, o.evalue[:120]) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{aid}: kept cells failed under autograde (a skipped cell defines what they use?)"
    notes = [i for i, c in enumerate(nb.cells) if [o.get("text") for o in c.get("outputs", [])] == [SKIPPED_NOTE]]
    source = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    assert notes == _skip_tagged(source)
