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
* **A tamper guard around every test cell.** Student code runs in the kernel that runs the
  tests, so a solution cell could replace ``torch.equal``, ``torch.allclose``,
  ``torch.testing.assert_close``, a builtin, a ``course_lib`` function (the references the
  hidden tests compare with, ``reference_disabled``) or a name an instructor cell imported, and
  pass every later test. Before the first student cell the executor records, outside the
  kernel, which object each of those names is (``id`` of the object and of a function's code;
  see ``GUARD_SOURCE``); before and after each test cell it asks the kernel again through a
  silent request whose answer comes back in the execute reply (not in any output a cell can
  print). A test cell that starts, or ends, with any of them changed gets an error output
  ``TamperingDetected`` naming what changed -- so it scores 0 -- and
  ``course_lib.grading`` reports it. Names first bound later (by instructor cells) are added
  to the record when they first appear. This catches replacing those functions, not an
  adversary who rewrites IPython's own execution machinery to answer the guard; README says so.
"""

from __future__ import annotations

import json
import os

from nbclient.util import run_sync
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from nbgrader.utils import is_grade, is_locked, is_solution
from traitlets import Bool, Unicode

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


TAMPER_ENAME = "TamperingDetected"
BLOCKED_ENAME = "FileAccessBlocked"
WATCH_QUERY = "course_lib.autograde.watch_record"

# Run silently in the kernel; binds NAME to a JSON string {key: identity}. It uses only what it
# imports itself. Keys: builtins, the comparison functions the tests rely on, every function of
# every imported course_lib module (object and code), the modules in sys.modules, and the user
# namespace's names bound to modules, functions or classes.
GUARD_SOURCE = r"""
def NAME():
    import builtins, json, sys, types
    out = {}
    for k, v in vars(builtins).items():
        # ipykernel rebinds input() for every request: not a test function
        if (not k.startswith("_") or k in ("__import__", "__build_class__")) and k not in ("input", "raw_input"):
            out["builtins." + k] = id(v)
    crit = {
        "torch": ["allclose", "equal", "isclose", "eq", "ne", "all", "any", "testing.assert_close",
                  "Tensor.__eq__", "Tensor.__ne__", "Tensor.equal", "Tensor.allclose", "Tensor.all",
                  "Tensor.any", "Tensor.item", "Tensor.tolist", "Tensor.eq", "Tensor.__bool__",
                  "Tensor.sum", "Tensor.numel", "Tensor.abs"],
        "numpy": ["allclose", "array_equal", "isclose", "testing.assert_allclose",
                  "testing.assert_array_equal", "testing.assert_equal"],
    }
    for mod, names in crit.items():
        m = sys.modules.get(mod)
        if m is None:
            continue
        for n in names:
            obj = m
            try:
                for part in n.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            out[mod + "." + n] = id(obj)
    for name, m in list(sys.modules.items()):
        if name in ("torch", "torch.testing", "numpy", "numpy.testing", "builtins") or name == "course_lib" \
                or name.startswith("course_lib."):
            out["sys.modules." + name] = id(m)
        if name == "course_lib" or name.startswith("course_lib."):
            for k, v in list(vars(m).items()):
                if isinstance(v, types.FunctionType) and getattr(v, "__module__", None) == name:
                    out[name + "." + k] = id(v)
                    out[name + "." + k + ".__code__"] = id(v.__code__)
                    inner, depth = getattr(v, "__wrapped__", None), 1  # under decorators (contextmanager)
                    while isinstance(inner, types.FunctionType) and depth < 5:
                        out[name + "." + k + ".__wrapped__" * depth + ".__code__"] = id(inner.__code__)
                        inner, depth = getattr(inner, "__wrapped__", None), depth + 1
    ns = sys.modules["__main__"].__dict__
    for k, v in list(ns.items()):
        if k.startswith("_"):
            continue
        mod = v.__name__ if isinstance(v, types.ModuleType) else getattr(v, "__module__", None)
        if isinstance(v, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)) and \
                isinstance(mod, str) and mod.split(".")[0] in ("course_lib", "torch", "numpy", "builtins"):
            out["user." + k] = id(v)
    blocked = []
    try:  # the file watch (course_lib.autograde kernel) answers this event with its record
        sys.audit(WATCH_QUERY)
    except Exception as exc:
        if type(exc).__name__ == "WatchRecord":
            blocked = list(exc.args[0])
    return json.dumps({"ids": out, "blocked": blocked})
