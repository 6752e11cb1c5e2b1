"""The cell executor that ``nbgrader autograde`` uses for this course (see ``nbgrader_config.py``).

Two changes to nbgrader's own ``Execute`` preprocessor:

* **Cells tagged ``skip-autograde`` are not run while autograding.** The notebooks teach with
  measurements (perplexity sweeps, fine-tuning runs, timings) that take most of a notebook's
  run time and earn no points. Autograding skips them, and the feedback shows a one-line note
  in their place. Students (JupyterLab, nbgrader's Validate button) and maintainers
  (``pytest --nbval``) still run every cell. A tagged cell may define names that only other
  tagged cells use; ``tests/test_assignments.py`` checks that for every notebook.
* **A tag never skips a graded, solution or locked cell.** nbclient skips any cell tagged
  ``skip-execution``, and nbgrader neither restores nor checks tags. So a blank submission
  with that tag on every cell scored full marks: a skipped test cell raises nothing. Here
  such tags are removed from nbgrader's cells before they run, and ``skip-execution`` is
  not a skip tag during autograding.
"""

from __future__ import annotations

from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from nbgrader.utils import is_grade, is_locked, is_solution
from traitlets import Unicode

SKIP_TAG = "skip-autograde"
# the tags nbclient would honour by default or here: none of them may skip a graded cell
_SKIP_TAGS = {SKIP_TAG, "skip-execution"}
SKIPPED_NOTE = ("[not run while autograding: an ungraded measurement cell, tagged "
                f"'{SKIP_TAG}'. Run the notebook yourself to see its output.]\n")


def is_nbgrader_cell(cell) -> bool:
    """True for the cells nbgrader grades or protects: solution, test (grade) and locked cells."""
    return is_grade(cell) or is_solution(cell) or is_locked(cell)


def skipped_when_autograding(cell) -> bool:
    """Whether :class:`SkipTaggedExecute` leaves this cell unexecuted."""
    return (cell.cell_type == "code" and SKIP_TAG in cell.metadata.get("tags", [])
            and not is_nbgrader_cell(cell))


class SkipTaggedExecute(Execute):
    """nbgrader's ``Execute``, skipping ungraded cells tagged ``skip-autograde`` (only those)."""

    skip_cells_with_tag = Unicode(SKIP_TAG, help="cells with this tag are skipped unless nbgrader grades them")

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and is_nbgrader_cell(cell):
            tags = cell.metadata.get("tags", [])
            if _SKIP_TAGS.intersection(tags):
                cell.metadata["tags"] = [t for t in tags if t not in _SKIP_TAGS]
        elif skipped_when_autograding(cell):
            cell.outputs = [new_output("stream", name="stdout", text=SKIPPED_NOTE)]
            cell.execution_count = None
            return cell, resources
        return super().preprocess_cell(cell, resources, index)
