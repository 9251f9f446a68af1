"""The managed backends' connection formats, proven against real servers that behave like RDS and ElastiCache.

A test CA signs a certificate for `localhost`; an unrelated CA plays the wrong one. On loopback:
- PostgreSQL that, like RDS with `rds.force_ssl=1`, accepts password logins over TLS only;
- PgBouncer configured by the program's own `pgbouncer_ini()` (only its host, ports and file paths changed),
  verifying PostgreSQL's certificate and host name (`server_tls_sslmode = verify-full`) against its CA file;
- Redis with TLS only, as ElastiCache with in-transit encryption `required` serves it.

The broker URL carries no CA: ElastiCache's certificates chain to public roots, so clients use their default
trust store. Here the test CA becomes a client's default trust store the way it would in a container: through
`SSL_CERT_FILE` (and an empty `SSL_CERT_DIR`) in the environment of a fresh interpreter, which kombu hands to
redis-py, which builds `ssl.create_default_context()` (OpenSSL's default paths, read from those variables).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote, unquote

import psycopg2
import pytest
import sqlalchemy

from components import workloads as w
from components.airflow.values import AIRFLOW_LOCAL_SETTINGS
from components.broker.elasticache import tls_broker_url
from components.database import managed as rds
from components.database.urls import DATABASE_NAME, managed_metadata_urls, metadata_url, pgbouncer_stats_url
from components.workloads import ASYNC_CONNECTION_KEY
from support.availability import unavailable
from support.servers import (
    CertificateAuthority,
    PostgresServer,
    ProcessServer,
    free_port,
    postgres_bin,
    run_pgbouncer,
    servers_session,
    start_postgres,
    start_redis,
    with_host_and_port,
)

PROJECT = Path(__file__).resolve().parent.parent
URL_RESERVED = "!#%&*()-_=+[]{}<>:?"
# The reserved characters, plus those that a PgBouncer auth file, a redis.conf or a URL's user info
# must escape in their own ways.
PASSWORD = "Managed1" + URL_RESERVED + "@/\"'\\" + secrets.token_hex(4)
KEDA_PASSWORD = "Keda1" + URL_RESERVED + secrets.token_hex(4)
WORKER_PASSWORD = "Worker1" + URL_RESERVED + secrets.token_hex(4)
# Where the program points its URLs in the cloud; the tests rewrite only host and port.
PGBOUNCER_HOST = f"{rds.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local"
ELASTICACHE_HOST = "master.airflow-prod-broker.abcdef.use1.cache.amazonaws.com"


@dataclass
class Managed:
    workdir: Path
    ca: CertificateAuthority
    ca_file: Path
    wrong_ca_file: Path
    postgres: PostgresServer
    pgbouncer: ProcessServer
    redis: ProcessServer


def program_pgbouncer(directory: Path, ca: CertificateAuthority, postgres_port: int, server_ca_file: Path,
                      server_host: str = "localhost") -> tuple[str, int]:
    """The program's pgbouncer.ini and users.txt for a PgBouncer in `directory`, and its port. Changed from
    what the program publishes: the database's host and port, PgBouncer's own address and port, file paths,
    and a log file added."""
    directory.mkdir(parents=True)
    # The three roles, as Database writes users.txt.
    (directory / "users.txt").write_text(rds.pgbouncer_users(w.POSTGRES_USER, PASSWORD)
                                         + rds.pgbouncer_users(w.POSTGRES_KEDA_USER, KEDA_PASSWORD)
                                         + rds.pgbouncer_users(w.POSTGRES_WORKER_USER, WORKER_PASSWORD))
    # PgBouncer's certificate towards Airflow (cert-manager's tls.crt/tls.key in the cluster).
    ca.issue(directory / "tls", "localhost", stem="tls")
    shutil.copyfile(server_ca_file, directory / "root.crt")
    port = free_port()
    ini = rds.pgbouncer_ini(server_host=server_host, server_port=postgres_port, database=DATABASE_NAME,
                            user=w.POSTGRES_USER, pool_size=4, max_client_connections=50, listen_port=port,
                            auth_file=str(directory / "users.txt"), server_ca_file=str(directory / "root.crt"),
                            client_tls_dir=str(directory / "tls"))
    # A pod listens on every interface of its own network namespace; a test machine's are not all loopback.
    assert "\nlisten_addr = *\n" in ini
    ini = ini.replace("\nlisten_addr = *\n", "\nlisten_addr = 127.0.0.1\n") + f"logfile = {directory / 'pgbouncer.log'}\n"
    return ini, port


@pytest.fixture(scope="module")
def managed():
    with servers_session("airflow-platform-managed-") as (workdir, started):
        ca, wrong_ca = CertificateAuthority.create("Test RDS and ElastiCache CA"), CertificateAuthority.create("Unrelated CA")
        ca_file, wrong_ca_file = ca.write(workdir / "ca.pem"), wrong_ca.write(workdir / "wrong-ca.pem")
        postgres = start_postgres(workdir / "rds", certificate=ca.issue(workdir / "rds-tls", "localhost"))
        started.append(postgres)
        postgres.superuser_sql(f'CREATE ROLE "{w.POSTGRES_USER}" LOGIN PASSWORD %s', PASSWORD)
        postgres.superuser_sql(f'CREATE ROLE "{w.POSTGRES_KEDA_USER}" LOGIN PASSWORD %s', KEDA_PASSWORD)
        postgres.superuser_sql(f'CREATE ROLE "{w.POSTGRES_WORKER_USER}" LOGIN PASSWORD %s', WORKER_PASSWORD)
        postgres.superuser_sql(f'CREATE DATABASE "{DATABASE_NAME}" OWNER "{w.POSTGRES_USER}"')
        ini, port = program_pgbouncer(workdir / "pgbouncer", ca, postgres.port, ca_file)
        pgbouncer = run_pgbouncer(workdir / "pgbouncer", ini, port)
        started.append(pgbouncer)
        redis_cert, redis_key = ca.issue(workdir / "elasticache-tls", "localhost")
        redis = start_redis(workdir / "elasticache", PASSWORD, tls=(redis_cert, redis_key, ca_file))
        started.append(redis)
        yield Managed(workdir=workdir, ca=ca, ca_file=ca_file, wrong_ca_file=wrong_ca_file, postgres=postgres,
                      pgbouncer=pgbouncer, redis=redis)


def libpq_query(url: str) -> tuple[str, bool]:
    """(user, whether the PostgreSQL backend that ran the query has a TLS connection), through libpq."""
    connection = psycopg2.connect(url, connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()")
            return cursor.fetchone()
    finally:
        connection.close()


def admin_console(url: str, command: str) -> list[dict]:
    connection = psycopg2.connect(url, connect_timeout=10)
    connection.autocommit = True  # the admin console takes no BEGIN
    try:
        with connection.cursor() as cursor:
            cursor.execute(command)
            columns = [column.name for column in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        connection.close()


def verify_full_url(port: int, root_certificate: Path, host: str = "localhost") -> str:
    return (metadata_url(w.POSTGRES_USER, PASSWORD, host, port, DATABASE_NAME, sslmode="verify-full")
            + f"&sslrootcert={quote(str(root_certificate), safe='')}")


def published_urls(pgbouncer_port: int, ca_file: Path, host: str = "localhost") -> dict[str, str]:
    """The Secret's URLs as the program publishes them with a managed engine, pointed at the local PgBouncer
    (whose certificate names `localhost`) and at the test CA instead of the pods' platform CA file."""
    urls = managed_metadata_urls(PASSWORD, KEDA_PASSWORD, WORKER_PASSWORD, PGBOUNCER_HOST, rds.PGBOUNCER_PORT,
                                 ca_file=str(ca_file))
    return {key: with_host_and_port(url, host, pgbouncer_port) for key, url in urls.items()}


