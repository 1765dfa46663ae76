# The two commands of the README: `make run` (the main job: an offline `flwr run .`
# simulation) and `make test` (set up, lint and run every test, the lowest-versions run
# included). Both create .venv with the exact dev versions of constraints.txt.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
MIN := .venv-min

.PHONY: run test test-min bench

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[app,dev]"
	touch $@

# ARGS go to `flwr run`, e.g. ARGS="--run-config \"rule='krum' attack='sign-flip'\""
run: $(BIN)/.installed
	$(BIN)/python scripts/run_simulation.py $(ARGS)

test: $(BIN)/.installed test-min
	$(BIN)/ruff check .
	$(BIN)/vermin --target=3.10- --violations --no-tips flwr_flag
	$(BIN)/python -m pytest

# The library's tests (no app extras) on the lowest flwr and numpy pyproject.toml
# declares (constraints-min.txt), in a second venv.
$(MIN)/bin/.installed: pyproject.toml constraints-min.txt
	$(PYTHON) -m venv $(MIN)
	$(MIN)/bin/pip install --quiet --upgrade pip
	$(MIN)/bin/pip install --quiet -c constraints-min.txt -e . "pytest>=8" "hypothesis>=6"
	touch $@

test-min: $(MIN)/bin/.installed
	$(MIN)/bin/python -m pytest --library-only -p no:cacheprovider

$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e ".[app,dev,bench]"
	$(BIN)/pip install --quiet --no-deps "byzfl==0.0.11"
	touch $@

bench: $(BIN)/.bench
	$(BIN)/python -m benchmarks.aggregation_speed
