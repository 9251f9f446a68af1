# `make test` sets up everything it needs (a virtualenv with the pinned requirements) and runs the tests.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.requirements-installed
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.requirements-installed

.PHONY: test e2e docs clean

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

# The slower tier: Airflow itself against real PostgreSQL, PgBouncer and Redis (CI runs it too).
e2e: $(STAMP) $(AIRFLOW_STAMP)
	AIRFLOW_BIN=$(CURDIR)/$(AIRFLOW_VENV)/bin/airflow $(VENV)/bin/python -m pytest -m e2e

$(AIRFLOW_STAMP): requirements-e2e.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r requirements-e2e.txt
	touch $(AIRFLOW_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The settings table in README.md and the config block of Pulumi.yaml come from the settings model.
docs: $(STAMP)
	$(VENV)/bin/python scripts/generate_docs.py

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .pytest_cache