NAME = NAME()
"""


class TamperGuardError(RuntimeError):
    """The guard could not ask the kernel (no reply, or the guard code itself failed)."""


class GuardedExecute(SkipTaggedExecute):
    """:class:`SkipTaggedExecute` plus the tamper guard described in the module docstring."""

    tamper_guard = Bool(True, help="check the test-critical functions before and after each test cell")

    def preprocess(self, nb, resources=None, km=None):
        self._record, self._blocked_seen = None, 0
        return super().preprocess(nb, resources, km=km)

    async def _async_identities(self) -> dict:
        name = "_course_guard_" + os.urandom(6).hex()
        code = GUARD_SOURCE.replace("WATCH_QUERY", repr(WATCH_QUERY)).replace("NAME", name)
        msg_id = self.kc.execute(code, silent=True, store_history=False, user_expressions={"d": name})
        while True:
            msg = await self.kc.get_shell_msg(timeout=self.timeout or 60)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        content = msg["content"]
        if content.get("status") != "ok":
            raise TamperGuardError(f"the guard could not run: {content.get('ename')}: {content.get('evalue')}")
        expr = content.get("user_expressions", {}).get("d", {})
        if expr.get("status") != "ok":
            raise TamperGuardError(f"the guard could not run: {expr.get('ename')}: {expr.get('evalue')}")
        self.kc.execute(f"globals().pop({name!r}, None)", silent=True, store_history=False)
        answer = json.loads(eval(expr["data"]["text/plain"], {"__builtins__": {}}))  # a str literal
        return answer["ids"], answer["blocked"]

    def _identities(self) -> tuple[dict, list]:
        return run_sync(self._async_identities)()

    def _changed(self) -> tuple[list[str], list[str]]:
        """(what differs from the record, grader's files the kernel tried since the last check);
        new names join the record."""
        try:
            now, blocked = self._identities()
        except Exception as exc:  # noqa: BLE001 -- a kernel that cannot answer the guard fails the test
            return [str(exc)], []
        changed = sorted(k for k, v in self._record.items() if now.get(k) != v)
        for k, v in now.items():
            self._record.setdefault(k, v)
        new, self._blocked_seen = blocked[self._blocked_seen:], max(self._blocked_seen, len(blocked))
        return changed, list(dict.fromkeys(new))

    @staticmethod
    def _fail(cell, changed, when):
        shown = ", ".join(k.replace("builtins.", "").replace(".__code__", " (code)") for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        evalue = f"{when} this test cell, {shown}{more} had been replaced; the test does not count"
        cell.outputs.append(new_output("error", ename=TAMPER_ENAME, evalue=evalue,
                                       traceback=[f"{TAMPER_ENAME}: {evalue}"]))

    @staticmethod
    def _fail_blocked(cell, paths, when):
        shown = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
        evalue = f"{when} this test cell, the submission tried to access the grader's files ({shown}); " \
                 "the test does not count"
        cell.outputs.append(new_output("error", ename=BLOCKED_ENAME, evalue=evalue,
                                       traceback=[f"{BLOCKED_ENAME}: {evalue}"]))

    def preprocess_cell(self, cell, resources, index):
        guarded = self.tamper_guard and cell.cell_type == "code"
        if guarded and self._record is None and (is_solution(cell) or is_grade(cell)):
            self._record, blocked = self._identities()  # before any student code has run
            self._blocked_seen = len(blocked)
        if guarded and self._record is not None and is_grade(cell):
            changed, blocked = self._changed()
            if changed or blocked:
                cell.outputs = []
                cell.execution_count = None
                if changed:
                    self._fail(cell, changed, "before")
                if blocked:
                    self._fail_blocked(cell, blocked, "before")
                return cell, resources
            cell, resources = super().preprocess_cell(cell, resources, index)
            changed, blocked = self._changed()
            if changed:
                self._fail(cell, changed, "while running")
            if blocked:
                self._fail_blocked(cell, blocked, "while running")
            return cell, resources
        cell, resources = super().preprocess_cell(cell, resources, index)
        if guarded and self._record is not None and is_locked(cell) and not is_solution(cell):
            self._changed()  # names an instructor cell binds for the first time join the record
        return cell, resources


# ---- the sandboxed kernel: a private mount namespace per submission --------------------------
#
# course_lib.grading starts every kernel through `unshare --mount` and this entry point, which
# covers the course's private files before the kernel (and so any student code) starts: folders
# with an empty read-only tmpfs, files with an empty unreadable read-only file; the course root and the Python environment
# become read-only; the folder holding every worker's files (gradebooks, other submissions) is
# covered too, after the connection file has been copied into the kernel's own tmpfs. The
# kernel's working directory stays usable (it was entered before the covering mounts). The kernel
# gets a pid namespace of its own with its own /proc (no /proc/<grader>/root way around the
# mounts) and runs without any capability (setpriv), so it cannot unmount what covers the files.

def _mount(*args: str) -> None:
    import subprocess

    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"course sandbox: mount {' '.join(args)} failed: {proc.stderr.strip()}")


def sandbox_main(argv: list[str]) -> None:
    """``python -m course_lib.autograde sandbox [--ro P] [--hide P] --workroot W -- KERNEL...``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m course_lib.autograde sandbox")
    ap.add_argument("--ro", action="append", default=[], help="folder made read-only")
    ap.add_argument("--hide", action="append", default=[], help="file or folder covered")
    ap.add_argument("--workroot", required=True, help="folder of all workers, covered")
    ap.add_argument("kernel", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.kernel[1:] if args.kernel[:1] == ["--"] else list(args.kernel)  # the kernel's own "--" stays
    if "-f" not in cmd:
        raise SystemExit("course sandbox: the kernel command needs -f CONNECTION_FILE")
    i = cmd.index("-f") + 1
    with open(cmd[i]) as f:
        connection = f.read()
    _mount("--make-rprivate", "/")
    for path in args.ro:
        if os.path.isdir(path):
            _mount("--bind", path, path)
            _mount("-o", "remount,bind,ro", path)
    _mount("-t", "tmpfs", "-o", "size=1m,mode=700", "course-worker", args.workroot)
    empty = os.path.join(args.workroot, "hidden")
    with open(empty, "w"):
        pass
    os.chmod(empty, 0)
    for path in args.hide:
        if os.path.isdir(path):
            _mount("-t", "tmpfs", "-o", "ro,size=4k,mode=000", "course-hidden", path)
        elif os.path.exists(path):  # an empty, unreadable, read-only file in its place
            _mount("--bind", empty, path)
            _mount("-o", "remount,bind,ro", path)
    cmd[i] = os.path.join(args.workroot, "kernel.json")
    with open(cmd[i], "w") as f:
        f.write(connection)
    # no capabilities from here on (so no umount, no remount, no ptrace of the grader), for good
    os.execvp("setpriv", ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", *cmd])


# ---- the watched kernel: the grader's files refused and recorded, inside the kernel -----------
#
# Every graded kernel (sandboxed or not) starts through `python -m course_lib.autograde kernel`,
# which installs a Python audit hook (PEP 578) before ipykernel and so before any student code.
# The hook refuses -- PermissionError -- and records every Python-level access of the grader's
# files: open(), listing, removing, renaming, sqlite3.connect, a subprocess or exec naming one.
# The sandbox's mounts already make those files unreadable; the hook is what tells the grader an
# attempt was made: the guard above asks for the record (an audit event the hook answers by
# raising WatchRecord) before and after every test cell, and a test cell preceded by an attempt
# scores 0 (error FileAccessBlocked), so the attempt costs the exercise it was made for, and
# course_lib.grading reports it. Audit hooks cannot be removed from Python; code that goes around
# Python (ctypes, a compiled extension) is not seen by the hook, only stopped by the mounts.

class WatchRecord(Exception):
    """The watch's answer to :data:`WATCH_QUERY`: ``args[0]`` lists the paths refused so far."""


# audit events that name paths; the positions of their path arguments (None: every argument)
_PATH_EVENTS = {
    "open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.chdir": (0,), "os.remove": (0,), "os.rmdir": (0,),
    "os.mkdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1),
    "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,),
    "os.listxattr": (0,), "os.getxattr": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.copyfile": (0, 1), "shutil.copymode": (0, 1), "shutil.copystat": (0, 1), "shutil.copytree": (0, 1),
    "shutil.rmtree": (0,), "shutil.move": (0, 1), "shutil.chown": (0,), "shutil.make_archive": (2,),
    "shutil.unpack_archive": (0, 1), "sqlite3.connect": (0,), "glob.glob": (0,), "glob.glob/2": (0,),
    "os.exec": (0, 1), "os.posix_spawn": (0, 1), "os.spawn": (1, 2), "subprocess.Popen": (0, 1, 2),
    "os.system": (0,), "os.startfile": (0,),
}


def _strings(value):
    """The path-like strings in an audit argument (a path, bytes, a list of argv, a command)."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, (str, bytes, os.PathLike)):
        try:
            text = os.fsdecode(os.fspath(value))
        except (TypeError, ValueError):
            return
        yield text
        if " " in text:  # a shell command line
            yield from text.split()


def make_watch(watched: list[str], allowed: list[str]):
    """The audit hook: refuse and record paths under ``watched`` but not under ``allowed``."""
    sep = os.sep
    watched = tuple(os.path.normpath(os.path.abspath(p)) for p in watched)
    allowed = tuple(os.path.normpath(os.path.abspath(p)) for p in allowed)
    record: list[str] = []
    abspath, realpath, strings, events = os.path.abspath, os.path.realpath, _strings, _PATH_EVENTS

    def under(path, folders):
        return any(path == f or path.startswith(f + sep) for f in folders)

    def hook(event, args):
        if event == WATCH_QUERY:
            raise WatchRecord(list(record))
        where = events.get(event)
        if where is None:
            return
        for i in where:
            if i >= len(args):
                continue
            for text in strings(args[i]):
                for full in {abspath(text), realpath(text)}:
                    if under(full, watched) and not under(full, allowed):
                        record.append(full)
                        raise PermissionError(13, "the course grader's files are off limits to a graded notebook",
                                              full)

    return hook


def kernel_main(argv: list[str]) -> None:
    """``python -m course_lib.autograde kernel [--watch P] [--allow P] -- IPYKERNEL ARGS...``."""
    import argparse
    import runpy
    import sys

    ap = argparse.ArgumentParser(prog="python -m course_lib.autograde kernel")
    ap.add_argument("--watch", action="append", default=[], help="file or folder refused and recorded")
    ap.add_argument("--allow", action="append", default=[], help="folder inside a watched one still allowed")
    ap.add_argument("kernel", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    rest = args.kernel[1:] if args.kernel[:1] == ["--"] else args.kernel
    if "-f" not in rest:
        raise SystemExit("course watch: the kernel arguments need -f CONNECTION_FILE")
    allowed = [*args.allow, os.getcwd(), rest[rest.index("-f") + 1]]
    sys.addaudithook(make_watch(args.watch, allowed))
    sys.argv = ["ipykernel_launcher", *rest]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["sandbox"]:
        sandbox_main(sys.argv[2:])
    elif sys.argv[1:2] == ["kernel"]:
        kernel_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m course_lib.autograde sandbox --workroot W [--ro P] [--hide P] -- KERNEL...\n"
                         "       python -m course_lib.autograde kernel [--watch P] [--allow P] -- IPYKERNEL-ARGS...")
