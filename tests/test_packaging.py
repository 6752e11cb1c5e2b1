"""Packaging: environment.yml and pyproject.toml list the same dependencies."""

import re
import tomllib
from pathlib import Path

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
    """The recipe lines of the Makefile's `test` target, with its `NAME := value` variables expanded."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) :?= ?(.*)$", makefile, re.M))
    variables["BIN"] = ".venv/bin"
    recipe = re.search(r"^test: install\n((?:\t.+\n)+)", makefile, re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        for _ in range(5):  # nested variables
            line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), ""), line)
        commands.append(" ".join(line.split()))
    return commands


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
