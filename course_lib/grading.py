"""The instructor's grading pipeline: release, autograde every submission, feedback, grades.csv.

    python -m course_lib.grading                 # everything, from the course root
    python -m course_lib.grading --root COURSE --assignment 02_magnitude --skip-release

Layout (nbgrader's, configured in ``nbgrader_config.py``)::

    solutions/<aid>/<aid>.ipynb               instructor source (solutions + hidden tests)
    notebooks/<aid>/<aid>.ipynb               student release (generated)
    submitted/<student>/<aid>/<aid>.ipynb     collected submissions
    autograded/, feedback/, gradebook.db      written here
    grades.csv                                student, assignment, score, max_score

Each submission is autograded in its own ``nbgrader`` process, in a working folder of its own
(a temporary folder holding a copy of that one submission, the course configuration and a
worker gradebook made from the release), so one that hangs, crashes its kernel or is not valid
JSON is reported and never blocks or changes anybody else's grades, and its kernel never sees
the course gradebook or another student's files through the working folder. ``--jobs N``
grades N submissions at once, each worker's torch limited to ``cores // N`` threads
(``OMP_NUM_THREADS``). Only the main process writes the course gradebook: it merges each
finished worker gradebook into it through nbgrader's ``Gradebook`` API, one submission at a
time, so SQLite never sees two writers. ``--shard K/N`` grades the students whose id hashes
(SHA-256, stable across machines and runs) to K of N. The exit status is non-zero only when
some submission could not be graded -- not when a student scored 0. Re-running is idempotent.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    student: str
    assignment: str
    score: float | None = None
    max_score: float | None = None
    error: str | None = None
    cells: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None  # wall time of autograding (and feedback) this submission
    tampering: list[str] = field(default_factory=list)  # test cells failed by the tamper guard, with why
    blocked: list[str] = field(default_factory=list)  # test cells failed for touching the grader's files

    @property
    def status(self) -> str:
        """``ok``; ``file access blocked: ...`` and/or ``tampering detected: ...`` (graded, those tests
        scored 0); or why it was not graded."""
        if self.error is not None:
            return self.error
        parts = []
        if self.blocked:
            parts.append("file access blocked: " + "; ".join(self.blocked))
        if self.tampering:
            parts.append("tampering detected: " + "; ".join(self.tampering))
        return " | ".join(parts) or "ok"

    @property
    def flagged(self) -> bool:
        """Graded, with tests the guard failed (tampering or the grader's files)."""
        return bool(self.tampering or self.blocked)

    @property
    def ok(self) -> bool:
        return self.error is None


def _env(extra: dict | None = None) -> dict:
    # nbgrader runs `alembic` and `jupyter` from PATH: put this environment's bin/ first
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), **(extra or {}))


