# Two commands set everything up on a fresh Debian machine: `make demo` and `make test`.
# Each installs what it needs (virtualenv, Python packages, Mosquitto) and is safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_ARGS ?=

.PHONY: demo test lint bench proto mosquitto servers postgres chromium dashboards clean

$(STAMP): pyproject.toml requirements.lock
	@# Debian's python3 needs python3-venv for this; install it when the first try fails
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

mosquitto:
	@if ! command -v mosquitto >/dev/null || ! command -v mosquitto_passwd >/dev/null \
	    || ! command -v mosquitto_sub >/dev/null; then \
	  echo "installing Mosquitto from Debian"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; \
	fi

# The historian's tests write to Debian's VictoriaMetrics (InfluxDB v2 write API) and ask Debian's
# InfluxDB 1.6 (InfluxQL); the tests start their own on free ports, so the packages' services stay off.
servers:
	@if ! command -v victoria-metrics >/dev/null || ! command -v influxd >/dev/null; then \
	  echo "installing VictoriaMetrics and InfluxDB 1.6 from Debian"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq victoria-metrics influxdb; \
	fi

# The record store's tests run on SQLite and on a real PostgreSQL: Debian's, started when it is not
# running. The tests make a database of their own on UNS_TEST_POSTGRES (a role that may create
# databases) and drop it at the end.
UNS_TEST_POSTGRES ?= postgresql://postgres@127.0.0.1:5432/postgres
export UNS_TEST_POSTGRES
postgres: $(STAMP)
	@if ! command -v pg_ctlcluster >/dev/null; then \
	  echo "installing PostgreSQL from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; \
	fi
	@for c in $$(ls /etc/postgresql 2>/dev/null); do \
	  pg_lsclusters -h | grep -q "^$$c .* online" || $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$c main start; \
	done
	@$(PY) -c "import psycopg, os; psycopg.connect(os.environ['UNS_TEST_POSTGRES'], connect_timeout=10).close()" \
	  || { echo "make test: cannot log in to PostgreSQL at $(UNS_TEST_POSTGRES): set UNS_TEST_POSTGRES to a" \
	    "role that may create databases (README, Tests)"; exit 1; }

# The floor view's and the review's pages are tested in Debian's Chromium, driven by playwright
# (which is told where it is: it downloads no browser of its own).
chromium:
	@if ! command -v chromium >/dev/null; then \
	  echo "installing Chromium from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; \
	fi

GRAFANA_NODE := grafana/node_modules/.package-lock.json
# TypeScript and @grafana/schema, to check the dashboards against Grafana's own types (tests/test_grafana.py)
$(GRAFANA_NODE): grafana/package.json grafana/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	npm ci --prefix grafana --no-audit --no-fund
	touch $@

# Regenerate grafana/dashboards/*.json from grafana/generate.py (the files are committed).
dashboards: $(STAMP)
	$(PY) -m grafana.generate

demo: $(STAMP) mosquitto
	$(VENV)/bin/uns demo --speed 30 $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) mosquitto servers postgres chromium $(GRAFANA_NODE) lint
	$(PY) -m pytest -q -n 3

bench: $(STAMP) mosquitto servers postgres
	$(PY) -m bench

# Regenerate the Sparkplug payload module from our own schema (uns/sparkplug/sparkplug_b.proto).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iuns/sparkplug --python_out=uns/sparkplug --pyi_out=uns/sparkplug \
	    uns/sparkplug/sparkplug_b.proto

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache grafana/node_modules
