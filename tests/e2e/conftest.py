"""The end-to-end tier's shared fixtures: Airflow's executable, the `prod` stack's published credentials, and the
real servers they open (a module that starts a platform of its own overrides `platform`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from components import workloads as w
from components.workloads import ASYNC_CONNECTION_KEY, METADATA_CONNECTION_SECRET
from mock_engine import run_program
from support.published import PASSWORD_SEED, URL_RESERVED, published
from support.rendering import secret_files
from support.servers import start_pgbouncer, start_postgres, start_redis, unavailable_reason


@pytest.fixture(scope="module")
def airflow_bin() -> Path:
    location = os.environ.get("AIRFLOW_BIN")
    if not location or not Path(location).exists():
        pytest.fail("AIRFLOW_BIN must name the airflow executable of the e2e virtualenv (make e2e sets it)")
    return Path(location)


@pytest.fixture(scope="module")
def platform():
    run = run_program("prod", password_characters=URL_RESERVED, password_seed=PASSWORD_SEED)
    values = published(run)
    secrets = {s.values["metadata"]["name"]: s.values["stringData"] for s in run.of_type("kubernetes:core/v1:Secret")}
    values["fernet_key"] = secrets[w.FERNET_KEY_SECRET]["fernet-key"]
    values["jwt_secret"] = secrets[w.JWT_SECRET]["jwt-secret"]
    values["async_metadata_url"] = secrets[METADATA_CONNECTION_SECRET][ASYNC_CONNECTION_KEY]
    chart_values = run.one("kubernetes:helm.sh/v3:Release", "airflow-airflow").values["values"]
    values["async_connect_args"] = chart_values["config"]["database"]["sql_alchemy_connect_args_async"]
    values["airflow_local_settings"] = chart_values["airflowLocalSettings"]
    # The credentials as the chart hands them to Airflow: `<option>_CMD` = `cat <file>`, each file an item of
    # the projected Secret volume every Airflow component mounts (the scheduler's, here).
    files = {path: secrets[name][key] for path, (name, key) in secret_files(
        {"volumes": chart_values["scheduler"]["extraVolumes"]},
        {"volumeMounts": chart_values["scheduler"]["extraVolumeMounts"]}, present=set(secrets)).items()}
    commands = {e["name"].removesuffix("_CMD"): e["value"].split() for e in chart_values["env"]
                if e["name"].endswith("_CMD")}
    assert commands and all(command[0] == "cat" for command in commands.values())
    values["credentials"] = {option: files[command[1]] for option, command in commands.items()}
    return values


@pytest.fixture(scope="module")
def servers(platform):
    reason = unavailable_reason()
    if reason:
        pytest.fail(reason)
    workdir = Path(tempfile.mkdtemp(prefix="airflow-platform-e2e-"))
    workdir.chmod(0o755)
    started = []
    try:
        postgres = start_postgres(workdir / "postgres")
        started.append(postgres)
        postgres.superuser_sql(f'CREATE ROLE "{platform["postgres_user"]}" LOGIN PASSWORD %s', platform["postgres_password"])
        postgres.superuser_sql(f'CREATE DATABASE "airflow" OWNER "{platform["postgres_user"]}"')
        pgbouncer = start_pgbouncer(workdir / "pgbouncer", postgres, platform["postgres_user"],
                                    platform["postgres_password"], "airflow", platform["pooler"])
        started.append(pgbouncer)
        # A second PgBouncer whose clients share two server connections, as under load.
        shared = start_pgbouncer(workdir / "pgbouncer-shared", postgres, platform["postgres_user"],
                                 platform["postgres_password"], "airflow", platform["pooler"], server_connections=2)
        started.append(shared)
        # The same, but not tracking prepared statements: the Pooler with max_prepared_statements 0.
        untracked = start_pgbouncer(workdir / "pgbouncer-untracked", postgres, platform["postgres_user"],
                                    platform["postgres_password"], "airflow", {**platform["pooler"], "parameters": {
                                        **platform["pooler"]["parameters"], "max_prepared_statements": "0"}},
                                    server_connections=2)
        started.append(untracked)
        # One server connection for every client: a statement prepared once is found again by the next client.
        single = start_pgbouncer(workdir / "pgbouncer-single", postgres, platform["postgres_user"],
                                 platform["postgres_password"], "airflow", platform["pooler"], server_connections=1)
        started.append(single)
        redis = start_redis(workdir / "redis", platform["redis_password"])
        started.append(redis)
        yield {"postgres": postgres.port, "pgbouncer_shared": shared.port, "pgbouncer": pgbouncer.port, "redis": redis.port,
               "pgbouncer_untracked": untracked.port, "pgbouncer_single": single.port,
               "home": workdir / "airflow-home"}
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