def _nbgrader(root: Path, *args: str, timeout: float | None = None, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGS`` in ``root``. On timeout its whole process group is killed (and
    ``subprocess.TimeoutExpired`` raised); the kernel, which has a session of its own, is
    found by the caller through the worker token in its environment."""
    cmd = [sys.executable, "-m", "nbgrader", *args]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or _env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_worker_processes(token: str) -> list[int]:
    """SIGKILL every process whose environment holds ``COURSE_GRADING_WORKER=token`` (a kernel
    left behind by a killed nbgrader, or anything a submission started); their pids."""
    marker = f"COURSE_GRADING_WORKER={token}".encode()
    killed = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def assignments(root: Path, source: str = "solutions") -> list[str]:
    """Assignment ids: the folders of ``solutions/`` holding ``<aid>.ipynb``."""
    folder = root / source
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").is_file())


def release(root: Path, aids: list[str]) -> None:
    """Generate the student notebooks (``notebooks/<aid>/``) and register the assignments."""
    for aid in aids:
        proc = _nbgrader(root, "generate_assignment", aid, "--force")
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {aid} failed:\n{proc.stdout}\n{proc.stderr}")


def submissions(root: Path, aids: list[str] | None = None) -> list[tuple[str, str]]:
    """``(student, assignment)`` for every ``submitted/<student>/<aid>/`` folder."""
    out = []
    base = root / "submitted"
    if not base.is_dir():
        return out
    for student in sorted(p for p in base.iterdir() if p.is_dir()):
        for folder in sorted(p for p in student.iterdir() if p.is_dir()):
            if aids is None or folder.name in aids:
                out.append((student.name, folder.name))
    return out


def _check_notebooks(folder: Path) -> str | None:
    """A reason the submission cannot be graded (invalid JSON, not a notebook), or None."""
    import nbformat

    notebooks = sorted(folder.glob("*.ipynb"))
    if not notebooks:
        return "no .ipynb file in the submission"
    for path in notebooks:
        try:
            nbformat.read(path, as_version=4)
        except Exception as exc:  # noqa: BLE001 -- any parse failure is reported, not raised
            return f"{path.name} is not a valid notebook: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def scores(root: Path, student: str, aid: str) -> tuple[float, float, dict[str, float]]:
    """(score, max_score, {grade_id: score}) of one submission, read from the gradebook."""
    return _read_scores(_db_url(root), student, aid)


def _db_url(root: Path) -> str:
    """The gradebook URL: ``CourseDirectory.db_url`` from the config, else root/gradebook.db."""
    from traitlets.config.loader import PyFileConfigLoader

    cfg_file = root / "nbgrader_config.py"
    if cfg_file.is_file():
        cfg = PyFileConfigLoader(cfg_file.name, path=str(root)).load_config()
        url = cfg.get("CourseDirectory", {}).get("db_url")
        if url:
            return url
    return f"sqlite:///{(root / 'gradebook.db').resolve()}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; a clear ValueError otherwise."""
    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--shard takes K/N with whole numbers, e.g. 2/4; got {text!r}")
    k, n = int(parts[0]), int(parts[1])
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


def in_shard(student: str, k: int, n: int) -> bool:
    """Whether ``student`` belongs to shard K of N: SHA-256 of the id, so every machine and run
    agrees (Python's ``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(student.encode("utf-8")).digest()[:8], "big") % n == k - 1


def default_threads(jobs: int) -> int:
    """torch threads per worker: the CPUs this process may use, split between ``jobs`` workers."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // jobs)


# what a kernel must not see, relative to the course root (and to the repository of course_lib)
PRIVATE = ("solutions", "submitted", "autograded", "feedback", "notebooks", "source", "release", ".git",
           "gradebook.db", "nbgrader_config.py", "grades.csv")
SANDBOX_KERNEL = "python3-course-sandbox"


def sandbox_prefix() -> list[str] | None:
    """The command that gives a kernel a private mount namespace here (``unshare --mount``, with
    ``--map-root-user`` when not root), or None where that is not possible (no util-linux, no
    permission for namespaces, no setpriv): checked by mounting a tmpfs in one."""
    if not (shutil.which("unshare") and shutil.which("mount") and shutil.which("setpriv")):
        return None
    prefix = (["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc"]
              + ([] if os.geteuid() == 0 else ["--map-root-user"]))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(prefix + ["mount", "-t", "tmpfs", "none", tmp], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return prefix if proc.returncode == 0 else None


def _private_paths(root: Path) -> tuple[list[str], list[str]]:
    """(read-only folders, covered paths) for the sandboxed kernel of a course at ``root``."""
    ro, hide = _bases(root), [p for p in _watched(root) if os.path.exists(p)]
    return ro + [sys.prefix], hide


def _bases(root: Path) -> list[str]:
    import course_lib

    return [str(b) for b in sorted({root.resolve(), Path(course_lib.__file__).resolve().parents[1]})]


def _watched(root: Path) -> list[str]:
    """The grader's files a kernel must not touch, whether they exist yet or not: PRIVATE under the
    course root and under course_lib's repository, and an SQLite gradebook kept elsewhere."""
    paths = [str(Path(b) / name) for b in _bases(root) for name in PRIVATE]
    url = _db_url(root)
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in paths:
        paths.append(url[len("sqlite:///"):])
    return paths


def _write_kernelspec(work: Path, prefix: list[str] | None, workroot: Path, ro: list[str], hide: list[str],
                      watched: list[str]) -> None:
    """The worker's kernel: ``course_lib.autograde kernel`` (the file watch), inside the sandbox
    when ``prefix`` is given."""
    import json

    argv = []
    if prefix is not None:
        argv = prefix + [sys.executable, "-m", "course_lib.autograde", "sandbox", "--workroot", str(workroot)]
        for p in ro:
            argv += ["--ro", p]
        for p in hide:
            argv += ["--hide", p]
        argv += ["--"]
    argv += [sys.executable, "-m", "course_lib.autograde", "kernel", "--allow", str(work / "runtime")]
    for p in [*watched, str(workroot)]:
        argv += ["--watch", p]
    argv += ["--", "-f", "{connection_file}", "--HistoryManager.hist_file=:memory:"]
    spec = work / "share" / "jupyter" / "kernels" / SANDBOX_KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3 (course sandbox)",
                                                  "language": "python"}, indent=1))


