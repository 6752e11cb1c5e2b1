"""The grading pipeline on a small fixture assignment, with hostile submissions.

Every case is graded in one run of ``python -m course_lib.grading`` over a fresh course
folder and gradebook, and every score is read from the gradebook (nbgrader exits 0 even
when tests fail). The fixture (tests/fixtures/grading/solutions/00_fixture) has three
exercises worth 1 + 2 + 1 points.
"""

import copy
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.autograde import SKIP_TAG, SKIPPED_NOTE

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "grading"
AID = "00_fixture"
TOTAL = 4.0


def _source() -> nbformat.NotebookNode:
    return nbformat.read(FIXTURE / "solutions" / AID / f"{AID}.ipynb", as_version=4)


def _cell(nb, grade_id):
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return cell
    raise KeyError(grade_id)


def _submissions(release: nbformat.NotebookNode) -> dict[str, object]:
    """student id -> notebook (or raw text for the invalid one)."""
    sol = _source()
    subs: dict[str, object] = {"solution": sol, "blank": release}

    partial = copy.deepcopy(release)  # exercises 1 and 3 right, exercise 2 left blank
    _cell(partial, "fx-n-removed").source = _cell(sol, "fx-n-removed").source
    _cell(partial, "fx-zero-fraction").source = _cell(sol, "fx-zero-fraction").source
    subs["partial"] = partial

    loop = copy.deepcopy(sol)  # exercise 3 never returns: that cell times out, the rest is graded
    _cell(loop, "fx-zero-fraction").source = "while True:\n    pass"
    subs["infinite_loop"] = loop

    edited = copy.deepcopy(release)  # wrong answer, visible test replaced by `assert True`
    _cell(edited, "fx-n-removed").source = "def n_removed(numel, sparsity):\n    return 0"
    _cell(edited, "fx-n-removed-tests").source = "assert True"
    _cell(edited, "fx-my-mask").source = _cell(sol, "fx-my-mask").source
    subs["edited_tests"] = edited

    deleted = copy.deepcopy(sol)  # a test cell deleted: nbgrader puts it back
    deleted.cells = [c for c in deleted.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "fx-my-mask-tests"]
    subs["deleted_test"] = deleted

    sysexit = copy.deepcopy(sol)
    _cell(sysexit, "fx-zero-fraction").source = "import sys\nsys.exit(1)"
    subs["sys_exit"] = sysexit

    osexit = copy.deepcopy(sol)
    _cell(osexit, "fx-zero-fraction").source = "import os\nos._exit(0)"
    subs["os_exit"] = osexit

    noisy = copy.deepcopy(sol)  # correct, but warns on stderr every time it is called
    src = _cell(sol, "fx-n-removed").source
    _cell(noisy, "fx-n-removed").source = (
        "import warnings\n" + src.replace("    ### BEGIN SOLUTION\n",
                                          "    ### BEGIN SOLUTION\n    warnings.warn('rounding half to even')\n"))
    subs["stderr_warnings"] = noisy

    calls_ref = copy.deepcopy(sol)  # exercise 2 just calls course_lib's reference
    _cell(calls_ref, "fx-my-mask").source = (
        "from course_lib.pruning import magnitude_mask as _ref\n\ndef my_mask(weight, sparsity):\n"
        "    return _ref(weight, sparsity)")
    subs["calls_reference"] = calls_ref

    kernel = copy.deepcopy(sol)
    kernel.metadata["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia 1.9", "language": "julia"}
    subs["changed_kernelspec"] = kernel

    tagged = copy.deepcopy(partial)  # tries to skip every test (and solution) cell with a tag
    for cell in tagged.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id", "").startswith("fx-"):
            cell.metadata["tags"] = ["skip-execution", SKIP_TAG]
    subs["skip_tags_on_tests"] = tagged

    untagged = copy.deepcopy(sol)  # removes the tag from the measurement cell: it runs (and fails), ungraded
    for cell in untagged.cells:
        cell.metadata.pop("tags", None)
    subs["measurement_untagged"] = untagged

    subs["invalid_json"] = '{"cells": [ this is not json'

    # ---- tampering: the tamper guard (course_lib.autograde) fails every test cell that starts or
    # ends with a test-critical function replaced; the tests run before the tampering still count
    threads = copy.deepcopy(sol)  # honest; prints its kernel's torch thread count
    _cell(threads, "fx-zero-fraction").source = "print('torch threads', torch.get_num_threads())\n" + \
        _cell(sol, "fx-zero-fraction").source
    subs["prints_threads"] = threads

    t = copy.deepcopy(sol)  # exercise 2 wrong, torch.equal made to always agree
    _cell(t, "fx-my-mask").source = ("torch.equal = lambda a, b: True\n" + _cell(sol, "fx-my-mask").source.replace(
        "    return keep.view(weight.shape)", "    return keep.view(weight.shape) if weight.numel() == 4 else keep"))
    subs["tamper_torch_equal"] = t

    t = copy.deepcopy(sol)  # torch.testing.assert_close silenced in exercise 3's cell
    _cell(t, "fx-zero-fraction").source = ("import torch.testing\ntorch.testing.assert_close = lambda *a, **k: None\n"
                                           + _cell(sol, "fx-zero-fraction").source)
    subs["tamper_assert_close"] = t

    t = copy.deepcopy(sol)  # a builtin replaced in exercise 3's cell
    _cell(t, "fx-zero-fraction").source = ("import builtins\nbuiltins.round = lambda x, n=None: 4\n"
                                           + _cell(sol, "fx-zero-fraction").source)
    subs["tamper_builtin"] = t

    t = copy.deepcopy(sol)  # the tests' helper replaced: reference_disabled does nothing, my_mask calls the reference
    _cell(t, "fx-my-mask").source = ("import contextlib\nreference_disabled = lambda *f: contextlib.nullcontext()\n\n"
                                     "def my_mask(weight, sparsity):\n    return magnitude_mask(weight, sparsity)")
    subs["tamper_test_helper"] = t

    t = copy.deepcopy(sol)  # the helper replaced in course_lib itself, under another name
    _cell(t, "fx-my-mask").source = ("import course_lib.testing as ct\n\ndef _nothing(*funcs):\n    yield\n\n"
                                     "ct.reference_disabled.__wrapped__.__code__ = _nothing.__code__\n"
                                     "from course_lib.pruning import magnitude_mask as mm\n\n"
                                     "def my_mask(weight, sparsity):\n    return mm(weight, sparsity)")
    subs["tamper_course_lib_code"] = t

    t = copy.deepcopy(sol)  # tampers while the test runs: my_mask patches torch.equal when first called
    _cell(t, "fx-my-mask").source = (
        "def my_mask(weight, sparsity):\n    import torch\n    torch.equal = lambda a, b: True\n"
        "    keep = weight.abs() >= weight.abs().median()\n    return keep")
    subs["tamper_during_test"] = t
    return subs