def published_metadata_url(pgbouncer_port: int, ca_file: Path) -> str:
    return published_urls(pgbouncer_port, ca_file)["connection"]


# ---------------------------------------------------------------- PostgreSQL, TLS required (RDS, rds.force_ssl=1)

def test_verify_full_with_the_databases_ca_connects_over_tls(managed):
    assert libpq_query(verify_full_url(managed.postgres.port, managed.ca_file)) == (w.POSTGRES_USER, True)


def test_verify_full_with_a_wrong_ca_is_refused(managed):
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        libpq_query(verify_full_url(managed.postgres.port, managed.wrong_ca_file))


def test_verify_full_checks_the_host_name_too(managed):
    # The certificate names `localhost`; the right CA signed it, but 127.0.0.1 is not its name.
    with pytest.raises(psycopg2.OperationalError, match='does not match host name "127.0.0.1"'):
        libpq_query(verify_full_url(managed.postgres.port, managed.ca_file, host="127.0.0.1"))


def test_the_database_refuses_connections_without_tls(managed):
    url = metadata_url(w.POSTGRES_USER, PASSWORD, "localhost", managed.postgres.port, DATABASE_NAME,
                       sslmode="disable")
    with pytest.raises(psycopg2.OperationalError, match="pg_hba.conf rejects connection .* no encryption"):
        libpq_query(url)


