"""End-to-end tier (`make e2e`): Airflow runs DAGs with exactly the configuration the program produces.

The Airflow chart is rendered by real Helm from the `prod` stack's values; the `airflow.cfg` of its ConfigMap,
`airflow_local_settings.py`, and the scheduler's and worker's container environments (the `_CMD` options and
the files of the projected Secret volume, KEDA's connection) are what the Airflow processes here get. Only
what points into the cluster is rewritten: hosts and ports to the loopback servers (PostgreSQL behind PgBouncer
in transaction mode, Redis), paths to a temporary folder, the execution API and log server to free ports,
remote logging (S3) and statsd off. Timing options are shortened where a test waits on them (`TIMINGS`); they
change when Airflow notices a failure, not what it does about it.

Then, as real processes: `airflow db migrate`, the chart's create-user command, the API server, scheduler, DAG
processor, triggerer and a Celery worker. DAGs pass data through XCom, read a connection and a variable created
through the REST API, defer to the triggerer, and survive a worker killed mid-task and a Redis restart.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from cryptography.fernet import Fernet

from components import workloads as w
from support.airflow_cli import airflow
from support.airflow_platform import (
    Api,
    Platform,
    Servers,
    _api_up,
    _userinfo,
    configparser_from,
    create_admin,
    produced_env,
    rendered_release,
    run_job_command,
)
from support.availability import unavailable
from support.daemons import _free_port, _query
from support.servers import (
    unavailable_reason,
    with_host_and_port,
)

pytestmark = pytest.mark.e2e

WORKER_LOST_BOUND_SECONDS = 120
RUN_BOUND_SECONDS = 180

PIPELINE, DEFERRABLE, SLOW, QUICK = "e2e_pipeline", "e2e_deferrable", "e2e_slow", "e2e_quick"
DAG_FILES = {
    "e2e_pipeline.py": f'''
from airflow.sdk import Connection, Variable, dag, task


@dag(dag_id="{PIPELINE}", schedule=None, catchup=False, tags=["e2e"])
def pipeline():
    @task
    def extract():
        return {{"rows": [1, 2, 3]}}

    @task
    def transform(data):
        warehouse = Connection.get("warehouse")
        threshold = int(Variable.get("threshold"))
        print("E2E-MARKER transform saw", warehouse.host, threshold)
        return {{"total": sum(r for r in data["rows"] if r >= threshold), "host": warehouse.host,
                 "password_ok": warehouse.password == "s3cr3t-value"}}

    @task
    def load(result):
        assert result == {{"total": 5, "host": "warehouse.internal", "password_ok": True}}, result
        print("E2E-MARKER loaded", result)

    load(transform(extract()))


pipeline()
''',
    "e2e_deferrable.py": f'''
from datetime import timedelta

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import dag


@dag(dag_id="{DEFERRABLE}", schedule=None, catchup=False, tags=["e2e"])
def deferrable():
    # Waits 20 s from when it runs (not from the trigger), so it always defers.
    WaitSensor(task_id="wait", time_to_wait=timedelta(seconds=20), deferrable=True)


deferrable()
''',
    "e2e_slow.py": f'''
import time
from datetime import timedelta

from airflow.sdk import dag, task


@dag(dag_id="{SLOW}", schedule=None, catchup=False, tags=["e2e"],
     default_args={{"retries": 2, "retry_delay": timedelta(seconds=2)}})
def slow():
    @task
    def long_step():
        print("E2E-MARKER long_step started")
        time.sleep(25)
        return "done"

    @task
    def after(value):
        assert value == "done"

    after(long_step())


slow()
''',
    "e2e_quick.py": f'''
from airflow.sdk import dag, task


@dag(dag_id="{QUICK}", schedule=None, catchup=False, tags=["e2e"])
def quick():
    @task
    def only():
        print("E2E-MARKER quick ran")

    only()


quick()
''',
}


# ---------------------------------------------------------------------------------------------------------
# The release as the chart renders it


@pytest.fixture(scope="module")
def release():
    return rendered_release()


@pytest.fixture(scope="module")
def platform(airflow_bin, release):  # noqa: F811
    reason = unavailable_reason()
    if reason:
        pytest.fail(reason)
    workdir = Path(tempfile.mkdtemp(prefix="dags-e2e-"))
    workdir.chmod(0o755)
    servers = platform = None
    try:
        servers = Servers(workdir, release)
        platform = Platform(airflow_bin, release, servers, workdir / "airflow-home")
        for name, text in DAG_FILES.items():
            (platform.home / "dags" / name).write_text(text)
        # The migration Job's own command: `airflow db migrate`, then the default pool sized to the workers.
        migrated = run_job_command(platform, platform.release["migrate"]["args"])
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-3000:]
        platform.daemons.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(platform.ports["api"]),
                               "--workers", "1", env=platform.confined("api-server", platform.api_server_env))
        platform.daemons.start("scheduler", "scheduler", env=platform.confined("scheduler", platform.env))
        platform.daemons.start("dag-processor", "dag-processor", env=platform.confined("dag-processor", platform.env))
        platform.daemons.start("triggerer", "triggerer", env=platform.confined("triggerer", platform.env),
                               prefix=platform.as_pod("triggerer", "airflow-triggerer-7c9d84f5b-q2w8e", "127.0.0.3"))
        platform.start_worker()
        metadata = with_host_and_port(release["secrets"]["airflow-metadata-connection"]["connection"], "127.0.0.1",
                                      servers.pgbouncer.port)
        platform.metadata = metadata
        dag_ids = tuple(name.removesuffix(".py") for name in DAG_FILES)
        platform.wait(lambda: len(_query(metadata, "select dag_id from serialized_dag where dag_id in %s",
                                         dag_ids)) == len(dag_ids), 180, "the DAG processor serialises the DAGs")
        platform.wait(lambda: _api_up(platform.api), 120, "the API server answers")
        created = create_admin(platform)
        assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-3000:]
        assert platform.api.login(*platform.admin) in (200, 201)
        yield platform
    except BaseException:
        if platform is not None:
            print(platform.component_logs())
        raise
    finally:
        if platform is not None:
            platform.daemons.stop(list(platform.daemons.processes))
            platform.kube_api.stop()
        if servers is not None:
            servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def component_logs_on_failure(request):
    """A failed test gets the Airflow components' logs in its report."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "platform" in request.fixturenames:
        print(request.getfixturevalue("platform").component_logs())