_WORKER_CONFIG = """
# ---- course_lib.grading: this worker's private folder and gradebook ----
c.CourseDirectory.root = {root!r}
c.CourseDirectory.db_url = {db!r}
"""


def _course_config(root: Path) -> str:
    cfg = root / "nbgrader_config.py"
    return cfg.read_text() if cfg.is_file() else "c = get_config()\n"


def make_template(root: Path, aid: str, workroot: Path) -> Path:
    """A worker gradebook holding just assignment ``aid`` (no students): ``generate_assignment``
    in a scratch folder with a copy of ``solutions/<aid>``. Returns the SQLite file."""
    scratch = Path(tempfile.mkdtemp(prefix=f"template-{aid}-", dir=workroot))
    db = scratch / "gradebook.db"
    (scratch / "nbgrader_config.py").write_text(
        _course_config(root) + _WORKER_CONFIG.format(root=str(scratch), db=f"sqlite:///{db}"))
    shutil.copytree(root / "solutions" / aid, scratch / "solutions" / aid)
    proc = _nbgrader(scratch, "generate_assignment", aid, "--force", env=_env())
    if proc.returncode != 0 or not db.is_file():
        raise RuntimeError(f"nbgrader generate_assignment {aid} (worker template) failed:\n{proc.stdout}\n{proc.stderr}")
    out = workroot / f"template-{aid}.db"
    shutil.copy(db, out)
    shutil.rmtree(scratch)
    return out


def _tampering(autograded_nb: Path, ename: str | None = None) -> list[str]:
    """The tamper guard's verdicts (see course_lib.autograde) found in an autograded notebook:
    ``ename`` TamperingDetected (the default) or FileAccessBlocked."""
    import nbformat

    from course_lib.autograde import TAMPER_ENAME

    ename = ename or TAMPER_ENAME
    found = []
    try:
        nb = nbformat.read(autograded_nb, as_version=4)
    except Exception:  # noqa: BLE001 -- no autograded notebook: reported elsewhere
        return found
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") == ename:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id", "?")
                found.append(f"{gid}: {out.get('evalue', '')}")
    return found


