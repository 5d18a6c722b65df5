# The two commands of the README. Each creates the virtual environment it needs on first use:
# torch 2.13.0 first, pinned (where pip is pointed at a CPU wheel, as on our CI machines, it takes that;
# from plain PyPI on Linux it is the CUDA build: see docs/troubleshooting.md), then reverie with its dev
# extra: the `train` extra (everything training needs; the robot's computer takes `robot`) and the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

# The main job on embedded defaults.
demo: $(BIN)/.installed
	$(BIN)/reverie pipeline

# The default test suite (slow tests excluded; run them with `$(BIN)/pytest -m slow`).
test: $(BIN)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs
