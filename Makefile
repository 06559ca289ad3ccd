# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install the pinned dependencies (CPU build of torch) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench-quality clean

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

clean:
	rm -rf $(VENV) runs
