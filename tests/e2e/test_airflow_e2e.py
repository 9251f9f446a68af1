"""End-to-end tier (`make e2e`): Airflow itself (the version of requirements/e2e.in, the platform's default), from PyPI, against the real servers.

`airflow db migrate` runs through PgBouncer in transaction mode with the metadata URL the program
published (the same path the chart's migration Job takes), then Airflow stores a connection encrypted
with the program's Fernet key and reads it back, and the Celery app Airflow builds from the published
broker URL and Fernet-keyed config sends a task message through Redis.

Airflow runs in its own virtualenv (AIRFLOW_BIN), because its dependencies and Pulumi's do not share one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg2
import pytest
from cryptography.fernet import Fernet

from support.airflow_cli import airflow, airflow_env, async_env
from support.servers import with_host_and_port

pytestmark = pytest.mark.e2e


def test_airflow_migrates_the_metadata_database_through_pgbouncer(airflow_bin, platform, servers):
    env = airflow_env(platform, servers)
    migrated = airflow(airflow_bin, env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    checked = airflow(airflow_bin, env, "db", "check")
    assert checked.returncode == 0, checked.stderr[-2000:]
    # A second migration (every `pulumi up` of the release runs one) takes the advisory lock again.
    assert airflow(airflow_bin, env, "db", "migrate").returncode == 0
    # Through the file, not a default: the schema is in PostgreSQL (a missed `_CMD` would mean SQLite).
    import psycopg2
    metadata = with_host_and_port(platform["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    with psycopg2.connect(metadata) as connection, connection.cursor() as cursor:
        cursor.execute("select version_num from alembic_version")
        assert cursor.fetchone()


def test_airflow_encrypts_connections_with_the_generated_fernet_key(airflow_bin, platform, servers):
    env = airflow_env(platform, servers)
    added = airflow(airflow_bin, env, "connections", "add", "warehouse", "--conn-type", "postgres",
                    "--conn-host", "warehouse.internal", "--conn-login", "etl", "--conn-password", "s3cr3t-value")
    assert added.returncode == 0, added.stderr[-2000:]
    exported = airflow(airflow_bin, env, "connections", "get", "warehouse", "--output", "json")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads(exported.stdout)[0]["password"] == "s3cr3t-value"

    import psycopg2  # the stored value is Fernet ciphertext under the program's key
    metadata = with_host_and_port(platform["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    with psycopg2.connect(metadata) as connection, connection.cursor() as cursor:
        cursor.execute("select password from connection where conn_id = 'warehouse'")
        (stored,) = cursor.fetchone()
    assert stored != "s3cr3t-value"
    assert Fernet(platform["fernet_key"].encode()).decrypt(stored.encode()) == b"s3cr3t-value"


def test_airflows_celery_app_sends_a_task_through_the_broker(airflow_bin, platform, servers):
    env = airflow_env(platform, servers)
    python = airflow_bin.parent / "python"
    script = (
        "from airflow.providers.celery.executors.celery_executor_utils import app\n"
        "with app.connection_for_write() as connection:\n"
        "    connection.ensure_connection(max_retries=1)\n"
        "    producer = app.amqp.Producer(connection)\n"
        "    producer.publish({'probe': 1}, routing_key='platform-e2e', declare=[])\n"
        "    queue = connection.SimpleQueue('platform-e2e')\n"
        "    message = queue.get(timeout=5)\n"
        "    message.ack()\n"
        "    print(message.payload)\n"
    )
    result = subprocess.run([str(python), "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'probe': 1" in result.stdout


ASYNC_PROBE = """
import asyncio, json, sys
from sqlalchemy import text
from airflow import settings
settings.configure_orm()
clients, queries = int(sys.argv[1]), int(sys.argv[2])
# A parameterised query (asyncpg prepares it) whose result is :n + 1, by default of no table.
statement = sys.argv[3] if len(sys.argv) > 3 else "select current_user, cast(:n as int) + 1"
users, errors = set(), []

async def client(number):
    for query in range(queries):
        try:
            async with settings.AsyncSession() as session:
                result = await session.execute(text(statement), {"n": query})
                user, value = result.one()
                assert value == query + 1
                users.add(user)
        except Exception as error:  # counted, not raised: the test reads how many failed and why
            errors.append(f"{type(error).__name__}: {str(error)[:160]}")

async def main():
    await asyncio.gather(*(client(number) for number in range(clients)))

asyncio.run(main())
print(json.dumps({"url": settings.SQL_ALCHEMY_CONN_ASYNC.split("@")[-1], "users": sorted(users),
                  "errors": errors}))
