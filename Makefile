# Two commands on a fresh machine: `make demo` and `make test`. Each (re)creates .venv and installs
# the project with its test extras first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: install demo test test-deploy ui clean browser

$(STAMP): pyproject.toml setup.py qaic_assets/cpu_compiler/_bins.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m qaic_assets.demo

test: install
	$(PY) -m pytest -q -n auto --dist loadfile

# Postgres + Redis + two celery workers (installs the deploy extras and, as root, the servers).
test-deploy: install
	$(PY) -m pip install --quiet -e '.[test,deploy]'
	QAIC_TEST_DEPLOY=1 $(PY) -m pytest -q -m deploy tests/system/test_deploy.py

# The headless browser tests/system/test_ui.py needs (Debian's chromium; as root); else it is skipped.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

ui: install
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

clean:
	rm -rf artifacts dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
