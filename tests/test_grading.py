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


def _submissions(release: nbformat.NotebookNode, root: Path) -> dict[str, object]:
    """student id -> notebook (or raw text for the invalid one). Hostile cases share a submission
    where each targets a different exercise (the fixture has three), so that the module grades
    13 submissions instead of one per case."""
    sol = _source()
    subs: dict[str, object] = {"solution": sol, "blank": release}

    partial = copy.deepcopy(release)  # exercises 1 and 3 right, exercise 2 left blank
    _cell(partial, "fx-n-removed").source = _cell(sol, "fx-n-removed").source
    _cell(partial, "fx-zero-fraction").source = _cell(sol, "fx-zero-fraction").source
    subs["partial"] = partial

    # ex 1: wrong answer, visible test replaced by `assert True` (0); ex 2: right, its test cell
    # deleted -- nbgrader puts it back (2); ex 3 never returns: that cell times out (0)
    t = copy.deepcopy(release)
    _cell(t, "fx-n-removed").source = "def n_removed(numel, sparsity):\n    return 0"
    _cell(t, "fx-n-removed-tests").source = "assert True"
    _cell(t, "fx-my-mask").source = _cell(sol, "fx-my-mask").source
    t.cells = [c for c in t.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "fx-my-mask-tests"]
    _cell(t, "fx-zero-fraction").source = "while True:\n    pass"
    subs["edited_deleted_loop"] = t

    # another kernelspec (ignored); ex 1 right but warns on stderr every call (1); ex 2 right, prints
    # its kernel's torch thread count (2); ex 3 calls sys.exit (0): the kernel lives on
    t = copy.deepcopy(sol)
    t.metadata["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia 1.9", "language": "julia"}
    _cell(t, "fx-n-removed").source = "import warnings\n" + _cell(sol, "fx-n-removed").source.replace(
        "    ### BEGIN SOLUTION\n", "    ### BEGIN SOLUTION\n    warnings.warn('rounding half to even')\n")
    _cell(t, "fx-my-mask").source = "print('torch threads', torch.get_num_threads())\n" + \
        _cell(sol, "fx-my-mask").source
    _cell(t, "fx-zero-fraction").source = "import sys\nsys.exit(1)"
    subs["noisy_kernelspec_sys_exit"] = t

    # skip tags on every solution and test cell (ignored), the measurement cell's tag removed (it
    # runs and fails, ungraded); ex 1 and 3 right, ex 2 just calls course_lib's reference (0)
    t = copy.deepcopy(partial)
    _cell(t, "fx-my-mask").source = (
        "from course_lib.pruning import magnitude_mask as _ref\n\ndef my_mask(weight, sparsity):\n"
        "    return _ref(weight, sparsity)")
    for cell in t.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id", "").startswith("fx-"):
            cell.metadata["tags"] = ["skip-execution", SKIP_TAG]
        elif SKIP_TAG in cell.metadata.get("tags", []):
            cell.metadata.pop("tags")
    subs["tags_and_reference"] = t

    subs["os_exit"] = copy.deepcopy(sol)  # the kernel dies: nbgrader cannot finish
    _cell(subs["os_exit"], "fx-zero-fraction").source = "import os\nos._exit(0)"
    subs["invalid_json"] = '{"cells": [ this is not json'

    # ---- tampering: the tamper guard (course_lib.autograde) fails every test cell that starts or
    # ends with a test-critical function replaced; each submission restores what it replaced for
    # one exercise before it tampers with the next, so each tampering costs its own exercise
    t = copy.deepcopy(sol)  # ex 2 wrong with torch.equal always agreeing; ex 3 silences assert_close
    _cell(t, "fx-my-mask").source = ("_real_equal = torch.equal\ntorch.equal = lambda a, b: True\n"
                                     + _cell(sol, "fx-my-mask").source.replace(
        "    return keep.view(weight.shape)", "    return keep.view(weight.shape) if weight.numel() == 4 else keep"))
    _cell(t, "fx-zero-fraction").source = ("torch.equal = _real_equal\nimport torch.testing\n"
                                           "torch.testing.assert_close = lambda *a, **k: None\n"
                                           + _cell(sol, "fx-zero-fraction").source)
    subs["tamper_equal_assert_close"] = t

    t = copy.deepcopy(sol)  # ex 2: the tests' helper replaced, my_mask calls the reference; ex 3: round
    _cell(t, "fx-my-mask").source = ("import contextlib\nreference_disabled = lambda *f: contextlib.nullcontext()\n\n"
                                     "def my_mask(weight, sparsity):\n    return magnitude_mask(weight, sparsity)")
    _cell(t, "fx-zero-fraction").source = ("from course_lib.testing import reference_disabled\nimport builtins\n"
                                           "builtins.round = lambda x, n=None: 4\n" + _cell(sol, "fx-zero-fraction").source)
    subs["tamper_helper_builtin"] = t

    t = copy.deepcopy(sol)  # ex 2: the helper's code replaced in course_lib; ex 3 patches torch.equal while tested
    _cell(t, "fx-my-mask").source = ("import course_lib.testing as ct\n\ndef _nothing(*funcs):\n    yield\n\n"
                                     "_code = ct.reference_disabled.__wrapped__.__code__\n"
                                     "ct.reference_disabled.__wrapped__.__code__ = _nothing.__code__\n"
                                     "from course_lib.pruning import magnitude_mask as mm\n\n"
                                     "def my_mask(weight, sparsity):\n    return mm(weight, sparsity)")
    _cell(t, "fx-zero-fraction").source = (
        "ct.reference_disabled.__wrapped__.__code__ = _code\n\ndef zero_fraction(t):\n    import torch\n"
        "    torch.equal = lambda a, b: True\n    return (t == 0).sum().item() / t.numel()")
    subs["tamper_code_during_test"] = t

    # ---- the grader's files: each exercise's cell first tries one of them, then answers right
    for student, attempts in BLOCKED_ATTEMPTS.items():
        t = copy.deepcopy(sol)
        for gid, (kind, path) in attempts.items():
            _cell(t, gid).source = SNOOP.format(kind=kind, path=str(root / path) if path[0] != "/" else path) \
                + _cell(sol, gid).source
        subs[student] = t
    # ex 1 of the second one goes around Python (libc's open through ctypes): the file watch does
    # not see that, only the sandbox's mounts stop it (and the exercise, unseen, still counts)
    t = subs["blocked_autograded_release"]
    _cell(t, "fx-n-removed").source = CTYPES_OPEN.format(path=str(root / "gradebook.db")) \
        + _cell(sol, "fx-n-removed").source
    return subs


