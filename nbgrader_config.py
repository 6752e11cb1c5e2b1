"""nbgrader configuration of the course (read by every `nbgrader ...` run from the repo root)."""

import os  # noqa: E402

c = get_config()  # noqa: F821  (provided by nbgrader/traitlets)

c.CourseDirectory.course_id = "pruning-llms"
c.CourseDirectory.root = "."
# nbgrader wants one sub-folder per assignment: solutions/<aid>/<aid>.ipynb
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# Each cell may run this long before it is interrupted (an infinite loop in a submission
# costs that cell, not the whole notebook).
c.Execute.timeout = 180
c.Execute.interrupt_on_timeout = True
c.Execute.kernel_name = "python3"

# nbgrader's Validate button (and `nbgrader validate`) skips the ungraded measurement cells tagged
# `skip-autograde`, as autograding does, so it takes seconds instead of minutes. nbgrader's
# Validator runs its own Execute, which reads this setting (nbclient's skip tag; by default
# `skip-execution`). Autograding uses course_lib.autograde's executor, which skips the same tag
# but never on a solution, test or locked cell (see below).
c.Execute.skip_cells_with_tag = "skip-autograde"

# A course-local exchange for a single machine (git-ignored; `make lab` and `make lab-instructor`
# create it): `nbgrader release_assignment` puts a release there, the students' Assignments tab
# lists it and *Submit* hands work in, `nbgrader collect` brings it to submitted/. An absolute
# path, so the Assignments tab finds it whatever folder JupyterLab serves. On JupyterHub set a
# shared folder instead, e.g. c.Exchange.root = "/srv/nbgrader/exchange".
c.Exchange.root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exchange")

# A student who deletes a graded cell gets it back (with the instructor's tests) at grading.
c.OverwriteCells.add_missing_cells = True

# Any stderr output zeroes a test cell. Drop harmless stderr: Python warnings, tqdm bars and
# transformers' log lines. A real error is an `error` output, which is never dropped.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(Warning: |\d+it/s\]|\d+/\d+ \[|\[transformers\]|it/s, )"

# Autograde with the course's executor: it skips ungraded measurement cells tagged
# `skip-autograde` (students and `pytest --nbval` still run them), and no tag can skip a
# solution, test or locked cell (nbclient's `skip-execution` tag otherwise can). The rest is
# nbgrader 0.9's default list; tests/test_grading.py checks that it stays so. The `c.Execute`
# settings above apply to it (a subclass of nbgrader's Execute).
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern,  # noqa: E402
                                    LimitOutput, SaveAutoGrades)

from course_lib.autograde import GuardedExecute  # noqa: E402

c.Autograde.autograde_preprocessors = [GuardedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
