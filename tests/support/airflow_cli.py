"""The Airflow CLI as the end-to-end tier runs it (AIRFLOW_BIN, Airflow's own virtualenv), with the environment
the chart gives every Airflow container, pointed at the loopback servers."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from support.servers import with_host_and_port


def airflow_env(platform, servers, async_port: int | None = None, without: tuple[str, ...] = ()) -> dict[str, str]:
    """What the chart gives every Airflow container, from the Secrets the program published: no credential in
    the environment, each one read by Airflow through its `_CMD` option from a file (0440, as the projected
    volume mounts it), the in-cluster host names replaced by the local servers'."""
    local = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("127.0.0.1", servers["pgbouncer"]),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": ("127.0.0.1", async_port or servers["pgbouncer"]),
        "AIRFLOW__CELERY__BROKER_URL": ("127.0.0.1", servers["redis"]),
    }
    servers["home"].mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="secrets-", dir=servers["home"]))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(servers["home"]),
        "AIRFLOW_HOME": str(servers["home"]),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    for option, value in platform["credentials"].items():
        if option in without:
            continue
        if option in local:
            value = with_host_and_port(value, *local[option])
        path = directory / option.lower()
        path.write_text(value)
        path.chmod(0o440)
        env[f"{option}_CMD"] = f"cat {path}"
    return env


def airflow(airflow_bin: Path, env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(airflow_bin), *args], env=env, capture_output=True, text=True, timeout=timeout)


def async_env(platform, servers, port: int, with_connect_args: bool = True) -> dict[str, str]:
    """The environment the chart gives an Airflow container for its async engine: the published
    async-connection, and (from the release's `config` and `airflowLocalSettings`) its connect args."""
    env = airflow_env(platform, servers, async_port=port)
    if with_connect_args:
        config_dir = servers["home"] / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "airflow_local_settings.py").write_text(platform["airflow_local_settings"])
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = platform["async_connect_args"]
    return env
