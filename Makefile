# Two commands on a fresh machine: `make demo` and `make test`. Each (re)creates .venv and installs
# the project with its test extras first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: install demo demo-upgrade test test-deploy ui ui-upgrade clean browser

$(STAMP): pyproject.toml setup.py qaic_assets/cpu_compiler/_bins.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m qaic_assets.demo

# An SDK upgrade told end to end on the stand-in SDK (qaic_assets/standin_sdk), in artifacts/demo-upgrade
# with its own DAGSTER_HOME: make demo's instance is untouched. `make ui-upgrade` shows it in the UI.
UPGRADE_DIR := $(CURDIR)/artifacts/demo-upgrade

demo-upgrade: install
	$(PY) -m qaic_assets.demo_upgrade --dir $(UPGRADE_DIR)

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

# Dagster's own dev command (the webserver, the daemon and the code location of pyproject's [tool.dg]);
# warnings and errors only: no log line per sensor tick that requests nothing.
ui: install
	@echo "Dagster UI on http://127.0.0.1:3000 (DAGSTER_HOME=$(DAGSTER_HOME)); Ctrl-C stops it"
	$(VENV)/bin/dg dev -h 127.0.0.1 -p 3000 --log-level warning --code-server-log-level warning

# The UI on make demo-upgrade's instance, without the daemon: it shows what the demo recorded (the demo
# did the daemon's ticks itself; a daemon would start them over from its own cursors).
ui-upgrade: install
	DAGSTER_HOME=$(UPGRADE_DIR)/dagster_home QAIC_ASSETS_CONFIG=$(UPGRADE_DIR)/qaic.yaml \
	  $(VENV)/bin/dagster-webserver -h 127.0.0.1 -p 3000 -m qaic_assets.definitions

clean:
	rm -rf artifacts dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