def finished(platform: Platform, dag_id: str, run_id: str) -> bool:
    return platform.api.run_state(dag_id, run_id) in ("success", "failed")


def wait_until_running(platform: Platform, dag_id: str, run_id: str, task_id: str) -> None:
    platform.wait(lambda: platform.api.task_states(dag_id, run_id).get(task_id) == "running", 120,
                  f"{task_id} runs")


# ---------------------------------------------------------------------------------------------------------
# Tests


def test_every_airflow_component_gets_the_environment_this_tier_reproduces(release):
    """The tier reproduces the scheduler's environment, and the API server's, DAG processor's and triggerer's are
    the same; it reproduces the worker's on its own, which has all of the scheduler's and adds KEDA's connection
    and the image's init setting (the worker's Secret volume lacks two of the scheduler's files)."""
    environments = {}
    for document in release["documents"]:
        if document["kind"] == "Deployment" and document["metadata"]["name"] in (
                "airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"):
            main = document["spec"]["template"]["spec"]["containers"][0]
            environments[document["metadata"]["name"]] = {e["name"]: json.dumps(e, sort_keys=True) for e in main["env"]}
    scheduler = environments.pop("airflow-scheduler")
    worker = environments.pop("airflow-worker")
    for name, environment in environments.items():
        assert environment == scheduler, name
    # DUMB_INIT_SETSID tells the image's init how to pass signals to the worker: nothing outside the image.
    assert set(worker) - set(scheduler) == {"AIRFLOW_CONN_AIRFLOW_DB", "DUMB_INIT_SETSID"}
    assert {name: value for name, value in worker.items() if name in scheduler} == scheduler


def test_the_admin_from_the_create_user_job_logs_in_and_a_wrong_password_does_not(platform):
    fresh = Api(platform.ports["api"])
    assert fresh.login(platform.admin[0], "wrong-" + platform.admin[1]) == 401
    assert fresh.login(*platform.admin) in (200, 201)
    status, _ = fresh.request("GET", "/api/v2/dags")
    assert status == 200
    assert Api(platform.ports["api"]).request("GET", "/api/v2/dags")[0] == 401, "no token, no API"