# expected autograded score per student (None: must be reported as ungradable)
EXPECTED = {
    "solution": TOTAL,
    "blank": 0.0,
    "partial": 2.0,
    "infinite_loop": 3.0,
    "edited_tests": 2.0,
    "deleted_test": TOTAL,
    "sys_exit": 3.0,
    "os_exit": None,  # the kernel dies: nbgrader cannot finish, the pipeline reports it
    "stderr_warnings": TOTAL,
    "calls_reference": 2.0,
    "changed_kernelspec": TOTAL,
    "skip_tags_on_tests": 2.0,  # the tags are ignored: exactly the partial score (was 4/4 before)
    "measurement_untagged": TOTAL,
    "invalid_json": None,
    "prints_threads": TOTAL,
    # exercise 1 counts, exercise 2 (targeted) and every later test fail the guard
    "tamper_torch_equal": 1.0,
    "tamper_test_helper": 1.0,
    "tamper_course_lib_code": 1.0,
    "tamper_during_test": 1.0,
    # exercises 1 and 2 count, exercise 3 (targeted) fails the guard
    "tamper_assert_close": 3.0,
    "tamper_builtin": 3.0,
}
# Where a private mount namespace can be made (course_lib.grading.sandbox_prefix), a submission
# also tries the grader's files: it copies exercise 3 from solutions/, and writes the gradebook,
# another student's submission and the release. Without the sandbox that would work: not run.
SANDBOX = grading.sandbox_prefix() is not None
if SANDBOX:
    EXPECTED["snoop_files"] = 3.0  # exercise 3 (copied from solutions/) fails: the file is hidden
