"""Plausible wrong answers lose points, through the real autograder; correct ones written differently do not.

``tests/wrong_answers/<aid>.py`` lists, per solution cell (its nbgrader ``grade_id``), wrong answers a
student could plausibly write (``WRONG``) and correct answers written another way (``RIGHT``), each
as the whole source of that cell. For every assignment this module builds one small *trap
assignment* from the solution notebook -- the setup cells, and before each listed solution cell one
block per variant -- and grades one submission of it with ``python -m course_lib.grading``: the
real nbgrader autograder, the course's executor, the sandbox and the tamper guard.

A block for variant ``v`` of solution cell ``S`` with test cells ``T1..Tk`` is:

* a solution cell (grade id ``S--v``) holding the variant: the student's answer;
* ``T1..Tk`` copied whole (ids ``Ti--v``): visible and hidden tests, as graded;
* ``T1..Tk`` once more without their hidden tests (ids ``Ti--v-visible``): what the student sees.

The real ``S`` then runs again (its correct solution), so later exercises see a correct answer.
A WRONG variant must lose points in the graded copy **and** fail the visible copy (every trap has a
visible test, so the hidden tests hold no surprise); a RIGHT variant must get full marks in both. Two
controls run for every exercise and prove that the harness can tell the two apart: the instructor's
own solution (must get full marks) and the blank student cell (must get none).

Measurement cells (tagged ``skip-autograde``) are left out of the trap notebooks: the autograder
skips them anyway.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.autograde import SKIP_TAG

ROOT = Path(__file__).resolve().parent.parent
WRONG_DIR = Path(__file__).resolve().parent / "wrong_answers"
AIDS = grading.assignments(ROOT)
STUDENT = "traps"
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n.*?^[ \t]*### END HIDDEN TESTS[ \t]*\n?", re.S | re.M)
SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[ \t]*\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.S | re.M)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def load_variants(aid: str) -> tuple[dict, dict]:
    """(WRONG, RIGHT) of ``tests/wrong_answers/<aid>.py``."""
    path = WRONG_DIR / f"{aid}.py"
    spec = importlib.util.spec_from_file_location(f"wrong_answers_{aid}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "WRONG", {}), getattr(module, "RIGHT", {})


def visible_only(source: str) -> str:
    """A test cell's source as the student sees it (hidden tests removed)."""
    return HIDDEN.sub("", source)


def blank(source: str) -> str:
    """A solution cell's source as released (nbgrader's stub in place of the solution)."""
    return SOLUTION.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError()", source)


def exercises(nb) -> dict[str, tuple[int, list[int]]]:
    """grade_id of each solution cell -> (its index, indices of its test cells up to the next solution cell)."""
    out: dict[str, tuple[int, list[int]]] = {}
    current = None
    for i, cell in enumerate(nb.cells):
        meta = _meta(cell)
        if meta.get("solution"):
            current = meta["grade_id"]
            out[current] = (i, [])
        elif meta.get("grade") and current is not None:
            out[current][1].append(i)
    return out


def _copy(cell, grade_id: str, source: str):
    new = copy.deepcopy(cell)
    new.metadata["nbgrader"]["grade_id"] = grade_id
    new.source = source
    new.outputs = []
    new.execution_count = None
    new["id"] = uuid.uuid4().hex[:8]
    return new


