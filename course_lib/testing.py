"""Helpers for the notebooks' autograded tests.

The hidden tests compare a student's function with ``course_lib``'s reference. A
submission that merely calls the reference must not earn those points, so the tests
compute the expected values first and then run the student's function inside
:func:`reference_disabled`, which makes the reference functions raise -- however
they were imported (``from course_lib.pruning import magnitude_mask as f`` included),
because it swaps the functions' code objects, not the names that point to them.
"""

from __future__ import annotations

import contextlib
import types


class ReferenceDisabledError(RuntimeError):
    """Raised by a course_lib reference function while a student's function is graded."""


def _disabled(*args, **kwargs):
    # No closures and no module globals: this code object is grafted onto reference
    # functions of other modules, and names its host through its own code name.
    import sys

    from course_lib.testing import ReferenceDisabledError as error

    name = sys._getframe().f_code.co_name
    raise error(f"course_lib's {name} is disabled while your function is graded: implement it yourself")


@contextlib.contextmanager
def reference_disabled(*funcs):
    """Within the block, every function in ``funcs`` raises ``ReferenceDisabledError``.

    The original code objects are restored on exit, even if the block raised.
    """
    saved = []
    try:
        for func in funcs:
            if not isinstance(func, types.FunctionType):
                raise TypeError(f"reference_disabled takes plain Python functions, got {func!r}")
            if func.__code__.co_freevars:
                raise TypeError(f"reference_disabled cannot disable closures such as {func.__qualname__}")
            saved.append((func, func.__code__, func.__defaults__, func.__kwdefaults__))
            func.__code__ = _disabled.__code__.replace(co_name=func.__code__.co_name)
            func.__defaults__ = None
            func.__kwdefaults__ = None
        yield
    finally:
        for func, code, defaults, kwdefaults in reversed(saved):
            func.__code__ = code
            func.__defaults__ = defaults
            func.__kwdefaults__ = kwdefaults
