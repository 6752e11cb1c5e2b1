"""course_lib.autograde: which cells the autograder skips, without starting a kernel.

The executor's parent (nbgrader's ``Execute``) is replaced by a recorder, so these tests see
exactly which cells would reach the kernel. The end-to-end behaviour (a real nbgrader run,
hostile tags included) is in test_grading.py.
"""

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell
from nbgrader.preprocessors import Execute

from course_lib.autograde import SKIP_TAG, SKIPPED_NOTE, SkipTaggedExecute, is_nbgrader_cell, skipped_when_autograding


def _cell(tags=(), **nbgrader):
    cell = new_code_cell("x = 1", outputs=[])
    if tags:
        cell.metadata["tags"] = list(tags)
    if nbgrader:
        cell.metadata["nbgrader"] = {"grade_id": "g", "schema_version": 3, "grade": False, "solution": False,
                                     "locked": False, **nbgrader}
    return cell


@pytest.fixture
def executed(monkeypatch):
    seen = []

    def record(self, cell, resources, index):
        seen.append(index)
        return cell, resources

    monkeypatch.setattr(Execute, "preprocess_cell", record)
    return SkipTaggedExecute(), seen


def test_plain_tagged_cell_is_skipped_with_a_note(executed):
    ex, seen = executed
    cell = _cell([SKIP_TAG, "other"])
    out, _ = ex.preprocess_cell(cell, {}, 0)
    assert seen == [] and [o.text for o in out.outputs] == [SKIPPED_NOTE] and out.execution_count is None


@pytest.mark.parametrize("role", [{"grade": True, "points": 1}, {"solution": True}, {"locked": True}])
@pytest.mark.parametrize("tags", [[SKIP_TAG], ["skip-execution"], ["skip-execution", SKIP_TAG, "keep-me"]])
def test_nbgrader_cells_always_run_and_lose_skip_tags(executed, role, tags):
    ex, seen = executed
    cell = _cell(tags, **role)
    out, _ = ex.preprocess_cell(cell, {}, 3)
    assert seen == [3]
    assert out.metadata["tags"] == [t for t in tags if t == "keep-me"]


def test_untagged_and_skip_execution_cells_run(executed):
    ex, seen = executed
    for i, cell in enumerate([_cell(), _cell(["skip-execution"]), _cell(["raises-exception"])]):
        ex.preprocess_cell(cell, {}, i)
    assert seen == [0, 1, 2]
    # and nbclient's own skip check (run after ours) only knows the course's tag
    assert ex.skip_cells_with_tag == SKIP_TAG


def test_classification():
    assert skipped_when_autograding(_cell([SKIP_TAG]))
    assert not skipped_when_autograding(_cell())
    assert not skipped_when_autograding(_cell([SKIP_TAG], grade=True, points=2))
    md = new_markdown_cell("text")
    md.metadata["tags"] = [SKIP_TAG]
    assert not skipped_when_autograding(md)
    assert is_nbgrader_cell(_cell(locked=True)) and not is_nbgrader_cell(_cell())