CTYPES_OPEN = """import ctypes as _ct
print("CTYPES", _ct.CDLL(None).open({path!r}.encode(), 0))
"""


# the grader's files a submission tries, one per exercise: (what it does, path under the course root)
BLOCKED_ATTEMPTS = {
    "blocked_db_submitted_solutions": {
        "fx-n-removed": ("sqlite", "gradebook.db"),
        "fx-my-mask": ("write", f"submitted/solution/{AID}/{AID}.ipynb"),
        "fx-zero-fraction": ("read", str(ROOT / "solutions" / "01_foundations" / "01_foundations.ipynb")),
    },
    "blocked_autograded_release": {
        "fx-my-mask": ("read", f"autograded/solution/{AID}/{AID}.ipynb"),
        "fx-zero-fraction": ("write", f"notebooks/{AID}/{AID}.ipynb"),
    },
}
SNOOP = """import json as _json
try:
    if {kind!r} == "sqlite":
        import sqlite3
        _con = sqlite3.connect({path!r})
        _con.execute("update grade set auto_score = 99")
        _con.commit()
        _got = "written"
    elif {kind!r} == "write":
        with open({path!r}, "ab") as _f:
            _f.write(b"tampered")
        _got = "written"
    else:
        _got = "read " + str(len(open({path!r}).read()))
except Exception as _exc:
    _got = type(_exc).__name__
print("SNOOP", _json.dumps([{path!r}, _got]))
"""