TAMPERED = {s for s in EXPECTED if s.startswith("tamper_")}

SNOOP = """import json, os
found = {{}}
for path in {paths!r}:
    try:
        if path.endswith(".ipynb") and "solutions" in path:
            src = [c["source"] for c in json.load(open(path))["cells"] if "def zero_fraction" in "".join(c["source"])]
            exec("".join(src[0]))
            found[path] = "read"
        else:
            with open(path, "ab") as f:
                f.write(b"tampered")
            found[path] = "written"
    except Exception as exc:
        found[path] = type(exc).__name__
print("SNOOP", json.dumps(found))
"""


def _snoop_paths(root):
    return [str(root / "solutions" / AID / f"{AID}.ipynb"), str(ROOT / "solutions" / "01_foundations"
            / "01_foundations.ipynb"), str(root / "gradebook.db"), str(root / "submitted" / "solution" / AID
            / f"{AID}.ipynb"), str(root / "notebooks" / AID / f"{AID}.ipynb"), str(root / "nbgrader_config.py"),
            str(ROOT / "course_lib" / "testing.py")]
JOBS = 2


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURE / "solutions", root / "solutions")
    config = (ROOT / "nbgrader_config.py").read_text()
    config += "\nc.Execute.timeout = 20\n"  # keeps the infinite-loop case short
    (root / "nbgrader_config.py").write_text(config)
    grading.release(root, [AID])
    release = nbformat.read(root / "notebooks" / AID / f"{AID}.ipynb", as_version=4)
    subs = _submissions(release)
    if SANDBOX:
        snoop = copy.deepcopy(release)
        for gid in ("fx-n-removed", "fx-my-mask"):
            _cell(snoop, gid).source = _cell(_source(), gid).source
        _cell(snoop, "fx-zero-fraction").source = SNOOP.format(paths=_snoop_paths(root))
        subs["snoop_files"] = snoop
    before = {p: Path(p).read_bytes() for p in _snoop_paths(root)[1:2] + _snoop_paths(root)[4:]}
    for student, nb in subs.items():
        folder = root / "submitted" / student / AID
        folder.mkdir(parents=True)
        path = folder / f"{AID}.ipynb"
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            nbformat.write(nb, path)
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading", "--root", str(root), "--skip-release",
                           "--jobs", str(JOBS)], capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    proc.files_before = before
    return root, proc


def test_pipeline_reports_failures_with_nonzero_exit(graded):
    root, proc = graded
    assert proc.returncode == 1  # invalid_json (and os_exit) could not be graded
    assert "could not grade" in proc.stdout
    assert "invalid_json/00_fixture" in proc.stdout


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_scores_from_gradebook(graded, student):
    root, _ = graded
    expected = EXPECTED[student]
    if expected is None:  # reported as ungradable in grades.csv, never silently scored
        rows = [r.split(",", 4) for r in (root / "grades.csv").read_text().splitlines()[1:]]
        status = {r[0]: r[4] for r in rows}[student]
        assert status != "ok" and status
        return
    score, max_score, cells = grading.scores(root, student, AID)
    assert max_score == TOTAL
    assert score == expected, cells


def test_grades_csv_and_feedback(graded):
    root, _ = graded
    rows = (root / "grades.csv").read_text().splitlines()
    assert rows[0] == "student,assignment,score,max_score,seconds,status"
    by_student = {r.split(",")[0]: r for r in rows[1:]}
    assert set(by_student) == set(EXPECTED)
    assert re.fullmatch(r"solution,00_fixture,4,4,\d+\.\d,ok", by_student["solution"])
    assert "not a valid notebook" in by_student["invalid_json"]
    assert (root / "feedback" / "solution" / AID / f"{AID}.html").is_file()


def test_rerun_is_idempotent(graded):
    root, _ = graded
    before = {s: grading.scores(root, s, AID)[0] for s, e in EXPECTED.items() if e is not None}
    result = grading.grade_one(root, "partial", AID)
    assert result.ok and result.score == EXPECTED["partial"]
    after = {s: grading.scores(root, s, AID)[0] for s, e in EXPECTED.items() if e is not None}
    assert before == after


def test_summary_table_lists_every_student(graded):
    root, proc = graded
    for student in EXPECTED:
        assert student in proc.stdout


