# `make test` sets up everything it needs (a virtualenv with the pinned requirements) and runs the tests.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.requirements-installed

.PHONY: test docs clean

test: $(STAMP)
	$(VENV)/bin/python -m pytest

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The settings table in README.md and the config block of Pulumi.yaml come from the settings model.
docs: $(STAMP)
	$(VENV)/bin/python scripts/generate_docs.py

clean:
	rm -rf $(VENV) .pytest_cache
