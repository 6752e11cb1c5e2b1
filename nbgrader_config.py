"""nbgrader configuration of the course (read by every `nbgrader ...` run from the repo root)."""

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

# A student who deletes a graded cell gets it back (with the instructor's tests) at grading.
c.OverwriteCells.add_missing_cells = True

# Any stderr output zeroes a test cell. Drop harmless stderr: Python warnings, tqdm bars and
# transformers' log lines. A real error is an `error` output, which is never dropped.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(Warning: |\d+it/s\]|\d+/\d+ \[|\[transformers\]|it/s, )"