def grade_in_worker(root: Path, student: str, aid: str, template: Path, workroot: Path, *,
                    timeout: float = 1800, threads: int | None = None, with_feedback: bool = True,
                    sandbox: tuple[list[str], list[str], list[str]] | None = None) -> tuple[Result, Path | None]:
    """Autograde one submission in a private working folder; never raises for a bad submission.

    Returns the result and the folder (holding ``gradebook.db``, ``autograded/``, ``feedback/``),
    or None when nothing was graded. Touches nothing in the course root. ``sandbox``:
    (command prefix, read-only folders, covered paths) for the kernel, or None for a plain kernel."""
    t0 = time.monotonic()
    result = Result(student, aid)
    reason = _check_notebooks(root / "submitted" / student / aid)
    if reason:
        result.error, result.seconds = reason, time.monotonic() - t0
        return result, None
    work = Path(tempfile.mkdtemp(prefix="w-", dir=workroot))
    db = work / "gradebook.db"
    shutil.copy(template, db)
    (work / "nbgrader_config.py").write_text(
        _course_config(root) + _WORKER_CONFIG.format(root=str(work), db=f"sqlite:///{db}"))
    shutil.copytree(root / "submitted" / student / aid, work / "submitted" / student / aid)
    prefix, ro, hide = sandbox if sandbox is not None else (None, [], [])
    _write_kernelspec(work, prefix, workroot, ro, hide, _watched(root))
    with open(work / "nbgrader_config.py", "a") as f:
        f.write(f"c.Execute.kernel_name = {SANDBOX_KERNEL!r}\n")
    extra_env = {"JUPYTER_PATH": str(work / "share" / "jupyter")}
    token = work.name + "-" + os.urandom(8).hex()
    threads = threads or default_threads(1)
    env = _env({"COURSE_GRADING_WORKER": token, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "COURSE_TORCH_THREADS": str(threads), "JUPYTER_RUNTIME_DIR": str(work / "runtime"), **extra_env})
    try:
        try:
            proc = _nbgrader(work, "autograde", aid, "--student", student, "--force", "--create",
                             timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            result.error = f"autograde took longer than {timeout:.0f} s"
            return result, None
        finally:
            kill_worker_processes(token)  # a kernel left behind, or anything the submission started
        try:
            result.score, result.max_score, result.cells = _read_scores(f"sqlite:///{db}", student, aid)
        except Exception as exc:  # noqa: BLE001 -- not in the gradebook: nbgrader failed
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            result.error = f"not graded ({type(exc).__name__}); nbgrader said: {tail}"
            return result, None
        if proc.returncode != 0:  # e.g. the kernel died: what nbgrader stored is not a grade
            tail = " | ".join(line for line in (proc.stdout + proc.stderr).strip().splitlines()[-3:])
            result.error = f"nbgrader autograde exited {proc.returncode}: {tail[-300:]}"
            result.score = result.max_score = None
            result.cells = {}
            return result, work
        from course_lib.autograde import BLOCKED_ENAME

        for nb in sorted((work / "autograded" / student / aid).glob("*.ipynb")):
            result.tampering += _tampering(nb)
            result.blocked += _tampering(nb, BLOCKED_ENAME)
        if with_feedback:
            fb = _nbgrader(work, "generate_feedback", aid, "--student", student, "--force", env=env)
            if fb.returncode != 0:
                last = fb.stderr.strip().splitlines()[-1] if fb.stderr.strip() else ""
                result.error = f"feedback failed: {last}"
        return result, work
    finally:
        result.seconds = time.monotonic() - t0


def _read_scores(db_url: str, student: str, aid: str) -> tuple[float, float, dict[str, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        sub = gb.find_submission(aid, student)
        cells = {grade.name: grade.score for nb in sub.notebooks for grade in nb.grades}
        return float(sub.score), float(sub.max_score), cells


def merge(course_db: str, work: Path, student: str, aid: str) -> None:
    """Copy one submission's autograded scores and comments from a worker gradebook into the
    course gradebook, through nbgrader's API. Idempotent: a re-run overwrites the automatic
    scores and comments and keeps the instructor's manual grades."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy.exc import SAWarning

    with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as src, Gradebook(course_db) as dst, \
            warnings.catch_warnings():
        # nbgrader's add_submission makes SQLAlchemy warn about its own autoflush; harmless
        warnings.simplefilter("ignore", SAWarning)
        ssub = src.find_submission(aid, student)
        dst.update_or_create_student(student)
        try:
            dsub = dst.find_submission(aid, student)
        except MissingEntry:
            dsub = dst.add_submission(aid, student)
        dsub.timestamp = ssub.timestamp
        for snb in ssub.notebooks:
            dnb = dst.find_submission_notebook(snb.name, aid, student)
            dnb.late_submission_penalty = snb.late_submission_penalty
            dnb.flagged = dnb.flagged or snb.flagged
            for g in snb.grades:
                d = dst.find_grade(g.name, snb.name, aid, student)
                d.auto_score, d.needs_manual_grade = g.auto_score, g.needs_manual_grade
                if d.manual_score is not None:
                    d.needs_manual_grade = False
            for cm in snb.comments:
                d = dst.find_comment(cm.name, snb.name, aid, student)
                d.auto_comment = cm.auto_comment
        dst.db.commit()


def _install(work: Path, root: Path, student: str, aid: str) -> None:
    """Replace the course's autograded/ and feedback/ folders of this submission by the worker's."""
    for kind in ("autograded", "feedback"):
        src, dst = work / kind / student / aid, root / kind / student / aid
        if dst.exists():
            shutil.rmtree(dst)
        if src.is_dir():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst)


def grade_all(root: Path, pairs: list[tuple[str, str]], *, jobs: int = 1, timeout: float = 1800,
              threads: int | None = None, with_feedback: bool = True, keep_work: bool = False,
              sandbox: str = "auto", progress=None) -> list[Result]:
    """Autograde ``(student, aid)`` pairs with ``jobs`` workers and merge each into the course
    gradebook as it finishes. The results come back in the order of ``pairs``.

    ``sandbox``: ``"auto"`` (each kernel in a private mount namespace where one can be made, see
    :func:`sandbox_prefix`), ``"on"`` (required: RuntimeError where impossible) or ``"off"``."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if sandbox not in ("auto", "on", "off"):
        raise ValueError(f"sandbox must be 'auto', 'on' or 'off', got {sandbox!r}")
    prefix = None if sandbox == "off" else sandbox_prefix()
    if prefix is None and sandbox == "on":
        raise RuntimeError("--sandbox on: no private mount namespace can be made here (needs util-linux's "
                           "unshare and mount, as root or with unprivileged user namespaces)")
    if prefix is None and sandbox == "auto":
        print("warning: no private mount namespace here: kernels run with the grader's file access "
              "(solutions/, gradebook, other submissions)", file=sys.stderr, flush=True)
    threads = threads or default_threads(jobs)
    course_db = _db_url(root)
    workroot = Path(tempfile.mkdtemp(prefix="course-grading-"))
    os.chmod(workroot, 0o700)
    results: dict[tuple[str, str], Result] = {}
    for kind in ("autograded", "feedback"):  # made now, so that the sandbox covers them from the start
        (root / kind).mkdir(exist_ok=True)
    box = None if prefix is None else (prefix, *_private_paths(root))
    try:
        templates = {aid: make_template(root, aid, workroot) for aid in sorted({a for _, a in pairs})}
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(grade_in_worker, root, s, a, templates[a], workroot, timeout=timeout,
                                   threads=threads, with_feedback=with_feedback, sandbox=box): (s, a)
                       for s, a in pairs}
            for fut in concurrent.futures.as_completed(futures):
                student, aid = futures[fut]
                result, work = fut.result()
                if work is not None and result.score is not None:
                    try:  # only this thread writes the course gradebook: one writer, one at a time
                        merge(course_db, work, student, aid)
                        _install(work, root, student, aid)
                    except Exception as exc:  # noqa: BLE001 -- reported, the others still merge
                        result.error = f"could not store the grades: {type(exc).__name__}: {exc}"
                if work is not None and not keep_work:
                    shutil.rmtree(work, ignore_errors=True)
                results[(student, aid)] = result
                if progress:
                    progress(result)
    finally:
        if not keep_work:
            shutil.rmtree(workroot, ignore_errors=True)
    return [results[p] for p in pairs]


def grade_one(root: Path, student: str, aid: str, timeout: float = 1800) -> Result:
    """Autograde one submission (in its own working folder) into the course gradebook."""
    return grade_all(root, [(student, aid)], jobs=1, timeout=timeout)[0]


def write_csv(path: Path, results: list[Result]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "assignment", "score", "max_score", "seconds", "status"])
        for r in results:
            writer.writerow([r.student, r.assignment, "" if r.score is None else f"{r.score:g}",
                             "" if r.max_score is None else f"{r.max_score:g}",
                             "" if r.seconds is None else f"{r.seconds:.1f}", r.status])


def summary(results: list[Result]) -> str:
    """A student x assignment table of ``score/max`` (``ERROR`` where grading failed, ``!`` after a
    score where the guard failed tests: tampering, or the grader's files touched) and each student's
    grading time; then every reason."""
    students = sorted({r.student for r in results})
    aids = sorted({r.assignment for r in results})
    cell = {(r.student, r.assignment): r for r in results}
    width = max([len("student")] + [len(s) for s in students])
    cols = [max(len(a), 9) for a in aids]
    lines = ["student".ljust(width) + "  " + "  ".join(a.ljust(w) for a, w in zip(aids, cols)) + "  seconds"]
    for s in students:
        row, secs = [], 0.0
        for a, w in zip(aids, cols):
            r = cell.get((s, a))
            if r is None:
                text = "-"
            else:
                secs += r.seconds or 0.0
                text = "ERROR" if r.score is None else f"{r.score:g}/{r.max_score:g}" + ("!" if r.flagged else "")
            row.append(text.ljust(w))
        lines.append(s.ljust(width) + "  " + "  ".join(row) + f"  {secs:7.1f}")
    errors = [f"  {r.student}/{r.assignment}: {r.error}" for r in results if not r.ok]
    if errors:
        lines += ["", "could not grade:"] + errors
    blocked = [f"  {r.student}/{r.assignment}: " + "; ".join(r.blocked) for r in results if r.ok and r.blocked]
    if blocked:
        lines += ["", "file access blocked (those tests scored 0):"] + blocked
    tampered = [f"  {r.student}/{r.assignment}: " + "; ".join(r.tampering) for r in results if r.ok and r.tampering]
    if tampered:
        lines += ["", "tampering detected (those tests scored 0):"] + tampered
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.grading", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="course root (holds nbgrader_config.py)")
    ap.add_argument("--assignment", action="append", help="only these assignments (repeatable)")
    ap.add_argument("--skip-release", action="store_true", help="do not regenerate notebooks/")
    ap.add_argument("--no-feedback", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per submission")
    ap.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker (default: usable CPUs // jobs)")
    ap.add_argument("--sandbox", choices=("auto", "on", "off"), default="auto",
                    help="each kernel in a private mount namespace that hides the course's files (default: "
                         "where possible)")
    ap.add_argument("--shard", default=None, metavar="K/N",
                    help="grade only the students of shard K of N (stable hash of the student id)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    shard = None
    if args.shard is not None:
        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            ap.error(str(exc))
    root = Path(args.root).resolve()
    known = assignments(root)
    aids = args.assignment or known
    unknown = sorted(set(aids) - set(known))
    if unknown:
        ap.error(f"unknown assignment(s) {', '.join(unknown)}; solutions/ has: {', '.join(known) or 'none'}")
    if not args.skip_release:
        release(root, aids)
    pairs = submissions(root, aids)
    if shard:
        pairs = [(s, a) for s, a in pairs if in_shard(s, *shard)]

    def progress(r: Result) -> None:
        print(f"{r.student}/{r.assignment}: " + (f"{r.score:g}/{r.max_score:g}" if r.score is not None else "")
              + ("" if r.status == "ok" else f" [{r.status}]") + f" ({r.seconds or 0:.1f} s)", flush=True)

    results = grade_all(root, pairs, jobs=args.jobs, timeout=args.timeout, threads=args.threads,
                        with_feedback=not args.no_feedback, sandbox=args.sandbox, progress=progress)
    # shards share the course folder on N machines: each writes its own csv
    write_csv(root / ("grades.csv" if shard is None else f"grades-{shard[0]}of{shard[1]}.csv"), results)
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
