# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make run   - venv (runtime dependencies only), a local redis-server under .run/, the broker and
#                sidecar with a demo user; `source .run/env` points the mqtt-guard CLI at them
#   make test  - venv with the test extras, then the whole test suite (real redis-server, real sockets)
#   make lint  - ruff check, ruff format --check and mypy (strict), as CI runs them before the tests
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip

.PHONY: venv venv-test run test lint bench clean

# Two stamps in one venv: .installed = the package and its runtime dependencies (what `make run` needs),
# .installed-test = the test and lint extras on top (what `make test`, `lint` and `bench` need).
$(VENV)/.installed: pyproject.toml
	bash deploy/ensure-deps.sh --venv $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

venv-test: $(VENV)/.installed-test

run: venv
	bash deploy/run-local.sh

test: venv-test
	bash deploy/ensure-deps.sh --check
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv-test
	$(PY) tests/bench/run.py $(BENCH_ARGS)
	$(PY) tests/bench/bench_storm.py $(STORM_ARGS)
	$(PY) tests/bench/bench_codec.py --json tests/bench/results/codec.json
	$(PY) tests/bench/bench_persistent.py $(PERSISTENT_ARGS)

clean:
	rm -rf .run .pytest_cache .hypothesis build *.egg-info

# The sidecar case (issue 23; tests/bench/README.md): part of `make bench`, or alone.
.PHONY: bench-sidecar
bench: bench-sidecar
bench-sidecar: venv-test
	$(PY) -m tests.bench.bench_sidecar $(BENCH_SIDECAR_ARGS)

# The dashboard's pictures in docs/ (docs/dashboard.md): the browser test under a longer load (issue 20).
.PHONY: dashboard-screenshot
dashboard-screenshot: venv-test
	DASHBOARD_SCREENSHOT=docs/dashboard.png DASHBOARD_LOAD_SECONDS=$${DASHBOARD_LOAD_SECONDS:-150} \
	  $(PY) -m pytest -q -p no:cacheprovider tests/admin/test_dashboard.py -k screenshot
