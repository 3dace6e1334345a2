# One-command entry points. `make test` works on a fresh machine: it creates .venv, installs, lints and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint tiny browser quickstart evaluate clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-reference.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-reference.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

test: lint browser
	$(BIN)/python -m pytest -q

# Debian's chromium for the demo's browser test (tests/serving/test_browser.py); installs only when missing (as root).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

tiny: install
	$(BIN)/python -m nextgpt.cli.build_tiny --out checkpoints/tiny

# Fresh machine -> tiny checkpoints + data -> stages 1, 2, 3 (DeepSpeed) -> merge -> predict; prints the outputs.
quickstart: install
	PYTHON=$(BIN)/python bash scripts/quickstart.sh

# Held-out metrics of the quickstart's three stages (and the untrained models) -> runs/tiny/eval.json.
evaluate: install
	$(BIN)/python -m nextgpt.cli.evaluate --checkpoint-dir runs/tiny/stage_1/final runs/tiny/stage_2/final \
		runs/tiny/stage_3/final --baseline --output runs/tiny/eval.json

clean-venv:
	rm -rf $(VENV)
