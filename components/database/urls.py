"""The metadata database's URLs as its clients read them (the Secret Database writes): one set per engine, each
URL percent-encoding the generated passwords (they hold URL-reserved characters on purpose)."""

from __future__ import annotations

from urllib.parse import quote

from components import workloads as w
from components.database.managed import PGBOUNCER_PORT

DATABASE_NAME = w.POSTGRES_DATABASE


def metadata_url(user: str, password: str, host: str, port: int, database: str, sslmode: str = "require",
                 sslrootcert: str = "") -> str:
    """The metadata URL as Airflow (SQLAlchemy) and KEDA read it. The password may hold any character,
    so it is percent-encoded; `safe=""` encodes `/` too."""
    root = f"&sslrootcert={quote(sslrootcert)}" if sslrootcert else ""
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
            f"?sslmode={sslmode}{root}")


def pgbouncer_stats_url(password: str) -> str:
    """What the chart's PgBouncer metrics exporter connects to: PgBouncer's admin console on loopback, over TLS."""
    return metadata_url(w.POSTGRES_USER, password, "127.0.0.1", PGBOUNCER_PORT, "pgbouncer")


def cloudnative_pg_metadata_urls(password: str, keda_password: str, worker_password: str, host: str,
                                 port: int) -> dict[str, str]:
    """The Secret's keys with CloudNativePG (Airflow, its workers, KEDA and the cleanup -> its Pooler): TLS
    required."""
    url = metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME)
    return {"connection": url, w.ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_USER, password, host, port,
                                                                         DATABASE_NAME),
            w.WORKER_CONNECTION_KEY: metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port, DATABASE_NAME),
            w.WORKER_ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port,
                                                            DATABASE_NAME),
            w.KEDA_CONNECTION_KEY: metadata_url(w.POSTGRES_KEDA_USER, keda_password, host, port, DATABASE_NAME),
            w.CLEANUP_CONNECTION_KEY: url}


def managed_metadata_urls(password: str, keda_password: str, worker_password: str, host: str, port: int,
                          ca_file: str = w.METADATA_CA_FILE) -> dict[str, str]:
    """The Secret's keys with a managed engine (Airflow -> the chart's PgBouncer): Airflow verifies PgBouncer's
    certificate and name against the platform CA (`verify-full`; its async engine does the same through the
    connect args AirflowRelease gives it when that file exists), KEDA and the cleanup only require TLS."""
    return {
        "connection": metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME, "verify-full", ca_file),
        w.ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME),
        w.WORKER_CONNECTION_KEY: metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port, DATABASE_NAME,
                                            "verify-full", ca_file),
        w.WORKER_ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port,
                                                        DATABASE_NAME),
        w.KEDA_CONNECTION_KEY: metadata_url(w.POSTGRES_KEDA_USER, keda_password, host, port, DATABASE_NAME, "require"),
        w.CLEANUP_CONNECTION_KEY: metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME, "require"),
    }


def async_metadata_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """The URL of Airflow's async engine (asyncpg). Airflow derives one from the sync URL by changing the
    driver only, and asyncpg refuses the libpq `sslmode` parameter (TypeError: unexpected keyword argument
    'sslmode'); its own spelling is `ssl`. SQLAlchemy's statement cache is off: behind PgBouncer in
    transaction mode a cached statement may live on another server connection (AirflowRelease also turns
    asyncpg's own cache off, which only connect_args can)."""
    return (f"postgresql+asyncpg://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
            "?ssl=require&prepared_statement_cache_size=0")
