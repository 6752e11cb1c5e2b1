"""Packaging: environment.yml and pyproject.toml list the same dependencies."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    pip = [ln.strip()[2:] for ln in lines[start + 1:] if ln.strip().startswith("- ")]
    assert "-e ." in pip, "environment.yml must install course_lib itself (-e .)"
    listed = {_norm(r) for r in pip if r != "-e ."}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def _make_test_commands() -> list[str]:
    """The two passes of the Makefile's `test` target, with its variables expanded."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) :?= ?(.*)$", makefile, re.M))
    variables["BIN"] = ".venv/bin"
    recipe = re.search(r"^test: install\n((?:\t.+\n)+)", makefile, re.M).group(1)
    commands = []
    # the first pass runs as its two halves (unit tests, then notebooks): both must be in the recipe
    assert "$(FIRST_PASS_TESTS)" in recipe and "$(FIRST_PASS_NOTEBOOKS)" in recipe and "$(OTHER_CPU_PASS)" in recipe
    for name in ("FIRST_PASS", "OTHER_CPU_PASS"):
        line = variables[name]
        for _ in range(5):  # nested variables
            line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), ""), line)
        commands.append(" ".join(line.split()))
    return commands


@pytest.mark.parametrize("first, second", [(0, 0), (1, 0), (0, 1)])
def test_make_test_runs_both_passes_and_fails_when_either_fails(tmp_path, first, second):
    """`make test` with a stand-in python: both passes run (the first as unit tests, then notebooks),
    the second's output is shown, and the exit status is non-zero when either pass fails."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "python"
    script.write_text("#!/bin/sh\n"
                      'if [ "$ATEN_CPU_CAPABILITY" = default ]; then echo "pass two ran: $*"; exit %d; fi\n'
                      'echo "pass one ran: $*"; exit %d\n' % (second, first))
    script.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()
    proc = subprocess.run(["make", "-s", "test", f"BIN={fake}", f"STAMP={stamp}",
                           f"OTHER_CPU_LOG={tmp_path / 'other.log'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "pass one ran: -m pytest tests --nbval" in proc.stdout
    assert "pass one ran: -m pytest solutions --nbval" in proc.stdout
    # the unit tests and the second pass finish before the notebooks start
    assert proc.stdout.index("pass two ran") < proc.stdout.index("pass one ran: -m pytest solutions")
    assert "pass two ran: -m pytest tests/test_cpu_settings.py" in proc.stdout
    assert (proc.returncode == 0) == (first == 0 and second == 0), proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    first, second = _make_test_commands()
    assert ".venv/bin/python -m pytest tests solutions --nbval --nbval-current-env" in first
    assert "pytest tests solutions --nbval --nbval-current-env" in readme
    # the second pass: the notebooks and the measured-fact tests as if on another CPU, also in README
    assert second.startswith("ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1")
    assert "tests/test_course_model.py tests/test_pruning_quality.py solutions --nbval" in second
    flat = " ".join(readme.replace("\\\n", " ").split())
    assert "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 COURSE_TEST_THREADS=1" in flat
    assert "tests/test_cpu_settings.py tests/test_course_model.py tests/test_pruning_quality.py solutions --nbval" in flat


def test_gitignore_keeps_grading_folders_and_venv_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in [".venv/", "submitted/", "autograded/", "feedback/", "gradebook.db", "exchange/"]:
        assert entry in ignored


def test_nbgrader_config_layout():
    text = (ROOT / "nbgrader_config.py").read_text()
    for needle in ['source_directory = "solutions"', 'release_directory = "notebooks"',
                   "add_missing_cells = True", "Execute.timeout", 'kernel_name = "python3"',
                   "IgnorePattern"]:
        assert needle in text
