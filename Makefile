# Two commands for a fresh clone:
#   make lab    -- create .venv if missing, install, start JupyterLab on notebooks/
#   make test   -- create .venv if missing, install, run unit tests + nbval over solutions/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build that lies on the course machines' disk. On a GPU machine, install a CUDA build of
# torch into .venv first (see README); it is kept, because torch is only installed when missing.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.course-installed
PORT ?= 8888
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: install lab test unit notebooks release grade

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(LAB_ARGS)

# The whole suite: unit tests, then every solution notebook under nbval.
test: install
	$(BIN)/python -m pytest tests solutions --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

notebooks: install
	$(BIN)/python -m pytest solutions --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg $(PYTEST_ARGS)

# Instructors: regenerate the student notebooks in notebooks/ from solutions/.
release: install
	for aid in $$(ls solutions); do [ -f solutions/$$aid/$$aid.ipynb ] && $(BIN)/nbgrader generate_assignment $$aid --force --no-db || exit 1; done

# Instructors: release, autograde everything in submitted/, feedback, grades.csv, summary.
grade: install
	$(BIN)/python -m course_lib.grading
