# A fresh clone needs only `make demo` and `make test`: each creates or refreshes .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m headstart.cli.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# One torch thread unless the caller says otherwise: the tests train tiny models, which
# gain little from a second thread on idle cores (the suite: 207 s with one, 199 s with
# two, on 2 cores) and lose much when another process holds a core (tests/test_demo.py +
# test_plan.py beside one busy loop: 18.5 s with one thread, 33.4 s with two; the whole
# suite took 18 min instead of 3 beside a helper's test run).
unit: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

test: lint unit

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
