# Two entry points: `make demo` and `make test`. Both create .venv and install subtomo into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build for development and CI; see README for a CUDA install.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/subtomo demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) demo_out .pytest_cache
