# One-command entry points. `make test` works on a fresh machine: it creates .venv, installs, lints and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-numerics test-multiprocess test-slow lint tiny browser java quickstart evaluate clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-reference.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-reference.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

# The suite in TEST_WORKERS processes (pytest-xdist; a test file stays in one process, so its module fixtures are built
# once), one CPU thread each: tiny models keep a thread busy with Python more than with arithmetic. On 2 cores, with
# the tiny tree already built: 235 s this way, about 300 s in one process of two threads, 1,122 s with two processes
# of two threads each (four threads on two cores). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: lint browser java
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The tests whose outcome depends on floating-point paths (learning and equivalence tests, marker `numerics`), once
# with PyTorch's CPU kernels forced to the baseline instruction set and once to AVX2 (unset, a machine uses its best:
# AVX-512 on many), so a tolerance or learning rate that only holds on one machine fails here first. -m replaces
# addopts' -m, hence the explicit exclusions: slow tests stay out, except the held-out learning tests (marker
# `learning`), which `make test` leaves to `make test-slow` for their minutes of training. The two runs go side by side,
# one CPU thread each (tiny models keep a thread busy with Python more than with arithmetic: one thread costs a run
# about 8% against two), and each prints its log when it ends. Each compiles into a fresh TorchInductor cache: the
# shared one (/tmp/torchinductor_$USER) hands kernels generated for one instruction set to a run under another, which
# then fails to compile them ("at::vec has not been declared").
NUMERICS_MARK := numerics and not gpu and not multiprocess and (learning or not slow)
NUMERICS_CAPS := default avx2
test-numerics: install browser
	@logs=$$(mktemp -d); pids=""; \
	for cap in $(NUMERICS_CAPS); do \
		( cache=$$(mktemp -d); \
		  ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$$cache \
		    $(BIN)/python -m pytest -q -p no:cacheprovider -m "$(NUMERICS_MARK)" > $$logs/$$cap.log 2>&1; \
		  status=$$?; rm -rf $$cache; exit $$status ) & pids="$$pids $$!"; \
	done; \
	failed=0; set -- $$pids; \
	for cap in $(NUMERICS_CAPS); do \
		wait $$1 || failed=1; shift; \
		echo "== ATEN_CPU_CAPABILITY=$$cap"; cat $$logs/$$cap.log; \
	done; \
	rm -rf $$logs; exit $$failed

# Data-parallel parity: tiny runs on 2 CPU processes (torch.distributed.run, gloo) against one process with the same
# global batch, under ZeRO-0, -2 and -3 (tests/training/test_step_loss.py). Several minutes on 2 cores.
test-multiprocess: install
	$(BIN)/python -m pytest -q -m multiprocess

# Long single-process runs (marker `slow`): the tiny full fine-tune under ZeRO-2 and ZeRO-3
# (tests/training/test_full_finetune.py), the batched decoder's step compiled on the CPU, the evaluation suite on the
# tiny world, and others marked so.
test-slow: install java
	$(BIN)/python -m pytest -q -m slow

# Debian's chromium for the demo's browser test (tests/serving/test_browser.py); installs only when missing (as root).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# A Java runtime for pycocoevalcap's PTB tokenizer and METEOR (evaluate.py's caption tasks); installs only when missing.
java:
	@command -v java >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless)

tiny: install
	$(BIN)/python -m nextgpt.cli.build_tiny --out checkpoints/tiny

# Fresh machine -> tiny checkpoints + data -> stages 1, 2, 3 (DeepSpeed) -> merge -> predict; prints the outputs.
quickstart: install
	PYTHON=$(BIN)/python bash scripts/quickstart.sh

# Held-out metrics of the quickstart's three stages (and the untrained models) -> runs/tiny/eval.json, then every
# benchmark task under the tiny world's protocols (configs/eval/tiny) on stage 3 -> runs/tiny/eval/eval_card.{json,md}.
# The benchmark files and tiny metric models are added first to a world or checkpoint tree built before they existed.
evaluate: install java
	@test -f data/tiny/benchmarks/image.json || $(BIN)/python -m nextgpt.cli.make_tiny_world --out data/tiny --benchmarks-only
	@test -f checkpoints/tiny/metrics/cnn14.pth || $(BIN)/python -m nextgpt.cli.build_tiny --out checkpoints/tiny --metric-models-only
	$(BIN)/python -m nextgpt.cli.evaluate --checkpoint-dir runs/tiny/stage_1/final runs/tiny/stage_2/final \
		runs/tiny/stage_3/final --baseline --output runs/tiny/eval.json
	$(BIN)/python -m nextgpt.cli.evaluate --tasks all --protocol-dir configs/eval/tiny \
		--checkpoint-dir runs/tiny/stage_3/final --output-dir runs/tiny/eval

clean-venv:
	rm -rf $(VENV)
