"""The connection URLs the program publishes, proven by connecting to real servers.

PostgreSQL, PgBouncer and Redis run on loopback with the users and passwords the program generated
(every password forced to contain `@ : / ? # % &`). Only the host and port of the published URLs are
rewritten; the rest is used byte for byte, through the clients Airflow uses (SQLAlchemy + psycopg2,
kombu for Celery's broker).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import kombu.exceptions
import pytest
import redis
import sqlalchemy
from kombu import Connection
from kombu.utils.url import url_to_parts

import components.broker.redis_ha
import components.database.urls
from components.database.urls import DATABASE_NAME
from mock_engine import run_program
from support.availability import unavailable
from support.published import PASSWORD_SEED, URL_RESERVED, published
from support.servers import (
    servers_session,
    start_pgbouncer,
    start_postgres,
    start_redis,
    unavailable_reason,
    with_host_and_port,
)


@pytest.fixture(scope="module")
def program():
    return published(run_program("prod", password_characters=URL_RESERVED, password_seed=PASSWORD_SEED))


@pytest.fixture(scope="module")
def servers(program):
    with servers_session("airflow-platform-servers-") as (workdir, started):
        postgres = start_postgres(workdir / "postgres")
        started.append(postgres)
        postgres.superuser_sql(f'CREATE ROLE "{program["postgres_user"]}" LOGIN PASSWORD %s',
                               program["postgres_password"])
        postgres.superuser_sql(f'CREATE DATABASE "{DATABASE_NAME}" OWNER "{program["postgres_user"]}"')
        pgbouncer = start_pgbouncer(workdir / "pgbouncer", postgres, program["postgres_user"],
                                    program["postgres_password"], DATABASE_NAME, program["pooler"])
        started.append(pgbouncer)
        redis = start_redis(workdir / "redis", program["redis_password"])
        started.append(redis)
        yield {"postgres": postgres.port, "pgbouncer": pgbouncer.port, "redis": redis.port}


def query(url: str) -> tuple:
    """(user, database, whether the client's connection is encrypted), through SQLAlchemy as Airflow connects."""
    engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            user, database = connection.execute(sqlalchemy.text("select current_user, current_database()")).one()
            return user, database, connection.connection.dbapi_connection.info.ssl_in_use
    finally:
        engine.dispose()


def broker_round_trip(url: str) -> dict:
    payload = {"task": "airflow.providers.celery.executors.celery_executor_utils.execute_command",
               "id": str(uuid.uuid4())}
    with Connection(url, connect_timeout=5, transport_options={"max_retries": 1}) as connection:
        queue = connection.SimpleQueue(f"platform-test-{uuid.uuid4().hex[:8]}")
        try:
            queue.put(payload)
            message = queue.get(timeout=5)
            message.ack()
            return message.payload
        finally:
            queue.clear()
            queue.close()


def test_generated_passwords_hold_every_url_reserved_character(program):
    for key in ("postgres_password", "redis_password"):
        assert set(URL_RESERVED) <= set(program[key]), key


def test_metadata_url_connects_directly_to_postgres_with_tls(program, servers):
    url = with_host_and_port(program["metadata_url"], "127.0.0.1", servers["postgres"])
    assert query(url) == (program["postgres_user"], DATABASE_NAME, True)


def test_metadata_url_connects_through_pgbouncer(program, servers):
    url = with_host_and_port(program["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    assert query(url) == (program["postgres_user"], DATABASE_NAME, True)


def test_the_pooler_turns_away_a_client_without_tls(program, servers):
    """The Pooler requires TLS of every client (CloudNativePG's default, `prefer`, would take plaintext): one that
    asks for none is disconnected before it may log in. PgBouncer exempts unix sockets (src/client.c: "require SSL
    except on unix socket"), where CloudNativePG's own admin and metrics connections come from."""
    url = with_host_and_port(program["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    assert "sslmode=require" in url
    with pytest.raises(sqlalchemy.exc.OperationalError, match="SSL required"):
        query(url.replace("sslmode=require", "sslmode=disable"))


def test_metadata_url_with_a_wrong_password_is_refused(program, servers):
    wrong = program["metadata_url"].replace(quote(program["postgres_password"], safe=""),
                                            quote(program["postgres_password"][::-1], safe=""))
    assert wrong != program["metadata_url"]
    for port in (servers["postgres"], servers["pgbouncer"]):
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed|SASL"):
            query(with_host_and_port(wrong, "127.0.0.1", port))


def test_broker_url_carries_a_celery_message_with_auth_on(program, servers):
    url = with_host_and_port(program["broker_url"], "127.0.0.1", servers["redis"])
    payload = broker_round_trip(url)
    assert payload["task"].endswith("execute_command")


def test_broker_url_with_a_wrong_password_is_refused(program, servers):
    wrong = program["broker_url"].replace(quote(program["redis_password"], safe=""), "not-the-password")
    with pytest.raises(Exception, match="(?i)invalid|WRONGPASS|auth"):
        broker_round_trip(with_host_and_port(wrong, "127.0.0.1", servers["redis"]))


def test_without_percent_encoding_the_published_urls_stop_working(program, servers, monkeypatch):
    # The same program and the same passwords, with the encoding taken out of the URL builders.
    def no_encoding(value, safe=""):
        return value

    monkeypatch.setattr(components.database.urls, "quote", no_encoding)
    monkeypatch.setattr(components.broker.redis_ha, "quote", no_encoding)
    raw = published(run_program("prod", password_characters=URL_RESERVED, password_seed=PASSWORD_SEED))
    assert raw["postgres_password"] == program["postgres_password"]
    assert raw["metadata_url"] != program["metadata_url"]
    # Without encoding, the password's reserved characters cut the URL somewhere else: the clients'
    # own parsers then read another host, port, user or password, or give up. Only a URL that still
    # points at loopback is tried for real (a garbage host name would go to the DNS resolver).
    metadata = with_host_and_port(raw["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    try:
        parsed = sqlalchemy.engine.make_url(metadata)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.host == "127.0.0.1":
        with pytest.raises(sqlalchemy.exc.DBAPIError):
            query(metadata)
    else:
        assert parsed is None or parsed.password != program["postgres_password"]

    broker = with_host_and_port(raw["broker_url"], "127.0.0.1", servers["redis"])
    try:
        parts = url_to_parts(broker)
    except ValueError:
        parts = None
    if parts is not None and parts.hostname == "127.0.0.1" and parts.port == servers["redis"]:
        with pytest.raises((kombu.exceptions.KombuError, redis.exceptions.RedisError)):
            broker_round_trip(broker)
    else:
        assert parts is None or parts.password != program["redis_password"] or parts.hostname != "127.0.0.1"


def test_redis_with_the_charts_memory_settings_refuses_writes_instead_of_dropping_tasks(program):
    """The `redis.config` the program hands redis-ha (maxmemory, noeviction), on a real Redis: a full broker
    answers OOM to the producer; it neither evicts queued tasks nor grows past its container's memory."""
    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    run = run_program("local", overrides={"redisMemory": "64Mi"})
    chart_config = run.one("kubernetes:helm.sh/v3:Release", "broker-redis-ha").values["values"]["redis"]["config"]
    assert int(chart_config["maxmemory"]) == int(64 * 2**20 * 0.75)
    workdir = Path(tempfile.mkdtemp(prefix="airflow-platform-redis-"))
    server = start_redis(workdir, program["redis_password"],
                         {key: chart_config[key] for key in ("maxmemory", "maxmemory-policy")})
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port, password=program["redis_password"])
        client.lpush("celery", "first-task")
        payload = b"x" * 2**20
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for _ in range(200):
                client.lpush("celery", payload)
        used = int(client.info("memory")["used_memory"])
        assert used <= int(chart_config["maxmemory"]) + 2 * len(payload)
        assert client.lindex("celery", -1) == b"first-task", "nothing already queued was evicted"
        client.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