# ---------------------------------------------------------------- Airflow's own role (the bootstrap Job's SQL)

ADMIN_PASSWORD = "Admin1!#%&*()-_=+[]{}<>:?" + secrets.token_hex(4)   # what RDS accepts in a master password


def run_bootstrap(managed, postgres, app_password: str, keda_password: str = KEDA_PASSWORD) -> subprocess.CompletedProcess:
    """psql as the Job runs it: the program's SQL, its libpq service (verify-full against the CA file), the
    passwords' SCRAM verifiers from files. Only the file paths and host/port are the test's."""
    directory = managed.workdir / f"bootstrap-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "app-verifier").write_text(rds.scram_sha256_verifier(app_password, secrets.token_bytes(16)))
    (directory / "keda-verifier").write_text(rds.scram_sha256_verifier(keda_password, secrets.token_bytes(16)))
    (directory / "worker-verifier").write_text(rds.scram_sha256_verifier(WORKER_PASSWORD, secrets.token_bytes(16)))
    (directory / "bootstrap.sql").write_text(rds.bootstrap_sql(str(directory / "app-verifier"),
                                                               str(directory / "keda-verifier"),
                                                               str(directory / "worker-verifier")))
    (directory / "pg_service.conf").write_text(rds.service_file(ADMIN_PASSWORD, "localhost", postgres.port,
                                                                 str(managed.ca_file)))
    command = [str(postgres_bin() / "psql"), "-X", "-d", "service=admin", "-f", str(directory / "bootstrap.sql")]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGSERVICEFILE": str(directory / "pg_service.conf")})


