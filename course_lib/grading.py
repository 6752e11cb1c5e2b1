"""The instructor's grading pipeline: release, autograde every submission, feedback, grades.csv.

    python -m course_lib.grading                 # everything, from the course root
    python -m course_lib.grading --root COURSE --assignment 02_magnitude --skip-release

Layout (nbgrader's, configured in ``nbgrader_config.py``)::

    solutions/<aid>/<aid>.ipynb               instructor source (solutions + hidden tests)
    notebooks/<aid>/<aid>.ipynb               student release (generated)
    submitted/<student>/<aid>/<aid>.ipynb     collected submissions
    autograded/, feedback/, gradebook.db      written here
    grades.csv                                student, assignment, score, max_score

Each submission is autograded in its own ``nbgrader`` process, so one that hangs, crashes
its kernel or is not valid JSON is reported and never blocks or changes anybody else's
grades. The exit status is non-zero only when some submission could not be graded -- not
when a student scored 0. Re-running is idempotent (``--force`` everywhere, one gradebook).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
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

    @property
    def ok(self) -> bool:
        return self.error is None


def _nbgrader(root: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nbgrader", *args]
    # nbgrader runs `alembic` and `jupyter` from PATH: put this environment's bin/ first
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


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
    from nbgrader.api import Gradebook

    with Gradebook(_db_url(root)) as gb:
        sub = gb.find_submission(aid, student)
        cells = {}
        for nb in sub.notebooks:
            for grade in nb.grades:
                cells[grade.name] = grade.score
        return float(sub.score), float(sub.max_score), cells


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


def grade_one(root: Path, student: str, aid: str, timeout: float = 1800) -> Result:
    """Autograde one submission in its own process; never raises for a bad submission."""
    result = Result(student, aid)
    reason = _check_notebooks(root / "submitted" / student / aid)
    if reason:
        result.error = reason
        return result
    try:
        proc = _nbgrader(root, "autograde", aid, "--student", student, "--force", "--create", timeout=timeout)
    except subprocess.TimeoutExpired:
        result.error = f"autograde took longer than {timeout:.0f} s"
        return result
    try:
        result.score, result.max_score, result.cells = scores(root, student, aid)
    except Exception as exc:  # noqa: BLE001 -- not in the gradebook: nbgrader failed
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        result.error = f"not graded ({type(exc).__name__}); nbgrader said: {tail}"
        return result
    if proc.returncode != 0:
        result.error = f"nbgrader autograde exited {proc.returncode}"
    return result


def feedback(root: Path, result: Result) -> None:
    proc = _nbgrader(root, "generate_feedback", result.assignment, "--student", result.student, "--force")
    if proc.returncode != 0:
        result.error = f"feedback failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"


def write_csv(path: Path, results: list[Result]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "assignment", "score", "max_score", "status"])
        for r in results:
            writer.writerow([r.student, r.assignment, "" if r.score is None else f"{r.score:g}",
                             "" if r.max_score is None else f"{r.max_score:g}", "ok" if r.ok else r.error])


def summary(results: list[Result]) -> str:
    """A student x assignment table of ``score/max`` (``ERROR`` where grading failed)."""
    students = sorted({r.student for r in results})
    aids = sorted({r.assignment for r in results})
    cell = {(r.student, r.assignment): r for r in results}
    width = max([len("student")] + [len(s) for s in students])
    cols = [max(len(a), 9) for a in aids]
    lines = ["student".ljust(width) + "  " + "  ".join(a.ljust(w) for a, w in zip(aids, cols))]
    for s in students:
        row = []
        for a, w in zip(aids, cols):
            r = cell.get((s, a))
            text = "-" if r is None else ("ERROR" if r.score is None else f"{r.score:g}/{r.max_score:g}")
            row.append(text.ljust(w))
        lines.append(s.ljust(width) + "  " + "  ".join(row))
    errors = [f"  {r.student}/{r.assignment}: {r.error}" for r in results if not r.ok]
    if errors:
        lines += ["", "could not grade:"] + errors
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m course_lib.grading", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="course root (holds nbgrader_config.py)")
    ap.add_argument("--assignment", action="append", help="only these assignments (repeatable)")
    ap.add_argument("--skip-release", action="store_true", help="do not regenerate notebooks/")
    ap.add_argument("--no-feedback", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per submission")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    aids = args.assignment or assignments(root)
    if not args.skip_release:
        release(root, aids)
    results = []
    for student, aid in submissions(root, aids):
        result = grade_one(root, student, aid, timeout=args.timeout)
        if result.ok and not args.no_feedback:
            feedback(root, result)
        results.append(result)
        print(f"{student}/{aid}: " + (f"{result.score:g}/{result.max_score:g}" if result.ok else result.error),
              flush=True)
    write_csv(root / "grades.csv", results)
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