def test_every_component_reports_healthy_and_the_worker_answers_the_charts_probe(platform):
    def healthy() -> bool:
        status, body = platform.api.request("GET", "/api/v2/monitor/health")
        return status == 200 and isinstance(body, dict) and all(
            body.get(part, {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))
    platform.wait(healthy, 120, "metadatabase, scheduler, triggerer and DAG processor healthy")
    # The worker's liveness probe as the chart renders it, for this worker's Celery name.
    probe = next(c for c in [platform.release["worker"]] if c.get("livenessProbe"))["livenessProbe"]["exec"]["command"][-1]
    assert "inspect ping -d celery@$(hostname)" in probe
    [worker] = platform.running_workers()
    name = f"e2e-{worker.rsplit('-', 1)[-1]}@{platform.pods[worker][0]}"
    pinged = subprocess.run([str(platform.airflow_bin.parent / "python"), "-m", "celery", "--app",
                             "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping", "-d", name],
                            env=platform.env, capture_output=True, text=True, timeout=120)
    assert pinged.returncode == 0 and "pong" in pinged.stdout, pinged.stdout[-2000:] + pinged.stderr[-2000:]


def test_components_the_policies_keep_from_the_broker_and_the_execution_api_are_cut_off_from_them(platform):
    """The tier's confinement is real: Airflow reads the unreachable addresses (they outrank the rendered
    options), so every other test here ran with the API server, triggerer and DAG processor unable to open the
    broker, and the scheduler, triggerer and DAG processor unable to call the execution API."""
    cut_off = {"api-server": ("celery", "broker_url"), "triggerer": ("core", "execution_api_server_url"),
               "dag-processor": ("celery", "broker_url"), "scheduler": ("core", "execution_api_server_url")}
    for component, (section, option) in cut_off.items():
        shown = subprocess.run([str(platform.airflow_bin), "config", "get-value", section, option],
                               env=platform.confined(component, platform.env), capture_output=True, text=True,
                               timeout=300)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert platform.unreachable in shown.stdout, (component, option, shown.stdout)


def test_the_migration_job_sets_the_default_pool_to_the_workers_slots(platform):
    """Running and queued tasks count against default_pool; Airflow creates it with 128 slots, which would hold
    prod's 20 workers x 16 to 8 workers' worth."""
    status, pool = platform.api.request("GET", "/api/v2/pools/default_pool")
    cfg = configparser_from(platform.release["cfg"])
    assert status == 200 and pool["slots"] == int(cfg["core"]["default_pool_task_slot_count"]) == 320, pool


def test_a_pipeline_runs_with_xcom_a_connection_and_a_variable_made_through_the_api(platform):
    status, body = platform.api.request("POST", "/api/v2/connections", {
        "connection_id": "warehouse", "conn_type": "postgres", "host": "warehouse.internal", "login": "etl",
        "password": "s3cr3t-value"})
    assert status in (201, 409), body
    status, body = platform.api.request("POST", "/api/v2/variables", {"key": "threshold", "value": "2"})
    assert status in (201, 409), body
    run_id = platform.api.trigger(PIPELINE)
    platform.wait(lambda: finished(platform, PIPELINE, run_id), RUN_BOUND_SECONDS, f"{PIPELINE} finishes")
    assert platform.api.run_state(PIPELINE, run_id) == "success", platform.api.task_states(PIPELINE, run_id)
    # The task log: the API server has none of its own, so it comes from the worker's log server (the path
    # the NetworkPolicies open from the API server to the workers).
    status, body = platform.api.request(
        "GET", f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/transform/logs/1?full_content=true")
    assert status == 200, body
    assert "E2E-MARKER transform saw warehouse.internal 2" in json.dumps(body)
    assert not [path for path in (platform.home / "api-server-logs").rglob("*") if path.is_file()]
    assert f":{platform.ports['worker_logs']}/log/" in json.dumps(body), "served by the worker's log server"
    # The password was stored encrypted with the program's Fernet key.
    [(stored,)] = _query(platform.metadata, "select password from connection where conn_id = 'warehouse'")
    fernet_key = platform.release["secrets"]["airflow-fernet-key"]["fernet-key"]
    assert Fernet(fernet_key.encode()).decrypt(stored.encode()) == b"s3cr3t-value"


def test_workers_run_tasks_without_the_fernet_key_or_the_jwt_secret(platform):
    """Every test here runs its workers with the environment and Secret volume the chart renders for them: their
    `_CMD` options of the Fernet key and the JWT secret name files the pod lacks, and their database URL names
    the workers' own role, not the owner. Their tasks still run (a connection and a variable reach them through
    the API server: the pipeline test), and the scheduler learns each end from Celery's result, which the worker
    stored under the task's Celery id as that role, through the guard on its pickled column."""
    env = platform.worker_env
    owner_password = _userinfo(platform.release["secrets"]["airflow-metadata-connection"]["connection"])[1]
    readable_files = [Path(command.split()[1]).read_text() for name, command in env.items()
                      if name.endswith("_CMD") and Path(command.split()[1]).exists()]
    assert not [text for text in [*env.values(), *readable_files] if owner_password in text], "the owner's password"
    for option in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
        url = Path(env[f"{option}_CMD"].split()[1]).read_text()
        assert urlsplit(url).username == w.POSTGRES_WORKER_USER, option
    for option in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        command = env[f"{option}_CMD"].split()
        assert command[0] == "cat" and not Path(command[1]).exists(), option
    readable = [*env.values(), *(Path(command.split()[1]).read_text() for name, command in env.items()
                                 if name.endswith("_CMD") and Path(command.split()[1]).exists())]
    for secret, key in ((w.FERNET_KEY_SECRET, "fernet-key"), (w.JWT_SECRET, "jwt-secret")):
        value = platform.release["secrets"][secret][key]
        assert not [text for text in readable if value in text], secret
    run_id = platform.api.trigger(QUICK)
    platform.wait(lambda: finished(platform, QUICK, run_id), RUN_BOUND_SECONDS, f"{QUICK} finishes")
    assert platform.api.run_state(QUICK, run_id) == "success", platform.api.task_states(QUICK, run_id)
    key = f"TaskInstanceKey(dag_id='{QUICK}', task_id='only', run_id='{run_id}', try_number=1"
    platform.wait(lambda: f"Received executor event with state success for task instance {key}"
                  in platform.daemons.log_tail("scheduler", 10**7), 60, "the scheduler reads the task's result")
    assert _query(platform.metadata, "select status from celery_taskmeta where task_id = (select external_executor_id "
                                     "from task_instance where dag_id = %s and run_id = %s)", QUICK, run_id) == [
        ("SUCCESS",)]


def worker_database_url(platform: Platform) -> str:
    return Path(platform.worker_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"].split()[1]).read_text()


def test_the_workers_database_role_stores_plain_results_and_reaches_nothing_of_airflows(platform):
    """What task code running in a worker could do with the URL it can read: Celery's results (which the migration
    Job made, guarded and granted) and the schema's version, nothing of Airflow's own (connections, variables,
    task instances, DAG runs), no DDL; and no result the scheduler would run code from when it unpickles it."""
    import pickle
    url = worker_database_url(platform)
    [(task_id, status)] = _query(url, "select task_id, status from celery_taskmeta where status = 'SUCCESS' "
                                      "order by date_done desc limit 1")
    assert _query(url, "select version_num from alembic_version")
    for statement in ("select * from connection", "select * from variable", "select * from task_instance",
                      "select * from dag_run", "update dag_run set state = 'failed'", "delete from celery_taskmeta",
                      "select * from celery_tasksetmeta", "create table worker_was_here (id int)",
                      "drop table celery_taskmeta"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            _query(url, statement)

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))
    with pytest.raises(psycopg2.errors.CheckViolation):
        _query(url, "update celery_taskmeta set result = %s where task_id = %s returning 1",
               psycopg2.Binary(pickle.dumps(RunsCode(), protocol=5)), task_id)
    assert _query(url, "update celery_taskmeta set result = %s where task_id = %s returning status",
                  psycopg2.Binary(pickle.dumps({"pid": 1}, protocol=5)), task_id) == [(status,)]


def test_the_workers_start_up_checks_pass_with_the_workers_role(platform):
    """Before `airflow celery worker` the image's entrypoint runs `airflow db check` (CONNECTION_CHECK_MAX_COUNT
    unset, as the chart leaves the worker container), and the chart's init container waits for the migrations
    (`airflow db check-migrations`): both with the worker's environment and files, as the workers' role."""
    deployment = next(d for d in platform.release["documents"]
                      if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-worker")
    [init] = [c for c in deployment["spec"]["template"]["spec"].get("initContainers", [])
              if c["name"] == "wait-for-airflow-migrations"]
    assert init["args"][:3] == ["airflow", "db", "check-migrations"]
    for command in (["db", "check"], init["args"][1:]):
        result = subprocess.run([str(platform.airflow_bin), *command], env=platform.worker_env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])


def test_a_deferrable_task_runs_on_the_triggerer(platform):
    run_id = platform.api.trigger(DEFERRABLE)
    deferred_with_a_trigger = []

    def done() -> bool:
        if platform.api.task_states(DEFERRABLE, run_id).get("wait") == "deferred":
            deferred_with_a_trigger.append(_query(platform.metadata, "select count(*) from trigger")[0][0] > 0)
        return finished(platform, DEFERRABLE, run_id)
    platform.wait(done, RUN_BOUND_SECONDS, f"{DEFERRABLE} finishes")
    assert platform.api.run_state(DEFERRABLE, run_id) == "success"
    assert deferred_with_a_trigger and all(deferred_with_a_trigger), "the task deferred to a trigger"
    assert _query(platform.metadata, "select count(*) from trigger")[0][0] == 0, "the trigger fired and was cleared"


def task_log(platform: Platform, dag_id: str, run_id: str, task_id: str) -> str:
    status, body = platform.api.request(
        "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1?full_content=true")
    assert status == 200, body
    return json.dumps(body)


def test_a_running_tasks_log_is_read_live_from_its_worker_at_the_address_it_records(platform):
    """The worker runs as a pod does: its name resolves nowhere but in its own /etc/hosts. The task records the
    address that name has there (hostname_callable), and the API server reads the running task's log from the
    worker's log server at that address."""
    [worker] = platform.running_workers()
    pod_name, address = platform.pods[worker]
    with pytest.raises(socket.gaierror):
        socket.gethostbyname(pod_name)   # what the default, the bare pod name, would leave the API server with
    run_id = platform.api.trigger(SLOW)
    wait_until_running(platform, SLOW, run_id, "long_step")
    status, instance = platform.api.request("GET", f"/api/v2/dags/{SLOW}/dagRuns/{run_id}/taskInstances/long_step")
    assert status == 200 and instance["hostname"] == address, instance
    platform.wait(lambda: "E2E-MARKER long_step started" in task_log(platform, SLOW, run_id, "long_step"), 30,
                  "the running task's log shows what it printed")
    assert platform.api.task_states(SLOW, run_id)["long_step"] == "running", "read while the task runs"
    assert f"http://{address}:{platform.ports['worker_logs']}/log/" in task_log(platform, SLOW, run_id, "long_step")
    platform.wait(lambda: finished(platform, SLOW, run_id), RUN_BOUND_SECONDS, f"{SLOW} finishes")


def test_a_deferred_tasks_log_is_read_live_from_the_triggerer(platform):
    """While the task is deferred, its trigger's log comes from the triggerer's log server, at the address the
    triggerer (also run as a pod) records."""
    _, address = platform.pods["triggerer"]
    run_id = platform.api.trigger(DEFERRABLE)
    platform.wait(lambda: platform.api.task_states(DEFERRABLE, run_id).get("wait") == "deferred", 120,
                  "the sensor defers")
    [(hostname,)] = _query(platform.metadata, "select hostname from job where job_type = 'TriggererJob' "
                                              "and state = 'running'")
    assert hostname == address
    platform.wait(lambda: "trigger starting" in task_log(platform, DEFERRABLE, run_id, "wait"), 30,
                  "the deferred task's log shows its trigger")
    assert f"http://{address}:{platform.ports['trigger_logs']}/log/" in task_log(platform, DEFERRABLE, run_id, "wait")
    platform.wait(lambda: finished(platform, DEFERRABLE, run_id), RUN_BOUND_SECONDS, f"{DEFERRABLE} finishes")


def test_a_worker_told_to_stop_finishes_its_task_and_takes_no_new_one(platform):
    """Scale-in as Kubernetes signals it: SIGTERM to the worker the ReplicaSet picks, here the busy one (the worst
    case: nothing steers the choice). Celery's warm shutdown stops taking tasks at once and finishes the running
    one within the grace period: it succeeds on its first try, and what is queued meanwhile runs on the other
    worker. The produced grace period (longestTaskSeconds + 60) is far above this task's 25 s."""
    first = platform.running_workers()[0]
    second = platform.start_worker()
    platform.wait(lambda: " ready." in platform.daemons.log_tail(second, 10**6), 120, "the second worker is ready")
    addresses = {platform.pods[name][1]: name for name in (first, second)}
    run_id = platform.api.trigger(SLOW)
    wait_until_running(platform, SLOW, run_id, "long_step")
    status, instance = platform.api.request("GET", f"/api/v2/dags/{SLOW}/dagRuns/{run_id}/taskInstances/long_step")
    busy = addresses[instance["hostname"]]
    [idle] = [name for name in (first, second) if name != busy]
    leaving = platform.daemons.processes.pop(busy)
    leaving.send_signal(signal.SIGTERM)
    others = [platform.api.trigger(QUICK) for _ in range(3)]
    for other in others:
        platform.wait(lambda other=other: finished(platform, QUICK, other), RUN_BOUND_SECONDS, f"{QUICK} runs")
        status, ran = platform.api.request("GET", f"/api/v2/dags/{QUICK}/dagRuns/{other}/taskInstances/only")
        assert (ran["state"], ran["try_number"], ran["hostname"]) == ("success", 1, platform.pods[idle][1]), ran
    platform.wait(lambda: finished(platform, SLOW, run_id), RUN_BOUND_SECONDS, f"{SLOW} finishes")
    assert platform.api.run_state(SLOW, run_id) == "success", platform.api.task_states(SLOW, run_id)
    status, instance = platform.api.request("GET", f"/api/v2/dags/{SLOW}/dagRuns/{run_id}/taskInstances/long_step")
    assert (instance["try_number"], instance["hostname"]) == (1, platform.pods[busy][1]), "finished where it began"
    assert leaving.wait(timeout=120) == 0, "the worker left once its task was done"
    assert "Task execute_workload" in platform.daemons.log_tail(busy, 10**6)


def replica_set_victim(pods: dict[str, str | None]) -> str:
    """The pod a ReplicaSet scaling in by one deletes first, of pods alike but for their deletion cost (all
    running, ready, on their own nodes): the lowest cost (kubernetes pkg/controller/controller_utils.go,
    ActivePodsWithRanks.Less; a pod without the annotation costs 0). Ties fall to the newest, i.e. the
    last started here."""
    order = list(pods)
    return min(order, key=lambda name: (int(pods[name] or 0), -order.index(name)))


def test_scale_in_stops_the_idle_worker_by_the_cost_the_workers_report(platform):
    """workerScaleInIdleFirst with the produced airflow_local_settings.py: each Celery worker writes whether it is
    busy into its own pod's deletion cost at the API server (here a stand-in that checks the token, over TLS
    with the service account's CA). With a long task on one worker, the ReplicaSet's choice is the other one,
    which, told to stop as Kubernetes does, leaves at once; the task finishes where it began, on its first try."""
    first = platform.running_workers()[0]
    second = platform.start_worker()
    platform.wait(lambda: " ready." in platform.daemons.log_tail(second, 10**6), 120, "the second worker is ready")
    platform.wait(lambda: platform.deletion_cost(first) == platform.deletion_cost(second) == "0", 60,
                  "both idle workers report a cost of 0")
    run_id = platform.api.trigger(SLOW)
    wait_until_running(platform, SLOW, run_id, "long_step")
    status, instance = platform.api.request("GET", f"/api/v2/dags/{SLOW}/dagRuns/{run_id}/taskInstances/long_step")
    addresses = {platform.pods[name][1]: name for name in (first, second)}
    busy = addresses[instance["hostname"]]
    [idle] = [name for name in (first, second) if name != busy]
    platform.wait(lambda: platform.deletion_cost(busy) == "1", 30, "the busy worker reports its running task")
    assert platform.deletion_cost(idle) == "0"
    assert replica_set_victim({name: platform.deletion_cost(name) for name in (first, second)}) == idle
    leaving = platform.daemons.processes.pop(idle)
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=120) == 0, "the idle worker left"
    assert platform.running_workers() == [busy]
    platform.wait(lambda: finished(platform, SLOW, run_id), RUN_BOUND_SECONDS, f"{SLOW} finishes")
    assert platform.api.run_state(SLOW, run_id) == "success", platform.api.task_states(SLOW, run_id)
    status, instance = platform.api.request("GET", f"/api/v2/dags/{SLOW}/dagRuns/{run_id}/taskInstances/long_step")
    assert (instance["try_number"], instance["hostname"]) == (1, platform.pods[busy][1]), "finished where it began"
    platform.wait(lambda: platform.deletion_cost(busy) == "0", 60, "the worker's cost falls back once it is idle")
    # Every call (of every worker this tier started) was a merge patch of that one annotation of a worker's pod.
    patched = {(pod, content_type, json.dumps(body, sort_keys=True)) for pod, content_type, body in
               platform.kube_api.patches}
    assert {pod for pod, _, _ in patched} <= {pod for pod, _ in platform.pods.values() if pod.startswith("airflow-worker-")}
    assert {content_type for _, content_type, _ in patched} == {"application/merge-patch+json"}
    assert {body for _, _, body in patched} <= {json.dumps({"metadata": {"annotations": {
        w.POD_DELETION_COST_ANNOTATION: str(cost)}}}, sort_keys=True) for cost in (0, 1)}


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        unavailable("libfaketime not found (apt-get install faketime)")
    return found[0]


def test_a_task_queued_longer_than_airflows_default_token_life_still_runs(platform):
    """The scheduler mints a task's execution API token when it queues it, and nothing renews it before the task
    starts (Airflow 3.1). Rather than leave a task queued that long, a second API server runs ahead (libfaketime)
    and a worker that calls the execution API through it starts the queued task: to that server the token is a
    minute short of the produced life old, far past Airflow's default (600 s), and it runs. Two minutes past the
    produced life, the same path refuses the token (403): the clock is what is tested."""
    library = libfaketime()
    life = int(configparser_from(platform.release["cfg"])["execution_api"]["jwt_expiration_time"])
    within, beyond = (life - 60) // 60, life // 60 + 2
    assert within * 60 > 600, life
    platform.stop(platform.running_workers())   # no worker: the task stays queued
    try:
        for minutes, outcome in ((beyond, "failed"), (within, "success")):
            port, server = _free_port(), f"api-server-{minutes}m-ahead"
            platform.daemons.start(server, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                   env=platform.confined("api-server", {
                                       **platform.api_server_env, "LD_PRELOAD": library, "FAKETIME": f"+{minutes}m",
                                       "FAKETIME_DONT_FAKE_MONOTONIC": "1"}))
            platform.wait(lambda port=port: _api_up(Api(port)), 120, f"the API server {minutes} minutes ahead answers")
            run_id = platform.api.trigger(QUICK)
            platform.wait(lambda run_id=run_id: platform.api.task_states(QUICK, run_id).get("only") == "queued", 60,
                          "the task is queued")
            worker = platform.start_worker(
                env={"AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"})
            try:
                platform.wait(lambda run_id=run_id: finished(platform, QUICK, run_id), RUN_BOUND_SECONDS,
                              f"{QUICK} ends, its token {minutes} minutes old")
                assert platform.api.run_state(QUICK, run_id) == outcome, (minutes,
                                                                          platform.api.task_states(QUICK, run_id))
                refusal = platform.daemons.log_tail(server, 10**6)
                if outcome == "failed":
                    # uvicorn's access line for the task's start, and the reason the execution API logs for it
                    assert '/run HTTP/1.1" 403' in refusal and "Signature has expired" in refusal, "refused for its token"
                else:
                    assert "Signature has expired" not in refusal
            finally:
                # a worker bound to a server hours ahead must never be left to the next test
                platform.stop([worker, server])
    finally:
        if not platform.running_workers():
            platform.start_worker()


def test_a_task_on_a_killed_worker_is_retried_within_the_bound_and_not_without_a_worker(platform):
    """SIGKILL the worker (and every process under it) while a task runs. With no worker, the run does not
    finish within the bound (the bound is real); with a new worker started at once, it does, counted from the
    kill. Bound: heartbeat timeout (20 s) + detection interval (3 s) + retry delay (2 s) + the task (25 s) + a
    worker's start, with margin."""
    try:
        first = platform.api.trigger(SLOW)
        wait_until_running(platform, SLOW, first, "long_step")
        [worker] = platform.running_workers()
        platform.kill(worker)
        deadline = time.monotonic() + WORKER_LOST_BOUND_SECONDS
        while time.monotonic() < deadline:
            assert platform.api.run_state(SLOW, first) != "success", "succeeded without any worker"
            time.sleep(5)
        assert platform.api.task_states(SLOW, first)["long_step"] in ("up_for_retry", "queued", "scheduled")
        platform.start_worker()
        platform.wait(lambda: finished(platform, SLOW, first), RUN_BOUND_SECONDS, f"{SLOW} finishes on a new worker")
        assert platform.api.run_state(SLOW, first) == "success", platform.api.task_states(SLOW, first)

        second = platform.api.trigger(SLOW)
        wait_until_running(platform, SLOW, second, "long_step")
        [worker] = platform.running_workers()
        killed = time.monotonic()
        platform.kill(worker)
        platform.start_worker()
        took = platform.wait(lambda: finished(platform, SLOW, second), WORKER_LOST_BOUND_SECONDS,
                             f"{SLOW} finishes within the bound after its worker was killed")
        assert platform.api.run_state(SLOW, second) == "success", platform.api.task_states(SLOW, second)
        print(f"\nworker killed mid-task: the run finished {time.monotonic() - killed:.0f}s after the kill "
              f"(bound {WORKER_LOST_BOUND_SECONDS}s; waited {took:.0f}s)")
    finally:
        if not platform.running_workers():
            platform.start_worker()


def test_a_run_survives_a_redis_restart_while_a_task_runs(platform):
    run_id = platform.api.trigger(SLOW)
    wait_until_running(platform, SLOW, run_id, "long_step")
    platform.servers.restart_redis()
    platform.wait(lambda: finished(platform, SLOW, run_id), RUN_BOUND_SECONDS,
                  f"{SLOW} finishes after Redis restarted")
    assert platform.api.run_state(SLOW, run_id) == "success", platform.api.task_states(SLOW, run_id)


def test_a_wrong_fernet_key_fails_with_a_clear_message(platform, airflow_bin):  # noqa: F811
    """Encrypted with the program's key, read with another: Fernet's InvalidToken, not data. (`connections
    get` hides it as "Connection not found"; listing shows the cause, which is what docs/testing.md tells.)"""
    added = airflow(airflow_bin, platform.env, "connections", "add", "fernet_probe", "--conn-type", "postgres",
                    "--conn-host", "db.internal", "--conn-password", "probe-secret")
    assert added.returncode == 0, added.stderr[-2000:]
    env = produced_env(platform.release, platform.servers, platform.home / "wrong-fernet", platform.ports,
                       fernet_key=Fernet.generate_key().decode())
    result = airflow(airflow_bin, env, "connections", "list", "--output", "json")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "cryptography.fernet.InvalidToken" in message, message[-3000:]
    assert "probe-secret" not in message
    print("\nwrong Fernet key:", next(line for line in message.splitlines() if "InvalidToken" in line))


def test_a_wrong_broker_password_fails_with_a_clear_message(platform, airflow_bin):  # noqa: F811
    env = produced_env(platform.release, platform.servers, platform.home / "wrong-broker", platform.ports,
                       broker_password="not-the-password", component="worker")
    worker = subprocess.Popen([str(airflow_bin), "celery", "worker", "--concurrency", "1",
                               "--celery-hostname", "wrong-broker@%h"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = worker.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        output, _ = worker.communicate(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert "invalid username-password pair" in output or "WRONGPASS" in output, output[-3000:]
    print("\nwrong broker password:", next(line for line in output.splitlines()
                                           if "invalid username-password pair" in line or "WRONGPASS" in line))


LINT_SCRIPT = """
import configparser, json, sys
from airflow.configuration import conf
from airflow.providers_manager import ProvidersManager
known = {(section, option) for section, body in conf.configuration_description.items()
         for option in body.get("options", {})}
for _, config in ProvidersManager().provider_configs:
    known |= {(section, option) for section, body in config.items() for option in body.get("options", {})}
cfg = configparser.ConfigParser(interpolation=None)
cfg.read(sys.argv[1])
print(json.dumps(sorted(f"[{s}] {o}" for s in cfg.sections() for o in cfg[s] if (s, o) not in known)))
"""


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_the_produced_configuration_passes_airflows_lint_and_names_only_options_airflow_knows(
        platform, airflow_bin, stack):  # noqa: F811
    """No option Airflow 3 removed, renamed or moved (lint also lists defaults that changed since Airflow 2,
    such as the executor's, set or not: notices, not findings), and no option Airflow and its installed
    providers do not know. The `local` release is checked against the same servers (same credentials)."""
    env = platform.env if stack == "prod" else produced_env(rendered_release("local"), platform.servers,
                                                            platform.home / "local-release", platform.ports)
    if stack == "local":
        checked = airflow(airflow_bin, env, "db", "check")
        assert checked.returncode == 0, checked.stderr[-2000:]
    linted = airflow(airflow_bin, env, "config", "lint")
    assert linted.returncode == 0, linted.stdout[-3000:] + linted.stderr[-3000:]
    findings = [line for line in linted.stdout.splitlines() if line.strip().startswith("- ")]
    assert "No issues found" in linted.stdout or findings, linted.stdout[-3000:]
    assert not [line for line in findings if any(word in line for word in ("moved", "removed", "renamed"))], \
        linted.stdout[-3000:]
    unknown = subprocess.run([str(airflow_bin.parent / "python"), "-c", LINT_SCRIPT, env["AIRFLOW_CONFIG"]],
                             env=env, capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 0, unknown.stderr[-3000:]
    assert json.loads(unknown.stdout.strip().splitlines()[-1]) == []


def cleanup_env(platform: Platform) -> dict[str, str]:
    """The database-cleanup container's environment as rendered, pointed at this tier's PgBouncer and files."""
    env = {"PATH": f"{platform.airflow_bin.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(platform.home)}
    for entry in platform.release["cleanup"]["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            reference = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = with_host_and_port(platform.release["secrets"][reference["name"]][reference["key"]],
                                                    "127.0.0.1", platform.servers.pgbouncer.port)
    # The chart's config mount, here the tier's copy of the same airflow.cfg and local settings.
    env.update({"AIRFLOW_HOME": str(platform.home), "AIRFLOW_CONFIG": platform.env["AIRFLOW_CONFIG"]})
    return env


def test_the_nightly_cleanup_deletes_old_history_keeps_the_recent_and_spares_a_running_dag(platform):
    """The CronJob's script as rendered, with its own environment (the URL as its one credential), under
    libfaketime: the clock is set so that the retention's cut-off falls between two runs of the same DAG. The older
    run and its task instances go (archived until the next cleanup, which drops the archive), the newer stays, and
    a run in progress while the cleanup works finishes successfully."""
    container = platform.release["cleanup"]
    retention = int(re.search(r"date -u -d '-(\d+) days'", container["args"][-1]).group(1))
    old = platform.api.trigger(QUICK)
    platform.wait(lambda: finished(platform, QUICK, old), RUN_BOUND_SECONDS, f"the older {QUICK} run ends")
    time.sleep(3)
    cutoff = int(time.time())
    time.sleep(3)
    running = platform.api.trigger(SLOW)
    wait_until_running(platform, SLOW, running, "long_step")
    recent = platform.api.trigger(QUICK)
    platform.wait(lambda: finished(platform, QUICK, recent), RUN_BOUND_SECONDS, f"the newer {QUICK} run ends")
    assert platform.api.task_states(SLOW, running)["long_step"] == "running", "the cleanup must meet a running task"

    def clean() -> subprocess.CompletedProcess:
        # `@`: every process of the script starts its clock there, so the cut-off the script computes is the same
        # however long its first command takes.
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cutoff + retention * 86400))
        env = {**cleanup_env(platform), "LD_PRELOAD": libfaketime(), "FAKETIME": f"@{start}", "TZ": "UTC",
               "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        return subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True, text=True,
                              timeout=300)

    cleaned = clean()
    assert cleaned.returncode == 0, cleaned.stdout[-3000:] + cleaned.stderr[-3000:]
    assert platform.api.request("GET", f"/api/v2/dags/{QUICK}/dagRuns/{old}")[0] == 404, "the older run is gone"
    assert platform.api.request("GET", f"/api/v2/dags/{QUICK}/dagRuns/{recent}")[0] == 200, "the newer run stays"
    assert _query(platform.metadata, "select count(*) from task_instance where run_id = %s", old)[0][0] == 0
    assert _query(platform.metadata, "select count(*) from task_instance where run_id = %s", recent)[0][0] == 1
    archives = [name for (name,) in _query(platform.metadata, "select tablename from pg_tables "
                                                             "where starts_with(tablename, '_airflow_deleted__dag_run__')")]
    assert len(archives) == 1 and _query(platform.metadata, f'select count(*) from "{archives[0]}" where run_id = %s',
                                         old)[0][0] == 1, "what was deleted is kept until the next cleanup"
    platform.wait(lambda: finished(platform, SLOW, running), RUN_BOUND_SECONDS, f"{SLOW} finishes")
    assert platform.api.run_state(SLOW, running) == "success", platform.api.task_states(SLOW, running)

    again = clean()
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not _query(platform.metadata, "select 1 from pg_tables where tablename = %s", archives[0]), \
        "the next cleanup drops the previous archive"
    assert platform.api.request("GET", f"/api/v2/dags/{QUICK}/dagRuns/{recent}")[0] == 200


def test_keda_counts_the_queue_through_its_own_role_which_reads_nothing_else(platform):
    """KEDA's query as the chart renders it in the ScaledObject, with the URL the worker hands KEDA
    (AIRFLOW_CONN_AIRFLOW_DB, through PgBouncer): it runs, because the migration Job granted the role SELECT on
    task_instance; the same role can read no other table (connections, variables) and write nothing."""
    [scaled_object] = [d for d in platform.release["documents"] if d["kind"] == "ScaledObject"]
    [trigger] = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "postgresql" and trigger["metadata"]["connectionFromEnv"] == "AIRFLOW_CONN_AIRFLOW_DB"
    url = platform.worker_env["AIRFLOW_CONN_AIRFLOW_DB"]
    assert urlsplit(url).username == w.POSTGRES_KEDA_USER
    [(load,)] = _query(url, trigger["metadata"]["query"])
    assert load is not None and load >= 0
    for statement in ("select * from connection", "select * from variable", "select * from dag_run",
                      "update task_instance set state = 'failed'", "delete from task_instance"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            _query(url, statement)
