# One-command entry points. `make test` works on a fresh machine: it creates .venv, installs, lints and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint tiny clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-reference.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-reference.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

tiny: install
	$(BIN)/python scripts/build_tiny_checkpoints.py --out checkpoints/tiny

clean-venv:
	rm -rf $(VENV)
