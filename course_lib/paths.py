"""Where the course's data lives, found from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

_MARKER = Path("course-model") / "config.json"


def data_dir() -> Path:
    """The course's ``data/`` folder.

    Order: the ``COURSE_DATA`` environment variable; then ``data/`` in the current
    directory or any parent (so a notebook in ``notebooks/<aid>/``, nbgrader's
    ``autograded/<student>/<aid>/`` and the tests all find it); then the folder next to
    this package (an editable install).
    """
    env = os.environ.get("COURSE_DATA")
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"COURSE_DATA={env!r} is not a directory")
        return path
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / _MARKER).is_file():
            return folder / "data"
    beside = Path(__file__).resolve().parent.parent / "data"
    if (beside / _MARKER).is_file():
        return beside
    raise FileNotFoundError(
        "could not find the course's data/ folder (looked in the current directory, its "
        "parents and next to course_lib); set COURSE_DATA to its path"
    )


def course_model_dir() -> Path:
    return data_dir() / "course-model"
