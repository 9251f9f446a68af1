"""What the program publishes for its clients (the connection Secrets), read from a run: the real-server tiers
start their servers with it. Runs that start servers give every generated password the URL-reserved characters."""

from __future__ import annotations

import secrets

from components import workloads as w
from components.workloads import BROKER_URL_SECRET, METADATA_CONNECTION_SECRET
from mock_engine import ProgramRun

# Every character with a meaning in a URL goes into each generated password, and one seed per test process
# makes two runs of the program generate the same ones.
URL_RESERVED = "@:/?#%&"
PASSWORD_SEED = secrets.randbits(64)


def published(run: ProgramRun) -> dict:
    secret_data = {s.values["metadata"]["name"]: s.values["stringData"] for s in run.of_type("kubernetes:core/v1:Secret")}
    return {
        "metadata_url": secret_data[METADATA_CONNECTION_SECRET]["connection"],
        "broker_url": secret_data[BROKER_URL_SECRET]["connection"],
        "postgres_user": secret_data[w.POSTGRES_APP_USER_SECRET]["username"],
        "postgres_password": secret_data[w.POSTGRES_APP_USER_SECRET]["password"],
        "redis_password": secret_data[w.REDIS_AUTH_SECRET]["auth"],
        # What the Pooler asks PgBouncer for (servers.start_pgbouncer writes it into pgbouncer.ini).
        "pooler": run.one("kubernetes:postgresql.cnpg.io/v1:Pooler").values["spec"]["pgbouncer"],
    }
