# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install the pinned dependencies (CPU build of torch) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench-quality bench-peer clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# CLOT on the bundled scikit-learn digits; prints the ACC/NMI/ARI table.
demo: $(STAMP)
	$(BIN)/otclust fit --config configs/clot-digits.yaml --out runs/demo --overwrite --no-progress

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py --data digits --seeds 0,1,2

# Side by side with the peer library lightly (benchmarks/peer_lightly.py). lightly and its
# dependencies go into a venv of their own, .venv-bench (requirements-bench.txt), never into .venv
# or CI. torch is pinned first so that pip keeps the CPU build. BENCH_PEER_ARGS passes options,
# e.g. make bench-peer BENCH_PEER_ARGS=--quick (or --check).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEER_ARGS ?=

$(BENCH_STAMP): requirements.txt requirements-bench.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install --quiet -r requirements-bench.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(BENCH_STAMP)

bench-peer: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/peer_lightly.py $(BENCH_PEER_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs
