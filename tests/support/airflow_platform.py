"""The end-to-end DAG tier's platform (tests/e2e/test_dags_e2e.py), which `make bench` runs too: the release as the
chart renders it, the real servers it needs, each component's environment as rendered and pointed at loopback, the
REST API, and the components as processes (each as its Deployment's pod where that matters)."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from components import workloads as w
from mock_engine import run_program
from support.daemons import Daemons, _descendants, _free_port, _signal
from support.kube_api_stand_in import KubeApiStandIn
from support.published import PASSWORD_SEED, URL_RESERVED
from support.rendering import render_all, secret_files
from support.servers import (
    ProcessServer,
    start_pgbouncer,
    start_postgres,
    start_redis,
    wait_for_port,
    with_host_and_port,
)

# Shortened so the failure tests wait seconds, not minutes (production: Airflow's defaults). With them the
# bound on a worker lost mid-task is: heartbeat timeout + detection interval + retry delay + a new worker's
# start and the task's own run time.
TIMINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
}


def rendered_release(stack: str = "prod", overrides: dict | None = None) -> dict:
    """What a stack's release gives an Airflow container: airflow.cfg, local settings, env, Secrets."""
    run = run_program(stack, password_characters=URL_RESERVED, password_seed=PASSWORD_SEED, overrides=overrides)
    documents = render_all(run)["airflow"]
    secrets = {s.values["metadata"]["name"]: s.values["stringData"] for s in run.of_type("kubernetes:core/v1:Secret")}
    configmap = next(d for d in documents if d["kind"] == "ConfigMap" and "airflow.cfg" in (d.get("data") or {}))

    def container(deployment: str, name: str) -> tuple[dict, dict]:
        document = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment)
        spec = document["spec"]["template"]["spec"]
        return spec, next(c for c in spec["containers"] if c["name"] == name)

    scheduler_pod, scheduler = container("airflow-scheduler", "scheduler")
    worker_pod, worker = container("airflow-worker", "worker")
    create_user = next(d for d in documents if d["kind"] == "Job" and "create-user" in d["metadata"]["name"])
    migrate = next(d for d in documents if d["kind"] == "Job" and d["metadata"]["name"].endswith("run-airflow-migrations"))
    cleanup = next(d for d in documents if d["kind"] == "CronJob" and d["metadata"]["name"].endswith("database-cleanup"))
    return {"cleanup": cleanup["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0],
            "documents": documents, "cfg": configmap["data"]["airflow.cfg"], "local_settings": configmap["data"]["airflow_local_settings.py"],
            "scheduler_pod": scheduler_pod, "scheduler": scheduler, "worker_pod": worker_pod, "worker": worker,
            "secrets": secrets,
            "pooler": run.one("kubernetes:postgresql.cnpg.io/v1:Pooler").values["spec"]["pgbouncer"],
            "create_user": create_user["spec"]["template"]["spec"]["containers"][0],
            "migrate": migrate["spec"]["template"]["spec"]["containers"][0]}


class Servers:
    def __init__(self, workdir: Path, release: dict):
        metadata = release["secrets"]["airflow-metadata-connection"]["connection"]
        user, password = _userinfo(metadata)
        redis_password = _userinfo(release["secrets"]["airflow-broker-url"]["connection"])[1]
        self.workdir, self.redis_password = workdir, redis_password
        self.started: list = []
        try:
            self.postgres = start_postgres(workdir / "postgres")
            self.started.append(self.postgres)
            self.postgres.superuser_sql(f'CREATE ROLE "{user}" LOGIN PASSWORD %s', password)
            self.postgres.superuser_sql(f'CREATE DATABASE "airflow" OWNER "{user}"')
            # KEDA's role as CloudNativePG makes it from its managed-role Secret: login, no attributes, no grants.
            keda = release["secrets"][w.POSTGRES_KEDA_USER_SECRET]
            self.postgres.superuser_sql(f'CREATE ROLE "{keda["username"]}" LOGIN NOINHERIT CONNECTION LIMIT '
                                        f'{w.POSTGRES_KEDA_CONNECTION_LIMIT} PASSWORD %s', keda["password"])
            # The workers' role, the same way (no connection limit).
            worker = release["secrets"][w.POSTGRES_WORKER_USER_SECRET]
            self.postgres.superuser_sql(f'CREATE ROLE "{worker["username"]}" LOGIN NOINHERIT PASSWORD %s',
                                        worker["password"])
            self.pgbouncer = start_pgbouncer(workdir / "pgbouncer", self.postgres, user, password, "airflow",
                                             release["pooler"], other_users={keda["username"]: keda["password"],
                                                          worker["username"]: worker["password"]})
            self.started.append(self.pgbouncer)
            self.redis = start_redis(workdir / "redis", redis_password)
        except BaseException:
            self.stop()
            raise

    def restart_redis(self) -> None:
        """The same Redis (port, password) stopped and started again, as a pod restart does."""
        port = self.redis.port
        self.redis.stop()
        process = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(self.workdir / "redis" / "redis.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis = ProcessServer(port=port, process=process)
        wait_for_port(port, process)

    def stop(self) -> None:
        for server in [getattr(self, "redis", None), *reversed(self.started)]:
            if server is not None:
                try:
                    server.stop()
                except Exception as error:  # noqa: BLE001 the others are stopped all the same
                    print(f"stopping {server}: {error}")


def _userinfo(url: str) -> tuple[str, str]:
    from urllib.parse import unquote
    userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def produced_env(release: dict, servers: Servers, home: Path, ports: dict[str, int],
                 fernet_key: str | None = None, broker_password: str | None = None,
                 component: str = "scheduler") -> dict[str, str]:
    """A component's environment as rendered (the scheduler's, which the API server, DAG processor and triggerer
    share, or the worker's), pointed at loopback. A `_CMD` option whose file the component's pod does not have
    keeps its command, and fails as in the pod if Airflow reads it."""
    # Each component's own files: the worker's database URL is not the scheduler's.
    secrets_dir, dags, logs = home / "secrets" / component, home / "dags", home / "logs"
    for directory in (secrets_dir, dags, logs, home / "config"):
        directory.mkdir(parents=True, exist_ok=True)
    # The files of the Secret volumes, from the Secrets the program made.
    files = {path: release["secrets"][name][key]
             for path, (name, key) in secret_files(release[f"{component}_pod"], release[component],
                                                   present=set(release["secrets"])).items()}
    metadata, broker = ("127.0.0.1", servers.pgbouncer.port), ("127.0.0.1", servers.redis.port)
    # Which server each URL option points at, by option (as support/airflow_cli.py's airflow_env does).
    loopback = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata,
                "AIRFLOW__CELERY__BROKER_URL": broker}
    env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for entry in release[component]["env"]:
        if "fieldRef" in entry.get("valueFrom", {}):
            continue  # the pod's own IP or name: nothing to give a process on loopback
        if "value" in entry:
            value = entry["value"]
            if value.startswith("cat ") and value[4:] in files:
                option = entry["name"].removesuffix("_CMD")
                path = secrets_dir / Path(value[4:]).name
                content = files[value[4:]]
                if option in loopback:
                    content = with_host_and_port(content, *loopback[option])
                if fernet_key and option == "AIRFLOW__CORE__FERNET_KEY":
                    content = fernet_key
                if broker_password and option == "AIRFLOW__CELERY__BROKER_URL":
                    content = f"redis://:{quote(broker_password, safe='')}@{broker[0]}:{broker[1]}/0"
                path.write_text(content)
                path.chmod(0o440)
                value = f"cat {path}"
            env[entry["name"]] = value
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            reference = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = with_host_and_port(release["secrets"][reference["name"]][reference["key"]],
                                                    *metadata)
        else:
            raise AssertionError(f"the rendered environment has an entry this tier does not reproduce: {entry}")
    cfg = configparser_from(release["cfg"])
    cfg["core"]["dags_folder"] = str(dags)
    cfg["core"]["execution_api_server_url"] = f"http://127.0.0.1:{ports['api']}/execution/"
    cfg["logging"]["remote_logging"] = "False"  # S3 is not reachable from here
    cfg["logging"]["base_log_folder"] = str(logs)
    cfg["logging"]["worker_log_server_port"] = str(ports["worker_logs"])
    cfg["logging"]["trigger_log_server_port"] = str(ports["trigger_logs"])
    cfg["metrics"]["statsd_on"] = "False"  # no statsd exporter here
    with open(home / "airflow.cfg", "w") as handle:
        cfg.write(handle)
    (home / "config" / "airflow_local_settings.py").write_text(release["local_settings"])
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW_CONFIG": str(home / "airflow.cfg"), **TIMINGS})
    return env


class Api:
    """The REST API as a user sees it: a JWT from /auth/token, then /api/v2."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.token: str | None = None

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, Any]:
        """The status and the body: JSON as data, anything else as text."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            text, status = error.read().decode(), error.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def login(self, username: str, password: str) -> int:
        status, body = self.request("POST", "/auth/token", {"username": username, "password": password})
        if status in (200, 201):
            self.token = body["access_token"]
        return status

    def trigger(self, dag_id: str) -> str:
        status, body = self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert status == 200, body
        status, body = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        assert status == 200, body
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        assert status == 200, body
        return body["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        status, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert status == 200, body
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}


class Platform:
    def __init__(self, executable: Path, release: dict, servers: Servers, home: Path):
        self.airflow_bin, self.release, self.servers, self.home = executable, release, servers, home
        self.ports = {"api": _free_port(), "worker_logs": _free_port(), "trigger_logs": _free_port()}
        # Where a component's policies do not let it go: a port nothing listens on.
        self.unreachable = f"127.0.0.1:{_free_port()}"
        self.env = produced_env(release, servers, home, self.ports)
        self.worker_env = produced_env(release, servers, home, self.ports, component="worker")
        # The API server has no task logs of its own (on AWS it mounts no logs volume): it must fetch a task's
        # log from the worker's log server, as in the cluster.
        self.api_server_env = {**self.env, "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "api-server-logs"),
                               # Airflow 3.1.8's triggerer listens on [logging] trigger_log_server_port, but the API
                               # server fetches a trigger's log from triggerer_log_server_port (file_task_handler.py;
                               # an option config.yml lacks, so 8794 unless set). The cluster keeps both at 8794; a
                               # tier on free ports gives the API server the triggerer's.
                               "AIRFLOW__LOGGING__TRIGGERER_LOG_SERVER_PORT": str(self.ports["trigger_logs"])}
        (home / "api-server-logs").mkdir(parents=True, exist_ok=True)
        self.logs = home / "component-logs"
        self.logs.mkdir(exist_ok=True)
        self.daemons = Daemons(executable, self.env, self.logs)
        self.api = Api(self.ports["api"])
        self.workers = 0
        self.pods: dict[str, tuple[str, str]] = {}   # component name -> (pod name, pod address)
        # The Kubernetes API the workers patch their pods' deletion cost at, and the service account files kubelet
        # would mount for them (token, CA, namespace).
        self.kube_api = KubeApiStandIn(home / "kube-api")
        self.service_account = self.kube_api.service_account_dir(home / "service-account", w.AIRFLOW_NAMESPACE)
        # The admin the program generates (its password holds every URL-reserved character).
        admin = release["secrets"]["airflow-admin-user"]
        self.admin = (admin["username"], admin["password"])

    def as_pod(self, component: str, pod_name: str, address: str, service_account: Path | None = None) -> list[str]:
        """A command prefix that runs a component as a Deployment's pod: its host name is the pod's name, which
        no DNS resolves (nor this machine's /etc/hosts), and its own /etc/hosts maps that name to the pod's
        address, as kubelet writes it. The address is a loopback one, so the other components reach it. With a
        service account, its files are where kubelet mounts them (on a /run of the pod's own)."""
        hosts = self.home / f"hosts-{pod_name}"
        hosts.write_text(f"127.0.0.1\tlocalhost\n{address}\t{pod_name}\n")
        self.pods[component] = (pod_name, address)
        mount_account = ('mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && '
                         'cp "$3"/* /run/secrets/kubernetes.io/serviceaccount/ && ') if service_account else ""
        return ["unshare", "--user", "--map-root-user", "--uts", "--mount", "sh", "-c",
                f'hostname "$1" && mount --bind "$2" /etc/hosts && {mount_account}shift 3 && exec "$@"', "pod",
                pod_name, str(hosts), str(service_account or "")]

    def confined(self, component: str, env: dict[str, str]) -> dict[str, str]:
        """The component's environment with the broker and the execution API at an address nothing answers where
        its NetworkPolicies do not admit it (components/workloads.py: the broker's and the execution API's
        clients): every test of this tier then runs with each component cut off as in the cluster."""
        confined = dict(env)
        if component not in w.AIRFLOW_BROKER_CLIENT_COMPONENTS:
            confined.pop("AIRFLOW__CELERY__BROKER_URL_CMD", None)
            confined["AIRFLOW__CELERY__BROKER_URL"] = f"redis://:cut-off@{self.unreachable}/0"
        if component not in w.AIRFLOW_EXECUTION_API_CLIENT_COMPONENTS:
            confined["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{self.unreachable}/execution/"
        return confined

    def start_worker(self, env: dict[str, str] | None = None) -> str:
        self.workers += 1
        name = f"celery-worker-{self.workers}"
        pod_name = f"airflow-worker-5d8f7c9b6-w{self.workers:04d}"
        self.kube_api.add_pod(w.AIRFLOW_NAMESPACE, pod_name)
        pod = self.as_pod(name, pod_name, f"127.0.0.{10 + self.workers}", service_account=self.service_account)
        # Concurrency from the release's [celery] worker_concurrency, as the chart's worker command leaves it. The
        # `kubernetes` Service as kubelet gives every container its address.
        self.daemons.start(name, "celery", "worker", "--celery-hostname", f"e2e-{self.workers}@%h", prefix=pod,
                           env=self.confined("worker", {**self.worker_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                                        "KUBERNETES_SERVICE_PORT": str(self.kube_api.port),
                                                        **(env or {})}))
        return name

    def deletion_cost(self, name: str) -> str | None:
        """The deletion cost the worker's pod carries in the (stand-in) API server."""
        return self.kube_api.annotations(w.AIRFLOW_NAMESPACE, self.pods[name][0]).get(w.POD_DELETION_COST_ANNOTATION)

    def running_workers(self) -> list[str]:
        return [name for name, process in self.daemons.processes.items()
                if name.startswith("celery-worker") and process.poll() is None]

    def kill(self, name: str) -> None:
        """SIGKILL to the process and every process under it: a node lost, an OOM kill."""
        process = self.daemons.processes.pop(name)
        _signal([process.pid, *_descendants(process.pid)], signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, names: list[str]) -> dict[str, int]:
        """SIGTERM, as Kubernetes stops a pod (SIGKILL after the grace time); the components leave the platform."""
        codes = self.daemons.stop(names)
        for name in names:
            self.daemons.processes.pop(name, None)
        return codes

    def component_logs(self) -> str:
        """The tail of every component's log, killed workers' included."""
        return "\n".join(f"--- {path.stem}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(self.logs.glob("*.log")))

    def wait(self, condition, within: float, what: str) -> float:
        started = time.monotonic()
        while not condition():
            self.daemons.assert_running()
            if time.monotonic() - started > within:
                pytest.fail(f"{what}: not within {within}s\n{self.component_logs()}")
            time.sleep(2)
        return time.monotonic() - started


def _api_up(api: Api) -> bool:
    try:
        return api.request("GET", "/api/v2/monitor/health")[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def create_admin(platform: Platform) -> subprocess.CompletedProcess:
    """The chart's create-user Job command, with the admin's Secret as files in a temporary folder."""
    container = platform.release["create_user"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "admin-user")
    files = platform.home / "admin-user"
    files.mkdir(exist_ok=True)
    (files / "username").write_text(platform.admin[0])
    (files / "password").write_text(platform.admin[1])
    return run_job_command(platform, [*container["args"][:-1], container["args"][-1].replace(mount, str(files))])


def run_job_command(platform: Platform, command: list[str]) -> subprocess.CompletedProcess:
    """A chart Job's command as its container runs it, with this tier's `airflow` first on the PATH."""
    env = {**platform.env, "PATH": f"{platform.airflow_bin.parent}:{platform.env['PATH']}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def configparser_from(text: str) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(text)
    return cfg