# expected autograded score per student (None: must be reported as ungradable)
EXPECTED = {
    "solution": TOTAL,
    "blank": 0.0,
    "partial": 2.0,
    "edited_deleted_loop": 2.0,
    "noisy_kernelspec_sys_exit": 3.0,
    "tags_and_reference": 2.0,  # the tags are ignored (a blank with them scored 4/4 before)
    "os_exit": None,  # the kernel dies: nbgrader cannot finish, the pipeline reports it
    "invalid_json": None,
    # exercise 1 counts, exercises 2 and 3 (each tampered with) fail the guard
    "tamper_equal_assert_close": 1.0,
    "tamper_helper_builtin": 1.0,
    "tamper_code_during_test": 1.0,
    # every exercise that tried the grader's files scores 0, though its answer is right
    "blocked_db_submitted_solutions": 0.0,
    "blocked_autograded_release": 1.0,
}
TAMPERED = {s for s in EXPECTED if s.startswith("tamper_")}
BLOCKED = set(BLOCKED_ATTEMPTS)
SANDBOX = grading.sandbox_prefix() is not None


def _protected(root):
    """Files no submission may change: the course's release, sources and configuration (the
    repository's own files are left out: other work may change them while this module runs)."""
    return [root / "notebooks" / AID / f"{AID}.ipynb", root / "nbgrader_config.py",
            root / "solutions" / AID / f"{AID}.ipynb"]


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
    subs = _submissions(release, root)
    before = {p: p.read_bytes() for p in _protected(root)}
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
    result, = grading.grade_all(root, [("partial", AID)], with_feedback=False)
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
    cell = _measurement_cell(_autograded(root, "tags_and_reference"))
    assert [o.output_type for o in cell.outputs] == ["error"] and "must not run" in cell.outputs[0].evalue


def test_skip_tags_on_graded_cells_are_ignored(graded):
    root, _ = graded
    nb = _autograded(root, "tags_and_reference")
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
        assert "fx-n-removed-tests" not in status[student]  # the test before the tampering counts
    for student, expected in EXPECTED.items():
        if expected is not None and student not in TAMPERED | BLOCKED:
            assert status[student] == "ok", (student, status[student])
    s = status["tamper_equal_assert_close"]
    assert "fx-my-mask-tests: before this test cell, torch.equal had been replaced" in s
    assert "fx-zero-fraction-tests: before this test cell, torch.testing.assert_close had been replaced" in s
    s = status["tamper_helper_builtin"]
    assert "fx-my-mask-tests: before this test cell, user.reference_disabled" in s
    assert "fx-zero-fraction-tests: before this test cell, round had been replaced" in s
    s = status["tamper_code_during_test"]
    assert "fx-my-mask-tests: before this test cell, course_lib.testing.reference_disabled.__wrapped__ (code)" in s
    assert "fx-zero-fraction-tests: while running this test cell, torch.equal" in s


def _snooped(root, student):
    """[(path, what the submission got)] from its SNOOP lines, in cell order."""
    import json

    nb = _autograded(root, student)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    return [tuple(json.loads(line.split("SNOOP ", 1)[1])) for line in text.splitlines() if line.startswith("SNOOP ")]


@pytest.mark.parametrize("student", sorted(BLOCKED))
def test_grader_files_refused_reported_and_untouched(graded, student):
    root, proc = graded
    attempts = BLOCKED_ATTEMPTS[student]
    got = _snooped(root, student)
    assert len(got) == len(attempts) and all(what == "PermissionError" for _, what in got), got
    status = _csv(root)[student]["status"]
    assert status.startswith("file access blocked: "), status
    cells = grading.scores(root, student, AID)[2]
    for gid, (_, path) in attempts.items():  # the targeted exercise scores 0, its path is named
        assert cells[gid + "-tests"] == 0, cells
        full = path if path.startswith("/") else str(root / path)
        assert f"{gid}-tests: before this test cell, the submission tried to access the grader's files ({full})" \
            in status, status
    for gid in {"fx-n-removed", "fx-my-mask", "fx-zero-fraction"} - set(attempts):
        assert cells[gid + "-tests"] > 0 and gid not in status  # the honest exercise counts
    assert student in proc.stdout.split("file access blocked (those tests scored 0):")[1]
    # no trace: the release, the configuration and the repository unchanged; the other student's
    # submission untouched and their grade intact
    for path, data in proc.files_before.items():
        assert path.read_bytes() == data, path
    original = (root / "submitted" / "solution" / AID / f"{AID}.ipynb").read_bytes()
    assert b"tampered" not in original and grading.scores(root, "solution", AID)[0] == TOTAL


