"""Students per hour of `python -m course_lib.grading` at 1 and 2 jobs, on the fixture assignment.

    python scripts/grading_speed.py [--students 20] [--jobs 1 2]

Builds a throwaway course from tests/fixtures/grading with N submissions (solution, blank and
partial in turn), grades it once per --jobs value (fresh gradebook each time, feedback included),
and prints wall time and students/hour, with how busy the CPUs were just before each run
(course_lib.timing.cpu_busy_fraction): other work on the machine slows both runs.
"""

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_lib import grading  # noqa: E402
from course_lib.timing import cpu_busy_fraction  # noqa: E402

AID = "00_fixture"


def build(base: Path, n: int) -> Path:
    root = base / "course"
    shutil.copytree(ROOT / "tests" / "fixtures" / "grading" / "solutions", root / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    grading.release(root, [AID])
    release = nbformat.read(root / "notebooks" / AID / f"{AID}.ipynb", as_version=4)
    sol = nbformat.read(root / "solutions" / AID / f"{AID}.ipynb", as_version=4)
    partial = copy.deepcopy(release)
    for a, b in zip(partial.cells, sol.cells):
        if a.metadata.get("nbgrader", {}).get("grade_id") == "fx-n-removed":
            a.source = b.source
    kinds = [sol, release, partial]
    for i in range(n):
        folder = root / "submitted" / f"s{i:03d}" / AID
        folder.mkdir(parents=True)
        nbformat.write(kinds[i % 3], folder / f"{AID}.ipynb")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=20)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if args.students < 1 or any(j < 1 for j in args.jobs):
        ap.error("--students and --jobs must be >= 1")
    out = []
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            root = build(Path(tmp), args.students)
            busy = cpu_busy_fraction(1.0)
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "course_lib.grading", "--root", str(root), "--skip-release",
                                   "--jobs", str(jobs)], capture_output=True, text=True)
            wall = time.monotonic() - t0
            rows = (root / "grades.csv").read_text().splitlines()[1:]
            ok = sum(r.endswith(",ok") for r in rows)
            out.append({"jobs": jobs, "students": args.students, "graded_ok": ok, "wall_s": round(wall, 1),
                        "students_per_hour": round(args.students / wall * 3600),
                        "cpu_busy_before": None if busy is None else round(busy, 2), "exit": proc.returncode})
            print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    main()