def test_the_bootstrap_gives_airflow_its_own_role_and_the_database_as_rds_would(managed):
    """A fresh server shaped as RDS makes it: a master user that may create roles and databases (RDS's master has
    CREATEROLE and CREATEDB through rds_superuser; PostgreSQL needs the second to hand a database over) but is no
    superuser, owning the database. After the program's SQL, Airflow's role owns the database (and its public schema), with no
    rights beyond; a second run sets a new password and refuses the old one."""
    postgres = start_postgres(managed.workdir / "rds-bootstrap",
                              certificate=managed.ca.issue(managed.workdir / "rds-bootstrap-tls", "localhost"))
    try:
        postgres.superuser_sql(f'CREATE ROLE "{rds.ADMIN_USER}" LOGIN CREATEROLE CREATEDB PASSWORD %s', ADMIN_PASSWORD)
        postgres.superuser_sql(f'CREATE DATABASE "{DATABASE_NAME}" OWNER "{rds.ADMIN_USER}"')
        # Every statement in the server's log (as a failing one would be): what reaches it must hold no password.
        postgres.superuser_sql("ALTER SYSTEM SET log_statement = 'all'")
        postgres.superuser_sql("SELECT pg_reload_conf()")
        first, second = "First1" + URL_RESERVED + secrets.token_hex(4), "Second2" + URL_RESERVED + secrets.token_hex(4)
        for password in (first, second):
            run = run_bootstrap(managed, postgres, password)
            assert run.returncode == 0, run.stderr
            assert password not in run.stdout + run.stderr, "psql must not echo the password"
        # The server saw verifiers only: its log holds neither password, even where it logs statements.
        log = (managed.workdir / "rds-bootstrap" / "postgres.log").read_text()
        assert "PASSWORD 'SCRAM-SHA-256$4096:" in log, "the statements are in the log"
        assert first not in log and second not in log
        url = lambda password: verify_full_url(postgres.port, managed.ca_file).replace(  # noqa: E731
            quote(PASSWORD, safe=""), quote(password, safe=""))
        connection = psycopg2.connect(url(second), connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute("create table airflow_can_create (x int)")
                cursor.execute("select pg_get_userbyid(datdba) from pg_database where datname = current_database()")
                assert cursor.fetchone() == (w.POSTGRES_USER,)
                cursor.execute("select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user")
                assert cursor.fetchone() == (False, False, False)
            connection.commit()
        finally:
            connection.close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(url(first), connect_timeout=10).close()
        # KEDA's role: it logs in with its password, holds no attribute and reads nothing the owner did not grant.
        keda_url = url(KEDA_PASSWORD).replace(f"//{w.POSTGRES_USER}:", f"//{w.POSTGRES_KEDA_USER}:")
        keda = psycopg2.connect(keda_url, connect_timeout=10)
        try:
            with keda.cursor() as cursor:
                cursor.execute("select rolsuper, rolcreaterole, rolcreatedb, rolinherit, rolconnlimit from pg_roles "
                               "where rolname = current_user")
                assert cursor.fetchone() == (False, False, False, False, w.POSTGRES_KEDA_CONNECTION_LIMIT)
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cursor.execute("select * from airflow_can_create")
        finally:
            keda.close()
        # The workers' role, the same way: no attribute, no limit, nothing the owner did not grant.
        worker = psycopg2.connect(url(WORKER_PASSWORD).replace(f"//{w.POSTGRES_USER}:", f"//{w.POSTGRES_WORKER_USER}:"),
                                  connect_timeout=10)
        try:
            with worker.cursor() as cursor:
                cursor.execute("select rolsuper, rolcreaterole, rolcreatedb, rolinherit, rolconnlimit from pg_roles "
                               "where rolname = current_user")
                assert cursor.fetchone() == (False, False, False, False, -1)
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cursor.execute("select * from airflow_can_create")
        finally:
            worker.close()
    finally:
        postgres.stop()


# ---------------------------------------------------------------- PgBouncer as the program configures it

def test_published_metadata_url_runs_a_query_through_pgbouncer_over_tls_on_both_legs(managed):
    url = published_metadata_url(managed.pgbouncer.port, managed.ca_file)
    # In the published URL every reserved character of the password but the unreserved `-` and `_` is
    # percent-encoded, and decoding gives the password back.
    encoded_password = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
    assert not (set(URL_RESERVED) - {"-", "_", "%"}) & set(encoded_password)
    assert unquote(encoded_password) == PASSWORD
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            user, database, server_leg_tls = connection.execute(sqlalchemy.text(
                "select current_user, current_database(), ssl from pg_stat_ssl "
                "where pid = pg_backend_pid()")).one()
            client_leg_tls = connection.connection.dbapi_connection.info.ssl_in_use
    finally:
        engine.dispose()
    # Airflow -> PgBouncer and PgBouncer -> the database are both TLS, both verify-full.
    assert (user, database, client_leg_tls, server_leg_tls) == (w.POSTGRES_USER, DATABASE_NAME, True, True)
    assert "sslmode=verify-full" in url


@pytest.mark.parametrize(("host", "ca", "refusal"), [
    pytest.param("localhost", "wrong", "certificate verify failed", id="a-wrong-ca"),
    pytest.param("127.0.0.1", "right", 'does not match host name "127.0.0.1"', id="another-host-name"),
])
def test_airflow_refuses_a_pgbouncer_it_cannot_verify(managed, host, ca, refusal):
    urls = published_urls(managed.pgbouncer.port, managed.ca_file if ca == "right" else managed.wrong_ca_file, host)
    with pytest.raises(psycopg2.OperationalError, match=refusal):
        libpq_query(urls["connection"])


@pytest.mark.parametrize(("key", "user"), [("kedaConnection", w.POSTGRES_KEDA_USER),
                                           ("cleanupConnection", w.POSTGRES_USER)])
def test_kedas_and_the_cleanups_urls_require_tls_without_a_ca_file(managed, key, user):
    """Through the chart's PgBouncer, as the program configures it (both roles in its users.txt)."""
    url = published_urls(managed.pgbouncer.port, managed.wrong_ca_file, host="127.0.0.1")[key]
    assert "sslrootcert" not in url and "sslmode=require" in url
    assert libpq_query(url) == (user, True)


def test_pgbouncer_requires_tls_from_airflow(managed):
    url = with_host_and_port(metadata_url(w.POSTGRES_USER, PASSWORD, PGBOUNCER_HOST, rds.PGBOUNCER_PORT,
                                          DATABASE_NAME, sslmode="disable"), "127.0.0.1", managed.pgbouncer.port)
    with pytest.raises(psycopg2.OperationalError, match="SSL required"):
        libpq_query(url)


def test_pgbouncer_with_a_wrong_password_is_refused(managed):
    url = published_metadata_url(managed.pgbouncer.port, managed.ca_file).replace(quote(PASSWORD, safe=""),
                                                                 quote(PASSWORD[::-1], safe=""))
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed|SASL"):
        libpq_query(url)


def test_stats_url_reads_pgbouncers_admin_console(managed):
    url = with_host_and_port(pgbouncer_stats_url(PASSWORD), "127.0.0.1", managed.pgbouncer.port)
    pools = {(pool["database"], pool["user"]): pool for pool in admin_console(url, "SHOW POOLS")}
    assert pools[(DATABASE_NAME, w.POSTGRES_USER)]["pool_mode"] == "transaction"


def wait_for_log(log: Path, text: str, client: threading.Thread, outcome: dict, deadline_seconds: float = 30.0) -> str:
    """The log once it holds `text`; fails at once if the client finished first (connected, or refused for
    another reason)."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        if not client.is_alive():
            pytest.fail(f"the client finished before PgBouncer said {text!r}: {outcome}")
        time.sleep(0.05)
    pytest.fail(f"{log} never said {text!r}")


@pytest.mark.parametrize(("server_host", "wrong_ca", "refusal"), [
    pytest.param("localhost", True, "certificate verify failed", id="a-wrong-ca-file"),
    # The right CA signed the database's certificate, but for `localhost`: verify-full checks the name too.
    pytest.param("127.0.0.1", False, "name `127.0.0.1' not present in server certificate", id="another-host-name"),
])
def test_pgbouncer_refuses_a_database_certificate_it_cannot_verify(managed, server_host, wrong_ca, refusal):
    """PgBouncer does not fail the waiting client at once: it retries the server and ends the client's
    login after client_login_timeout (60 s) with `client_login_timeout (server down)`. So the proof is
    PgBouncer's own account: its log, and its pools: no server connection, the client still waiting."""
    directory = managed.workdir / f"pgbouncer-refusing-{server_host}"
    ini, port = program_pgbouncer(directory, managed.ca, managed.postgres.port,
                                  managed.wrong_ca_file if wrong_ca else managed.ca_file, server_host=server_host)
    # A PgBouncer that does not start is a crash (ServerUnavailable), not this rule's verdict.
    bouncer = run_pgbouncer(directory, ini, port)
    outcome: dict = {}

    def client() -> None:
        try:
            outcome["row"] = libpq_query(published_metadata_url(port, managed.ca_file))
        except psycopg2.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        log = wait_for_log(directory / "pgbouncer.log", refusal, thread, outcome)
        stats_url = with_host_and_port(pgbouncer_stats_url(PASSWORD), "127.0.0.1", port)
        pool = next(pool for pool in admin_console(stats_url, "SHOW POOLS") if pool["database"] == DATABASE_NAME)
        servers = sum(pool[column] for column in ("sv_active", "sv_idle", "sv_used", "sv_tested"))
        assert (servers, pool["cl_waiting"], pool["cl_active"]) == (0, 1, 0)
        assert "row" not in outcome
    finally:
        bouncer.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "row" not in outcome and isinstance(outcome["error"], psycopg2.OperationalError)
    assert any("TLS handshake error" in line and refusal in line for line in log.splitlines())
    # With the right CA and the certificate's host name (the module's PgBouncer), no handshake with the database
    # ever failed (clients refusing PgBouncer, in other tests, show as alerts PgBouncer received).
    assert not [line for line in (managed.workdir / "pgbouncer" / "pgbouncer.log").read_text().splitlines()
                if "TLS handshake error" in line and refusal in line]


def python_with_asyncpg() -> Optional[str]:
    """An interpreter with asyncpg and SQLAlchemy's asyncio extension: this one, or the end-to-end tier's
    (`make e2e`: Airflow's own asyncpg and SQLAlchemy)."""
    if all(importlib.util.find_spec(module) for module in ("asyncpg", "greenlet")):
        return sys.executable
    airflow_venv = PROJECT / ".venv-airflow"
    if glob.glob(str(airflow_venv / "lib" / "python*" / "site-packages" / "asyncpg")):
        return str(airflow_venv / "bin" / "python")
    return None


ASYNC_CLIENT = """
import asyncio, json, os
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

async def main():
    settings = {}
    exec(os.environ["LOCAL_SETTINGS"], settings)  # the chart's airflow_local_settings.py, as the program writes it
    engine = create_async_engine(os.environ["METADATA_URL"], connect_args=settings["ASYNC_CONNECT_ARGS"])
    rows = []
    try:
        for _ in range(3):
            async with engine.connect() as connection:
                result = await connection.execute(text(
                    "select current_user, current_database(), ssl from pg_stat_ssl "
                    "where pid = pg_backend_pid() and :one = 1"), {"one": 1})
                rows.append(list(result.one()))
    finally:
        await engine.dispose()
    print(json.dumps(rows))

asyncio.run(main())
"""


def run_async_client(managed, ca_file: Path, host: str, sync_url: Optional[str] = None) -> subprocess.CompletedProcess:
    """Airflow's async engine in a fresh interpreter, with the connect args the chart's airflow_local_settings.py
    gives it. The pods' files are the test's: the CA file, and the sync URL (the published one by default) the
    settings read to decide whether to verify."""
    python = python_with_asyncpg()
    if python is None:
        unavailable("asyncpg is in neither .venv nor .venv-airflow (make e2e builds the latter)")
    urls = published_urls(managed.pgbouncer.port, ca_file, host)
    url_file = managed.workdir / f"sync-url-{secrets.token_hex(4)}"
    url_file.write_text(urls["connection"] if sync_url is None else sync_url)
    pod_url_file = f"{w.SECRETS_DIR}/airflow__database__sql_alchemy_conn"
    assert w.METADATA_CA_FILE in AIRFLOW_LOCAL_SETTINGS and pod_url_file in AIRFLOW_LOCAL_SETTINGS
    local_settings = AIRFLOW_LOCAL_SETTINGS.replace(w.METADATA_CA_FILE, str(ca_file)).replace(pod_url_file,
                                                                                            str(url_file))
    env = {**os.environ, "METADATA_URL": urls[ASYNC_CONNECTION_KEY], "LOCAL_SETTINGS": local_settings}
    return subprocess.run([python, "-c", ASYNC_CLIENT], env=env, capture_output=True, text=True, timeout=120)


def test_async_metadata_url_runs_queries_through_pgbouncer_verifying_it(managed):
    run = run_async_client(managed, managed.ca_file, "localhost")
    assert run.returncode == 0, run.stderr[-3000:]
    # A parameterised statement (asyncpg prepares it) three times; PgBouncer only admits TLS clients.
    assert json.loads(run.stdout.splitlines()[-1]) == [[w.POSTGRES_USER, DATABASE_NAME, True]] * 3


@pytest.mark.parametrize(("host", "ca", "refusal"), [
    pytest.param("localhost", "wrong", "CERTIFICATE_VERIFY_FAILED", id="a-wrong-ca"),
    pytest.param("127.0.0.1", "right", "IP address mismatch", id="another-host-name"),
])
def test_the_async_engine_refuses_a_pgbouncer_it_cannot_verify(managed, host, ca, refusal):
    run = run_async_client(managed, managed.ca_file if ca == "right" else managed.wrong_ca_file, host)
    assert run.returncode != 0 and refusal in run.stderr


def test_where_the_url_asks_for_no_ca_the_async_engine_requires_tls_only(managed):
    """CloudNativePG's stacks: their sync URL names no CA file (even if one were left in the pod), the connect
    args add nothing, `ssl=require` holds: a certificate from another CA is taken."""
    cloudnative_pg_url = metadata_url(w.POSTGRES_USER, PASSWORD, "localhost", managed.pgbouncer.port, DATABASE_NAME)
    run = run_async_client(managed, managed.wrong_ca_file, "127.0.0.1", sync_url=cloudnative_pg_url)
    assert run.returncode == 0, run.stderr[-3000:]


# ---------------------------------------------------------------- Redis with TLS only (ElastiCache)

BROKER_CLIENT = """
import json, os, uuid
from kombu import Connection

def chain(exc):
    seen = []
    while exc is not None and len(seen) < 10:
        seen.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return seen

payload = {"task": "airflow.providers.celery.executors.celery_executor_utils.execute_command",
           "id": str(uuid.uuid4())}
try:
    # One immediate retry: a refusal must show as the error it is, not as kombu's back-off.
    with Connection(os.environ["BROKER_URL"], connect_timeout=5,
                    transport_options={"max_retries": 1, "interval_start": 0}) as connection:
        queue = connection.SimpleQueue(f"platform-test-{uuid.uuid4().hex[:8]}")
        queue.put(payload)
        message = queue.get(timeout=5)
        message.ack()
        queue.clear()
        queue.close()
        pool = connection.default_channel.client.connection_pool
        redis_connection = pool.get_connection("PING")
        certificate = redis_connection._sock.getpeercert()  # {} unless the chain was verified
        result = {"payload": message.payload,
                  "ssl_cert_reqs": int(pool.connection_kwargs["ssl_cert_reqs"]),
                  "ssl_check_hostname": bool(pool.connection_kwargs.get("ssl_check_hostname", False)),
                  "verified_peer": dict(part for rdn in certificate.get("subject", ()) for part in rdn),
                  "tls_version": redis_connection._sock.version()}
        pool.release(redis_connection)
except Exception as exc:
    result = {"errors": chain(exc)}
print(json.dumps(result))
"""


def broker_client(url: str, trust_store: Optional[Path], workdir: Path) -> dict:
    """A kombu round trip in a fresh interpreter whose default trust store is `trust_store` alone (None: the
    machine's own store). Returns what kombu handed redis-py and what came back, or the exception chain."""
    env = {key: value for key, value in os.environ.items() if key not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if trust_store is not None:
        no_directory = workdir / "no-ca-directory"
        no_directory.mkdir(exist_ok=True)
        env.update(SSL_CERT_FILE=str(trust_store), SSL_CERT_DIR=str(no_directory))
    env["BROKER_URL"] = url
    run = subprocess.run([sys.executable, "-c", BROKER_CLIENT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def published_broker_url(port: int, host: str = "localhost") -> str:
    return with_host_and_port(tls_broker_url(PASSWORD, ELASTICACHE_HOST, w.REDIS_PORT), host, port)


def refused_for_certificate(result: dict) -> str:
    assert "errors" in result, f"the broker accepted the connection: {result}"
    verification = [error for error in result["errors"] if error.startswith("ssl.SSLCertVerificationError")]
    assert verification, result["errors"]
    assert "CERTIFICATE_VERIFY_FAILED" in verification[0]
    return verification[0]


def test_tls_broker_url_carries_a_celery_message_when_the_ca_is_in_the_default_trust_store(managed):
    result = broker_client(published_broker_url(managed.redis.port), managed.ca_file, managed.workdir)
    assert "errors" not in result, result["errors"]
    assert result["payload"]["task"].endswith("execute_command")
    # kombu read `ssl_cert_reqs=required` from the URL (ssl.CERT_REQUIRED == 2) and the chain was verified.
    assert result["ssl_cert_reqs"] == 2
    assert result["verified_peer"] == {"commonName": "localhost"}
    assert result["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_broker_url_with_a_wrong_ca_as_trust_store_is_refused(managed):
    error = refused_for_certificate(
        broker_client(published_broker_url(managed.redis.port), managed.wrong_ca_file, managed.workdir))
    assert "self-signed certificate in certificate chain" in error


def test_tls_broker_url_verifies_against_the_default_trust_store(managed):
    # The machine's own store (no SSL_CERT_FILE): the test CA is not in it, so the URL's verification refuses.
    refused_for_certificate(broker_client(published_broker_url(managed.redis.port), None, managed.workdir))


def test_plain_redis_url_to_the_tls_port_fails(managed):
    plain = "redis://" + published_broker_url(managed.redis.port).split("://", 1)[1].split("?", 1)[0]
    result = broker_client(plain, managed.ca_file, managed.workdir)
    assert "errors" in result, result
    assert any("Connection reset by peer" in error or "Connection closed by server" in error
               for error in result["errors"]), result["errors"]


def test_without_ssl_cert_reqs_kombu_does_not_verify_the_broker(managed):
    """Why the URL carries `ssl_cert_reqs=required`: a bare `rediss://` makes kombu pass ssl.CERT_NONE
    (kombu.connection: "defaulting to insecure SSL behaviour"), and a certificate from any CA is taken."""
    bare = published_broker_url(managed.redis.port).split("?", 1)[0]
    result = broker_client(bare, managed.wrong_ca_file, managed.workdir)
    assert "errors" not in result, result["errors"]
    assert (result["ssl_cert_reqs"], result["verified_peer"]) == (0, {})


def test_tls_broker_url_checks_the_host_name(managed):
    """kombu 5.5.4 passes no ssl_check_hostname unless the URL has one, and redis-py 5.2.1 defaults it to False:
    the published URL asks for it. The right CA signed the certificate, but it names `localhost`, not 127.0.0.1."""
    result = broker_client(published_broker_url(managed.redis.port, host="127.0.0.1"), managed.ca_file,
                           managed.workdir)
    assert "mismatch" in refused_for_certificate(result)


def test_the_published_broker_url_verifies_the_host_name(managed):
    for host, accepted in (("localhost", True), ("127.0.0.1", False)):
        result = broker_client(published_broker_url(managed.redis.port, host=host), managed.ca_file, managed.workdir)
        if accepted:
            assert "errors" not in result, result["errors"]
            assert (result["ssl_cert_reqs"], result["ssl_check_hostname"]) == (2, True)
        else:
            assert "IP address mismatch" in refused_for_certificate(result)