def test_file_watch_refuses_only_the_watched_paths(tmp_path):
    """The audit hook alone (also where no sandbox can be made): watched paths refused and
    recorded, allowed ones inside them and everything else untouched."""
    from course_lib.autograde import WATCH_QUERY, WatchRecord, make_watch

    secret, mine = tmp_path / "secret", tmp_path / "secret" / "mine"
    mine.mkdir(parents=True)
    code = f"""
import os, shutil, sqlite3, subprocess, sys
from course_lib.autograde import make_watch, WATCH_QUERY, WatchRecord
sys.addaudithook(make_watch([{str(secret)!r}], [{str(mine)!r}]))
open({str(mine / "ok.txt")!r}, "w").write("fine")
refused = []
for attempt in (lambda: open({str(secret / "db")!r}, "w"), lambda: os.listdir({str(secret)!r}),
                lambda: sqlite3.connect({str(secret / "gb.db")!r}), lambda: os.symlink({str(secret)!r}, "x"),
                lambda: subprocess.run(["cat", {str(secret / "db")!r}]), lambda: os.system("cat {secret}/db"),
                lambda: shutil.copytree({str(secret)!r}, {str(tmp_path / "copy")!r})):
    try:
        attempt()
    except PermissionError:
        refused.append(True)
try:
    sys.audit(WATCH_QUERY)
except WatchRecord as rec:
    print((len(refused), len(rec.args[0]), sorted(set(rec.args[0]))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    n_refused, n_recorded, paths = eval(out.stdout)
    assert n_refused == n_recorded == 7
    assert set(paths) == {str(secret), str(secret / "db"), str(secret / "gb.db")}
    assert (mine / "ok.txt").read_text() == "fine" and not (tmp_path / "secret" / "db").exists()
    with pytest.raises(SystemExit, match="-f CONNECTION_FILE"):
        from course_lib.autograde import kernel_main
        kernel_main(["--watch", str(secret), "--"])
    assert make_watch and WatchRecord and WATCH_QUERY


def test_validate_skips_the_measurement_cells(tmp_path):
    """`nbgrader validate` (what the Validate button runs) with the course configuration skips the
    cells tagged skip-autograde, as autograding does; without the tag the same cell runs."""
    import time

    nb = _source()
    cell = _measurement_cell(nb)
    cell.source = "open('measured.txt', 'w').write('ran')\nraise RuntimeError('a measurement cell ran under Validate')"
    path = tmp_path / f"{AID}.ipynb"
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    for tags, runs in ((cell.metadata["tags"], False), ([], True)):
        cell.metadata["tags"] = tags
        nbformat.write(nb, path)
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "nbgrader", "validate", path.name], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=grading._env())
        print(f"validate with tags {tags}: {time.monotonic() - t0:.1f} s")
        # an ungraded cell's error never fails validation: whether it ran shows in its file
        assert "Success! Your notebook passes all the tests." in out.stdout, out.stdout + out.stderr
        assert (tmp_path / "measured.txt").exists() == runs, tags
        (tmp_path / "measured.txt").unlink(missing_ok=True)


def test_kernel_torch_threads_split_between_jobs(graded):
    root, _ = graded
    nb = _autograded(root, "noisy_kernelspec_sys_exit")
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
def test_sandbox_stops_what_goes_around_the_file_watch(graded):
    root, _ = graded
    nb = _autograded(root, "blocked_autograded_release")
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "CTYPES -1\n" in text  # libc's open() of the gradebook failed: it is covered
