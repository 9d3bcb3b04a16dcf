# The two commands: `make demo` and `make test`. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test coverage lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/ct-actors demo

lint: install
	$(BIN)/ruff check ct_actors tests
	$(BIN)/mypy

# Two pytest-xdist workers (the suite is mostly real-time tests waiting on subprocesses; each
# worker has its own embedded PostgreSQL, every test its own database and random ports);
# TEST_WORKERS=0 runs it in one process. `make coverage`: the same under coverage.py, with the
# daemons and simulators the e2e tests start (python -m subprocesses) measured too.
TEST_WORKERS ?= 2
PYTEST_ARGS := -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal
# Bytecode caches (__pycache__, ignored by git) are written whatever PYTHONDONTWRITEBYTECODE says
# in the calling environment: without them every worker compiles the package and pytest rewrites
# the asserts of every test module again (collection: 7.7 s of CPU instead of 2.0 s), and every
# daemon and simulator the tests start compiles the package.
PYCACHE := PYTHONDONTWRITEBYTECODE=

test: lint
	$(PYCACHE) $(BIN)/python -m pytest $(PYTEST_ARGS)

coverage: install
	rm -f .coverage .coverage.*
	$(PYCACHE) $(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --format=total

bench: install
	$(BIN)/ct-actors bench