"""


def run_async_probe(airflow_bin: Path, env: dict[str, str], clients: int, queries: int, processes: int = 1,
                    statement: str | None = None) -> list:
    probes = [subprocess.Popen([str(airflow_bin.parent / "python"), "-c", ASYNC_PROBE, str(clients), str(queries),
                                *([statement] if statement else [])],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(processes)]
    results = []
    for probe in probes:
        stdout, stderr = probe.communicate(timeout=300)
        assert probe.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("through", ["postgres", "pgbouncer"])
def test_airflows_async_engine_connects_with_the_published_async_url(airflow_bin, platform, servers, through):
    """Airflow's own AsyncSession (the API server's async routes use it), configured as the chart configures
    the pods: the published async-connection over TLS, directly and through PgBouncer."""
    [result] = run_async_probe(airflow_bin, async_env(platform, servers, servers[through]), clients=1, queries=5)
    assert result["errors"] == []
    assert result["users"] == [platform["postgres_user"]]
    assert result["url"].endswith("/airflow?ssl=require&prepared_statement_cache_size=0")


def test_the_async_engine_survives_transaction_pooling_under_concurrency(airflow_bin, platform, servers):
    """Many clients sharing two server connections of PgBouncer in transaction mode: with the release's connect
    args (unnamed statements) every query succeeds, through the Pooler's PgBouncer and through one that does not
    track prepared statements (the Pooler's max_prepared_statements at 0); without them asyncpg names its
    statements, which then land on server connections that do not have them unless PgBouncer tracks them."""
    for port in (servers["pgbouncer_shared"], servers["pgbouncer_untracked"]):
        results = run_async_probe(airflow_bin, async_env(platform, servers, port), clients=4, queries=40, processes=3)
        assert [error for result in results for error in result["errors"]] == []
    named = run_async_probe(airflow_bin, async_env(platform, servers, servers["pgbouncer_shared"],
                                                   with_connect_args=False), clients=4, queries=40, processes=3)
    assert [error for result in named for error in result["errors"]] == []
    control = run_async_probe(airflow_bin, async_env(platform, servers, servers["pgbouncer_untracked"],
                                                     with_connect_args=False), clients=4, queries=40, processes=3)
    failed = [error for result in control for error in result["errors"]]
    assert failed and all("prepared statement" in e or "bind message" in e or "buffer" in e or "protocol" in e.lower()
                          for e in failed[:20]), failed[:5]


def test_a_migration_that_changes_a_column_type_does_not_break_the_async_engine(airflow_bin, platform, servers):
    """Why asyncpg's statement cache stays off. PgBouncer prepares each named statement's text once per server
    connection and keeps it; after a column's type changes (as a migration may), running it again fails with
    "cached plan must not change result type" (PostgreSQL) on every run, asyncpg's fresh prepare included, until
    PgBouncer reconnects. With the release's connect args the statements are unnamed, planned afresh each time.
    One server connection, so every client meets what the previous one prepared."""
    owner = psycopg2.connect(with_host_and_port(platform["metadata_url"], "127.0.0.1", servers["postgres"]))
    owner.autocommit = True
    statement = "select current_user, value from platform_migration_probe where id = :n"
    released = async_env(platform, servers, servers["pgbouncer_single"])
    named = async_env(platform, servers, servers["pgbouncer_single"], with_connect_args=False)
    try:
        with owner.cursor() as cursor:
            cursor.execute("create table platform_migration_probe (id int primary key, value int)")
            cursor.execute("insert into platform_migration_probe select n, n + 1 from generate_series(0, 9) as n")
        for env in (released, named):
            [before] = run_async_probe(airflow_bin, env, clients=1, queries=5, statement=statement)
            assert before["errors"] == []
        with owner.cursor() as cursor:  # what a migration might do
            cursor.execute("alter table platform_migration_probe alter column value type bigint")
        [after] = run_async_probe(airflow_bin, released, clients=1, queries=5, statement=statement)
        assert after["errors"] == []
        [stale] = run_async_probe(airflow_bin, named, clients=1, queries=5, statement=statement)
        # asyncpg's InvalidCachedStatementError is PostgreSQL's "cached plan must not change result type".
        assert len(stale["errors"]) == 5
        assert all("InvalidCachedStatementError" in e and "cached statement plan is invalid" in e
                   for e in stale["errors"]), stale["errors"][:2]
    finally:
        with owner.cursor() as cursor:
            cursor.execute("drop table if exists platform_migration_probe")
        owner.close()


def test_the_async_url_airflow_would_derive_from_the_sync_url_fails(airflow_bin, platform, servers):
    """Why the program publishes its own: Airflow's derived URL keeps libpq's `sslmode`, which asyncpg refuses."""
    env = airflow_env(platform, servers, without=("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",))
    [result] = run_async_probe(airflow_bin, env, clients=1, queries=1)
    assert result["errors"] and all("sslmode" in error for error in result["errors"])