def _autograded(root, student):
    return nbformat.read(root / "autograded" / student / AID / f"{AID}.ipynb", as_version=4)


def _measurement_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code" and "NBGRADER_EXECUTION" in c.source)


def test_tagged_measurement_cell_is_skipped_with_a_note(graded):
    root, _ = graded
    cell = _measurement_cell(_autograded(root, "solution"))
    assert [o.get("text") for o in cell.outputs] == [SKIPPED_NOTE]
    # without the tag the cell runs under autograde and raises; that costs no points (ungraded)
    cell = _measurement_cell(_autograded(root, "measurement_untagged"))
    assert [o.output_type for o in cell.outputs] == ["error"] and "must not run" in cell.outputs[0].evalue


def test_skip_tags_on_graded_cells_are_ignored(graded):
    root, _ = graded
    nb = _autograded(root, "skip_tags_on_tests")
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(tests) == 3 and all(c.execution_count for c in tests)  # executed (a skipped cell has none)
    assert not any(set(c.metadata.get("tags", [])) & {"skip-execution", SKIP_TAG} for c in tests)


def test_config_replaces_only_nbgraders_execute():
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    from course_lib.autograde import GuardedExecute

    ours = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config().Autograde.autograde_preprocessors
    default = Autograde.class_traits()["autograde_preprocessors"].default()
    assert ours == [GuardedExecute if p is Execute else p for p in default]


def _csv(root):
    with open(root / "grades.csv", newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def test_every_submission_graded_once_with_its_time(graded):
    root, _ = graded
    rows = (root / "grades.csv").read_text().splitlines()[1:]
    assert len(rows) == len(EXPECTED)  # none lost, none twice
    for student, row in _csv(root).items():
        assert float(row["seconds"]) >= 0
        if EXPECTED[student] is not None:
            assert float(row["score"]) == EXPECTED[student]  # the csv agrees with the gradebook


def test_tampering_is_reported_and_honest_work_is_not(graded):
    root, proc = graded
    status = {s: r["status"] for s, r in _csv(root).items()}
    for student in TAMPERED:
        assert status[student].startswith("tampering detected:"), status[student]
        assert student in proc.stdout.split("tampering detected (those tests scored 0):")[1]
    for student, expected in EXPECTED.items():
        if expected is not None and student not in TAMPERED:
            assert status[student] == "ok", (student, status[student])
    assert "torch.equal" in status["tamper_torch_equal"] and "round" in status["tamper_builtin"]
    assert "testing.assert_close" in status["tamper_assert_close"]
    assert "user.reference_disabled" in status["tamper_test_helper"]
    assert "course_lib.testing.reference_disabled.__wrapped__ (code)" in status["tamper_course_lib_code"]
    assert "while running" in status["tamper_during_test"]


def test_kernel_torch_threads_split_between_jobs(graded):
    root, _ = graded
    nb = _autograded(root, "prints_threads")
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"torch threads {grading.default_threads(JOBS)}\n" in text


def test_course_gradebook_holds_exactly_the_graded_submissions(graded):
    from nbgrader.api import Gradebook

    root, _ = graded
    with Gradebook(grading._db_url(root)) as gb:
        subs = {(s.student.id, s.assignment.name) for s in gb.assignment_submissions(AID)}
    graded_ok = {(s, AID) for s, e in EXPECTED.items() if e is not None}
    assert subs == graded_ok


@pytest.mark.skipif(not SANDBOX, reason="no private mount namespace here (unshare/mount/setpriv, namespaces): "
                                        "kernels run with the grader's file access")
def test_kernel_cannot_read_or_write_the_graders_files(graded):
    import json

    root, proc = graded
    nb = _autograded(root, "snoop_files")
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    found = json.loads(text.split("SNOOP ", 1)[1].splitlines()[0])
    assert set(found) == set(_snoop_paths(root))
    assert not {p: v for p, v in found.items() if v in ("read", "written")}, found
    for path, data in proc.files_before.items():  # the release, configs, course_lib: unchanged
        assert Path(path).read_bytes() == data, path
    original = (root / "submitted" / "solution" / AID / f"{AID}.ipynb").read_bytes()
    assert b"tampered" not in original and grading.scores(root, "solution", AID)[0] == TOTAL
