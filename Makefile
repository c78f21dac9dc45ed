# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make run   - venv, a local redis-server under .run/, the broker (and sidecar) with a demo user
#   make test  - venv with test extras, then the whole test suite (real redis-server, real sockets)
#   make lint  - ruff check, ruff format --check and mypy (strict), as CI runs them before the tests
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip

.PHONY: venv run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	bash deploy/run-local.sh

test: venv
	bash deploy/ensure-deps.sh --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv
	$(PY) tests/bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .run .pytest_cache .hypothesis build *.egg-info