def build(source_nb, wrong: dict, right: dict):
    """(instructor notebook, submission, expected) of the trap assignment.

    expected: list of (label, must_pass, graded copy ids, visible copy ids, points).
    """
    table = exercises(source_nb)
    unknown = sorted((set(wrong) | set(right)) - set(table))
    if unknown:
        raise KeyError(f"no solution cell with grade_id {unknown}; the notebook has {sorted(table)}")
    instr, student, expected = [], [], []
    for i, cell in enumerate(source_nb.cells):
        if SKIP_TAG in cell.metadata.get("tags", []):
            continue
        gid = _meta(cell).get("grade_id")
        if _meta(cell).get("solution") and gid in table:
            tests = [source_nb.cells[j] for j in table[gid][1]]
            points = sum(float(_meta(t).get("points", 0)) for t in tests)
            # the blank stub first: its definitions replace any a failing variant would have left behind
            variants = ([("blank", False, blank(cell.source))]
                        + [(f"wrong: {k}", False, v) for k, v in wrong.get(gid, {}).items()]
                        + [(f"right: {k}", True, v) for k, v in right.get(gid, {}).items()]
                        + [("solution", True, cell.source)])
            for n, (label, must_pass, src) in enumerate(variants):
                tag = f"v{n}"
                instr.append(_copy(cell, f"{gid}--{tag}", cell.source))
                student.append(_copy(cell, f"{gid}--{tag}", src))
                graded_ids, visible_ids = [], []
                for t in tests:
                    tid = _meta(t)["grade_id"]
                    for suffix, text, ids in (("", t.source, graded_ids), ("-visible", visible_only(t.source),
                                                                           visible_ids)):
                        c = _copy(t, f"{tid}--{tag}{suffix}", text)
                        instr.append(c)
                        student.append(copy.deepcopy(c))
                        ids.append(c.metadata["nbgrader"]["grade_id"])
                expected.append((f"{gid} {label}", must_pass, graded_ids, visible_ids, points))
        instr.append(cell)
        student.append(copy.deepcopy(cell))
    nb_i, nb_s = copy.deepcopy(source_nb), copy.deepcopy(source_nb)
    nb_i.cells, nb_s.cells = instr, student
    return nb_i, nb_s, expected


def test_helpers_strip_hidden_tests_and_solutions():
    src = "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 2\n### END HIDDEN TESTS\nassert f(0) == 0\n"
    assert visible_only(src) == "assert f(1) == 1\nassert f(0) == 0\n"
    sol = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert blank(sol) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"


@pytest.mark.parametrize("aid", AIDS)
def test_every_exercise_has_wrong_answers(aid):
    """Every exercise lists at least two plausible wrong answers."""
    assert (WRONG_DIR / f"{aid}.py").is_file(), f"tests/wrong_answers/{aid}.py is missing"
    wrong, _ = load_variants(aid)
    nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    for gid in exercises(nb):
        assert len(wrong.get(gid, {})) >= 2, f"{aid}: exercise {gid} lists {len(wrong.get(gid, {}))} wrong answers"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("traps")
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    plans = {}
    for aid in AIDS:
        if not (WRONG_DIR / f"{aid}.py").is_file():
            continue
        nb = nbformat.read(ROOT / "solutions" / aid / f"{aid}.ipynb", as_version=4)
        instr, sub, expected = build(nb, *load_variants(aid))
        (root / "solutions" / aid).mkdir(parents=True)
        nbformat.write(instr, root / "solutions" / aid / f"{aid}.ipynb")
        (root / "submitted" / STUDENT / aid).mkdir(parents=True)
        nbformat.write(sub, root / "submitted" / STUDENT / aid / f"{aid}.ipynb")
        plans[aid] = expected
    if not plans:
        pytest.skip("no tests/wrong_answers/*.py yet")
    proc = subprocess.run([sys.executable, "-m", "course_lib.grading", "--root", str(root), "--no-feedback",
                           "--jobs", "2"], capture_output=True, text=True, timeout=3600)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    return root, proc, plans


@pytest.mark.parametrize("aid", AIDS)
def test_wrong_answers_lose_points_and_right_ones_do_not(graded, aid):
    root, proc, plans = graded
    if aid not in plans:
        pytest.fail(f"tests/wrong_answers/{aid}.py is missing")
    _, _, cells = grading.scores(root, STUDENT, aid)
    nb = nbformat.read(root / "solutions" / aid / f"{aid}.ipynb", as_version=4)
    points_of = {_meta(c).get("grade_id"): float(_meta(c).get("points", 0)) for c in nb.cells}
    problems = []
    for label, must_pass, graded_ids, visible_ids, points in plans[aid]:
        got = sum(cells[g] for g in graded_ids)
        visible_ok = all(cells[g] == points_of[g] for g in visible_ids)
        if must_pass and (got != points or not visible_ok):
            problems.append(f"{label}: {got:g}/{points:g} (visible tests {'pass' if visible_ok else 'fail'})")
        if not must_pass and (got >= points or visible_ok):
            problems.append(f"{label}: {got:g}/{points:g}, visible tests "
                            f"{'pass: a trap with no visible test' if visible_ok else 'fail'}")
    assert not problems, f"{aid}:\n  " + "\n  ".join(problems)

