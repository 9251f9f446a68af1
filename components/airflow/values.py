"""The Airflow chart's values, section by section, and KEDA's: everything AirflowRelease decides about the release.
Only Secret names (and a digest of the secrets) go in here, never a secret value."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi

from components import workloads as w
from components.airflow.settings import AirflowSettings
from components.handles import (
    AirflowSecrets,
    BrokerHandle,
    DatabaseHandle,
    StorageHandle,
    WorkerNodes,
)
from components.helm import pinned
from components.pods import NOBODY, NONROOT_UID, container_security_context, millicores, pod_security_context, resources
from components.secrets_backend import airflow_secrets_config

AIRFLOW_CHARTS = "https://airflow.apache.org"
KEDA_CHARTS = "https://kedacore.github.io/charts"
API_SERVER_SERVICE = f"{w.AIRFLOW_RELEASE}-api-server"
HEALTH_CHECK_PATH = "/api/v2/monitor/health"
# Airflow's image runs as uid 50000 with gid 0; every pod also meets Pod Security `restricted`.
POD_SECURITY_CONTEXT = pod_security_context(50000, gid=0, fs_group=0)
CONTAINER_SECURITY_CONTEXT = container_security_context()
# Airflow's containers (init containers and sidecars too) write only to /tmp, their logs directory and
# (git-sync) the DAGs volume: all three are emptyDirs or claims, so the image itself is mounted read-only.
READ_ONLY_CONTAINER_SECURITY_CONTEXT = container_security_context(read_only_root=True)
# The platform's Secrets, as files, in every Airflow container (and nothing else of them in its environment).
SECRETS_DIR = w.SECRETS_DIR
# No size limit: past one the kubelet evicts the pod at once, and a worker's running tasks (their temporary
# files and virtualenvs) would all die with it; node disk pressure is the bound.
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
# Caches of task virtualenvs and package managers go to /tmp: the home directory is on the read-only image.
WRITABLE_CACHE_ENV = [{"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
                      {"name": "PIP_CACHE_DIR", "value": "/tmp/.cache/pip"},
                      {"name": "UV_CACHE_DIR", "value": "/tmp/.cache/uv"}]
# The chart's built-in environment variables that would carry a credential; each is read through its `_CMD`
# option from SECRETS_DIR instead (AIRFLOW_CONN_AIRFLOW_DB is not used by Airflow itself: the worker gets it
# back for KEDA, see airflow_values).
BUILT_IN_SECRET_ENV = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CORE__SQL_ALCHEMY_CONN",
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_AIRFLOW_DB", "AIRFLOW__API__SECRET_KEY",
                       "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CELERY__BROKER_URL")


# Airflow's probes run the `airflow` CLI, which spends 2-3 CPU-seconds importing Airflow: with at least one
# CPU of limit a probe ends in about 3 s, well inside its 20 s timeout, even while the process it checks is busy.
AIRFLOW_MIN_CPU_LIMIT = 1000


def airflow_resources(cpu: str, memory: str, cpu_limit: Optional[str] = None) -> dict:
    """Resources of a container that runs Airflow (and its CLI probes)."""
    limit = cpu_limit or f"{max(2 * millicores(cpu), AIRFLOW_MIN_CPU_LIMIT)}m"
    return resources(cpu, memory, cpu_limit=limit)


def zone_spread(component: str) -> list[dict]:
    return [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": w.airflow_component(component)}}]


def pdb() -> dict:
    return {"enabled": True, "config": {"maxUnavailable": 1}}


def log_groomer(remote_logging: bool) -> dict:
    """With remote logging Airflow uploads each task log and deletes it locally: nothing is left to groom."""
    if remote_logging:
        return {"enabled": False}
    return {"resources": resources("20m", "64Mi")}


# The chart's (1.19.0) image tags, repeated so a digest can be pinned next to them (a test keeps them equal).
# renovate: datasource=docker depName=quay.io/prometheus/statsd-exporter
STATSD_IMAGE_TAG = "v0.28.0"
# renovate: datasource=docker depName=registry.k8s.io/git-sync/git-sync
GIT_SYNC_IMAGE_TAG = "v4.4.2"
# The user git-sync's image has in /etc/passwd (the chart's gitSync.uid).
GIT_SYNC_UID = 65533


# Options the chart's default `config:` still renders where Airflow 3 no longer reads them (`airflow config
# lint`: moved to [metrics] and [fab], which the chart also sets), options Airflow 3 does not know, and the
# sections of executors and log backends this platform does not run: removed from the release's airflow.cfg.
REMOVED_CHART_DEFAULTS = {"config": {
    "scheduler": {"statsd_on": None, "statsd_host": None, "statsd_port": None, "statsd_prefix": None,
                  "run_duration": None, "standalone_dag_processor": None},
    "webserver": None,
    "core": {"colored_console_log": None, "remote_logging": None},
    "kubernetes": None, "kubernetes_executor": None, "celery_kubernetes_executor": None, "kerberos": None,
    "elasticsearch": None, "elasticsearch_configs": None,
}}


# How often a scheduler looks for tasks queued longer than task_queued_timeout (Airflow's default, set explicitly
# because the token life depends on it).
TASK_QUEUED_TIMEOUT_CHECK_SECONDS = 120
# When a scheduler counts as dead, and how often another adopts its queued tasks (Airflow's defaults, set
# explicitly for the same reason).
SCHEDULER_HEALTH_CHECK_THRESHOLD_SECONDS = 30
ORPHANED_TASKS_CHECK_SECONDS = 300
# How Airflow names the host a task runs on (ti.hostname, and the triggerer's job): the pod's IP, socket.gethostbyname
# of its name, which kubelet writes into the pod's /etc/hosts (airflow/utils/net.py; the Task SDK reads
# [core] hostname_callable too, sdk/api/client.py get_hostname).
HOSTNAME_CALLABLE = "airflow.utils.net.get_host_ip_address"

# Processes a scheduler's Celery executor sends tasks from ([celery] sync_parallelism): 1 sends in the scheduler.
CELERY_SEND_PROCESSES = 1


# [dag_processor] parsing_processes, and the DAG processor's CPU limit in cores.
DAG_PARSING_PROCESSES = 2


# asyncpg names its prepared statements unless its statement cache is off; named statements break behind
# PgBouncer in transaction mode unless PgBouncer tracks them (1.21+, max_prepared_statements). Unnamed ones
# work with any PgBouncer. Airflow takes async connect args only from an importable object, so the chart's
# airflow_local_settings.py ($AIRFLOW_HOME/config, on sys.path) holds them. Where the pooler's CA is in the pod
# (a managed database's PgBouncer), they also make asyncpg verify its certificate and name: asyncpg takes no
# CA file in the URL, and PGSSLROOTCERT would break every other stack (asyncpg fails on a missing file).
ASYNC_CONNECT_ARGS_OBJECT = "airflow_local_settings.ASYNC_CONNECT_ARGS"
AIRFLOW_LOCAL_SETTINGS = (
    '# Written by the platform (AirflowRelease): connect args of the async engine.\n'
    'import os\n'
    'import ssl\n'
    '\n'
    'ASYNC_CONNECT_ARGS = {"statement_cache_size": 0}\n'
    '# Verify as the metadata URL asks: with the CA file it names (a managed database\'s PgBouncer).\n'
    f'_URL_FILE = "{SECRETS_DIR}/airflow__database__sql_alchemy_conn"\n'
    f'if os.path.exists(_URL_FILE) and "sslrootcert={w.METADATA_CA_FILE}" in open(_URL_FILE).read():\n'
    f'    ASYNC_CONNECT_ARGS["ssl"] = ssl.create_default_context(cafile="{w.METADATA_CA_FILE}")\n')
# Each worker's reporter of its running tasks as its pod's deletion cost (workerScaleInIdleFirst); inert in every
# other process (the file says how).
WORKER_DELETION_COST_CODE = (Path(__file__).parent.parent / "pod_code" / "worker_deletion_cost.py").read_text()


def airflow_local_settings(settings: AirflowSettings) -> str:
    """The chart's airflow_local_settings.py: the async engine's connect args, and the workers' deletion cost."""
    if not settings.worker_scale_in_idle_first:
        return AIRFLOW_LOCAL_SETTINGS
    return f"{AIRFLOW_LOCAL_SETTINGS}\n\n# --- components/pod_code/worker_deletion_cost.py ---\n{WORKER_DELETION_COST_CODE}"


# The pod a service-account token is bound to, in the user's `extra` of every request made with it
# (k8s.io/apiserver pkg/authentication/serviceaccount/util.go, PodNameKey).
TOKEN_POD_NAME = "authentication.kubernetes.io/pod-name"
WORKER_DELETION_COST_ACCESS = "airflow-worker-deletion-cost"


def _unchanged(field: str) -> str:
    """CEL: a metadata field the update leaves as it was (present in both, equal, or absent in both)."""
    return (f"has(object.metadata.{field}) == has(oldObject.metadata.{field}) && "
            f"(!has(object.metadata.{field}) || object.metadata.{field} == oldObject.metadata.{field})")


def worker_deletion_cost_access(settings: AirflowSettings) -> dict[str, dict]:
    """What the workers may do with their token, as Kubernetes objects (kind -> manifest without apiVersion): a
    Role that may patch pods, and an admission policy that lets the workers' ServiceAccount change only the
    deletion cost of the pod its token is bound to (with kubernetesPodOperator, also the pods its tasks
    launched, which the chart's own Role lets it patch). RBAC cannot name the pod: its names are random."""
    account = f"system:serviceaccount:{w.AIRFLOW_NAMESPACE}:{w.AIRFLOW_WORKER_SERVICE_ACCOUNT}"
    own_pod = (f"'{TOKEN_POD_NAME}' in request.userInfo.extra && "
               f"request.userInfo.extra['{TOKEN_POD_NAME}'] == [object.metadata.name]")
    cost = w.POD_DELETION_COST_ANNOTATION
    only_the_cost = " && ".join(f"({condition})" for condition in [
        "object.spec == oldObject.spec",
        *(_unchanged(field) for field in ("labels", "ownerReferences", "finalizers")),
        f"has(object.metadata.annotations) && object.metadata.annotations.all(key, key == '{cost}' || "
        "(has(oldObject.metadata.annotations) && key in oldObject.metadata.annotations && "
        "oldObject.metadata.annotations[key] == object.metadata.annotations[key]))",
        f"!has(oldObject.metadata.annotations) || oldObject.metadata.annotations.all(key, key == '{cost}' || "
        "key in object.metadata.annotations)",
        f"!('{cost}' in object.metadata.annotations) || "
        f"object.metadata.annotations['{cost}'].matches('^[0-9]{{1,4}}$')"])
    launched_pod = " || ".join(
        f"(has(oldObject.metadata.labels) && '{key}' in oldObject.metadata.labels && "
        f"oldObject.metadata.labels['{key}'] == '{value}')"
        for key, value in w.KUBERNETES_POD_OPERATOR_PODS.items()) if settings.kubernetes_pod_operator else "false"
    policy = {
        "metadata": {"name": WORKER_DELETION_COST_ACCESS},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.AIRFLOW_NAMESPACE}},
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                   "resources": ["pods"]}]},
            "matchConditions": [{"name": "workers-service-account",
                                 "expression": f"request.userInfo.username == '{account}'"}],
            "variables": [{"name": "ownPod", "expression": own_pod},
                          {"name": "launchedPod", "expression": launched_pod}],
            "validations": [
                {"expression": "variables.ownPod || variables.launchedPod",
                 "message": "a worker may change only its own pod (or, with kubernetesPodOperator, its tasks' pods)"},
                {"expression": f"!variables.ownPod || ({only_the_cost})",
                 "message": f"a worker may change only {cost} of its own pod, to a number of running tasks"}],
        },
    }
    return {
        "ValidatingAdmissionPolicy": policy,
        "ValidatingAdmissionPolicyBinding": {
            "metadata": {"name": WORKER_DELETION_COST_ACCESS},
            "spec": {"policyName": WORKER_DELETION_COST_ACCESS, "validationActions": ["Deny"]}},
        "Role": {
            "metadata": {"name": WORKER_DELETION_COST_ACCESS, "namespace": w.AIRFLOW_NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]},
        "RoleBinding": {
            "metadata": {"name": WORKER_DELETION_COST_ACCESS, "namespace": w.AIRFLOW_NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKER_DELETION_COST_ACCESS},
            "subjects": [{"kind": "ServiceAccount", "name": w.AIRFLOW_WORKER_SERVICE_ACCOUNT,
                          "namespace": w.AIRFLOW_NAMESPACE}]},
    }


# The chart's components that run as Deployments (or StatefulSets) and read the platform's Secrets.
LONG_RUNNING_COMPONENTS = ("scheduler", "workers", "apiServer", "triggerer", "dagProcessor", "flower")
# Every component that reads them (the Jobs too).
SECRET_READERS = (*LONG_RUNNING_COMPONENTS, "migrateDatabaseJob", "createUserJob")

# What a Celery worker of Airflow 3 reads of the platform's Secrets: the broker's URL (its tasks), the database's
# as the workers' own role (Celery's task results: [celery] result_backend defaults to the worker's URL, see the
# docs/security.md; WORKER_DATABASE_KEYS), and the key its log server checks the API server's requests with (serve_logs). Its tasks get connections and variables through the API
# server with the token the scheduler signs, so it has neither the Fernet key nor the JWT secret (which signs any
# user's API token); their `_CMD` options stay in the chart's shared env and fail if read (conf.mask_secrets
# logs it and goes on).
WORKER_SECRET_OPTIONS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
                         "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL")
# The workers' metadata URLs name the workers' role, which may write Celery's results (held to plain data) and read
# the schema's version (the entrypoint's `airflow db check`, the init container's `airflow db check-migrations`).
WORKER_DATABASE_KEYS = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": w.WORKER_CONNECTION_KEY,
                        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": w.WORKER_ASYNC_CONNECTION_KEY}


def secret_sources(files: list[tuple[str, pulumi.Input[str], str]]) -> list[dict]:
    """Items of the platform's Secret volume: each option's file from its Secret's key."""
    return [{"secret": {"name": secret, "items": [{"key": key, "path": option.lower()}]}}
            for option, secret, key in files]


def platform_secrets_volume(sources: list[dict]) -> dict:
    return {"name": "platform-secrets", "projected": {
        "defaultMode": 0o440,  # owner and group (Airflow's gid 0 through fsGroup), nobody else
        "sources": sources}}


# statsd_exporter (v0.28.0, the chart's) mappings appended to the chart's own, for what Airflow 3.1 really
# sends (tests/e2e/test_metrics_e2e.py runs Airflow and checks every name the alerts and dashboards use). The
# chart's mappings were written for Airflow 2: Airflow 3 sends pool.{queued,running,deferred,scheduled}_slots
# per pool, per-triggerer gauges whose host name may hold dots, one-field dagrun.dependency-check, and the
# executor gauges without the executor's name. Globs are tried before regexes, and a glob whose whole path is
# a prefix of a chart glob never matches (statsd_exporter pkg/mapper/fsm), hence the anchored regexes.
# Airflow also sends most metrics once more without the values in the name (plain statsd drops the tags):
# that copy would land unlabelled under the labelled series' name and hold whichever pool, DAG or host
# reported last, so it is dropped where a labelled twin exists.
STATSD_EXTRA_MAPPINGS = [
    {"match": "airflow.pool.queued_slots.*", "name": "airflow_pool_queued_slots", "labels": {"pool": "$1"}},
    {"match": "airflow.pool.running_slots.*", "name": "airflow_pool_running_slots", "labels": {"pool": "$1"}},
    {"match": "airflow.pool.deferred_slots.*", "name": "airflow_pool_deferred_slots", "labels": {"pool": "$1"}},
    {"match": "airflow.pool.scheduled_slots.*", "name": "airflow_pool_scheduled_slots", "labels": {"pool": "$1"}},
    {"match": "^airflow\\.triggerer\\.capacity_left\\.(.+)$", "match_type": "regex", "name": "airflow_triggerer_capacity_left", "labels": {"hostname": "$1"}, "ttl": "10m"},
    {"match": "^airflow\\.triggers\\.running\\.(.+)$", "match_type": "regex", "name": "airflow_triggers_running", "labels": {"hostname": "$1"}, "ttl": "10m"},
    {"match": "^airflow\\.dagrun\\.dependency-check\\.([^.]+)$", "match_type": "regex", "name": "airflow_dagrun_dependency_check", "labels": {"dag_id": "$1"}},
    {"match": "airflow.dagrun.*.first_task_scheduling_delay", "name": "airflow_dagrun_first_task_scheduling_delay", "labels": {"dag_id": "$1"}},
    {"match": "airflow.dag.*.*.scheduled_duration", "name": "airflow_task_scheduled_duration", "labels": {"dag_id": "$1", "task_id": "$2"}},
    {"match": "^airflow\\.task_instance_created_(.+)$", "match_type": "regex", "name": "airflow_task_instance_created", "labels": {"task_type": "$1"}},
    {"match": "^airflow\\.executor\\.(open_slots|queued_tasks|running_tasks)$", "match_type": "regex", "name": "airflow_executor_$1", "labels": {"executor": "CeleryExecutor"}},
    {"match": "^airflow\\.pool\\.(open_slots|queued_slots|running_slots|deferred_slots|scheduled_slots|starving_tasks)$", "match_type": "regex", "action": "drop", "name": "dropped"},
    {"match": "^airflow\\.(triggerer\\.capacity_left|triggers\\.running|ti\\.running|task\\.duration|task\\.scheduled_duration|dagrun\\.schedule_delay|dagrun\\.dependency-check|dagrun\\.first_task_scheduling_delay|task_instance_created|operator_failures|operator_successes)$", "match_type": "regex", "action": "drop", "name": "dropped"},
]


WORKER_SCALE_IN_PERIOD_SECONDS = 60


def worker_slots(settings: AirflowSettings) -> int:
    """Tasks the most workers KEDA runs can run at once."""
    return settings.worker_concurrency * settings.worker_max_replicas


def parallelism_per_scheduler(settings: AirflowSettings) -> int:
    """[core] parallelism is each scheduler's own ceiling (scheduler_job_runner.py: it caps what this
    scheduler's executor holds): the schedulers together may queue what the most workers KEDA runs can take."""
    return math.ceil(worker_slots(settings) / settings.scheduler_replicas)


def execution_token_seconds(settings: AirflowSettings) -> int:
    """[execution_api] jwt_expiration_time. The scheduler mints a task's token when it queues it and nothing
    renews it before the task starts (Airflow 3.1; a running task's token is reissued as it nears its end). A
    task still queued after task_queued_timeout is queued again, with a new token, at its scheduler's next check.
    Only the scheduler that queued it checks: if that one stops (a rolling upgrade, a crash), another adopts the
    task once it is seen dead and at its next orphan check, keeping the task's queued time. The token must outlive
    the longest of these paths and a worker's start."""
    return (settings.task_queued_timeout_seconds + SCHEDULER_HEALTH_CHECK_THRESHOLD_SECONDS
            + ORPHANED_TASKS_CHECK_SECONDS + TASK_QUEUED_TIMEOUT_CHECK_SECONDS + 60)


# Nightly, off the hour. The tables `airflow db clean` knows in Airflow 3.1 that grow with runs, and FAB's login
# sessions (`session`, which it cleans with the FAB auth manager and skips otherwise). Not `dag` and
# `dag_version`: cleaning those fails there (apache/airflow#63703), and they grow only with DAGs and their
# versions. Not `trigger`: the triggerer removes unused triggers itself, so an old one is still in use (an asset
# watcher's, or a deadline's, whose foreign key would fail the run). Not `_xcom_archive`, Airflow 2's XComs kept by
# the 3.0 migration: drop-archived drops it whatever the tables (docs/operations.md).
DATABASE_CLEANUP_SCHEDULE = "17 3 * * *"
CLEANED_TABLES = ("asset_event", "callback_request", "celery_taskmeta", "celery_tasksetmeta", "dag_run", "deadline",
                  "import_error", "job", "log", "session", "sla_miss", "task_instance", "task_instance_history",
                  "task_reschedule", "xcom")


# The migration Job's command: `$1` the default pool's slots, `$2` GRANT_ROLES.
MIGRATE_SCRIPT = 'airflow db migrate && airflow pools set default_pool "$1" "Default pool" && exec python -c "$2"'
# What a pickle of plain data is made of (Python's pickletools opcodes, protocols 2-5): scalars, strings, bytes,
# tuples, lists, dicts, sets, the memo (appended to with MEMOIZE and read; never put at an index, which makes the
# unpickler allocate up to that index) and frames; never a global, a call or a persistent id, which is how a pickle
# runs code when it is loaded. Celery keeps each task's result pickled (celery/backends/database/models.py:
# `result = sa.Column(PickleType)`, protocol 5) and the scheduler unpickles the rows it reads for the tasks' states,
# so the workers' role may only store results this check admits (Airflow's are None, Celery's started and exception
# dicts of strings and numbers), of at most PICKLED_RESULT_MAX_BYTES (which also bounds how deep a tuple can nest
# for the unpickler's hashing, and the check's own work). Opcode: bytes of argument, or -N for a length of N bytes
# before the data.
PICKLED_RESULT_MAX_BYTES = 16384
PICKLE_PLAIN_OPCODES = {
    **dict.fromkeys(b".N\x88\x89}])\x8ft\x85\x86\x87(suae\x90\x91\x94012", 0),
    **dict.fromkeys(b"\x80Kh", 1), ord("M"): 2, **dict.fromkeys(b"Jj", 4), **dict.fromkeys(b"G\x95", 8),
    **dict.fromkeys(b"\x8cC\x8a", -1), **dict.fromkeys(b"XB\x8b", -4), **dict.fromkeys(b"\x8d\x8e", -8),
}
CELERY_RESULT_GUARD_SQL = f"""
SET LOCAL lock_timeout = '30s';
DO $revoke$ BEGIN
  -- PostgreSQL 14 lets every role create in `public` (15 and later: its owner only).
  REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'public: CREATE stays as it is (not its owner)';
END $revoke$;
CREATE OR REPLACE FUNCTION celery_result_is_plain_data(data bytea) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT
-- Names resolve in the catalog only, never in a schema the writing session puts first.
SET search_path = pg_catalog, pg_temp AS $guard$
DECLARE
  widths constant integer[] := ARRAY[{", ".join(str(PICKLE_PLAIN_OPCODES.get(opcode, 99)) for opcode in range(256))}];
  total constant bigint := length(data);
  position bigint := 0;
  opcode integer;
  width integer;
  size bigint;
BEGIN
  IF total > {PICKLED_RESULT_MAX_BYTES} THEN
    RETURN false;
  END IF;
  WHILE position < total LOOP
    opcode := get_byte(data, position::integer);
    width := widths[opcode + 1];
    IF opcode = 46 THEN  -- STOP: the last byte
      RETURN position + 1 = total;
    END IF;
    position := position + 1;
    IF width = 99 THEN
      RETURN false;
    ELSIF width >= 0 THEN
      position := position + width;
    ELSE
      IF position - width > total THEN
        RETURN false;
      END IF;
      size := 0;
      FOR i IN REVERSE (-width - 1)..0 LOOP
        size := size * 256 + get_byte(data, (position + i)::integer);
      END LOOP;
      position := position - width + size;
    END IF;
  END LOOP;
  RETURN false;
END
$guard$;
-- Once: a replaced function keeps its identity, and the constraint then checks with the new body.
DO $constraint$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'celery_result_is_plain_data'
                 AND conrelid = 'celery_taskmeta'::regclass) THEN
    ALTER TABLE celery_taskmeta ADD CONSTRAINT celery_result_is_plain_data
      CHECK (celery_result_is_plain_data(result)) NOT VALID;
  END IF;
END $constraint$;
"""
# Run by the migration Job as the owner. KEDA's and the workers' roles are made by CloudNativePG (managed roles,
# reconciled once the primary runs) or by the managed database's bootstrap Job: wait for them rather than fail a
# first install. Celery's result tables are made here, with Celery's own models, as its database backend would on
# first use, which the workers' role (no CREATE on the schema) cannot; then the guard above, and the workers may
# store results and read the schema's version tables (alembic_version, and each provider's), which their start-up
# checks compare. Nothing on celery_tasksetmeta (groups: Airflow has none).
GRANT_ROLES = f"""
import time
from celery.backends.database.models import ResultModelBase, Task
from sqlalchemy import Sequence, inspect, text
from airflow import settings
ResultModelBase.metadata.create_all(settings.engine)
sequences = [column.default.name for column in Task.__table__.columns if isinstance(column.default, Sequence)]
version_tables = [name for name in inspect(settings.engine).get_table_names() if name.startswith("alembic_version")]
with settings.engine.begin() as connection:
    connection.exec_driver_sql({CELERY_RESULT_GUARD_SQL!r})
grants = {{"{w.POSTGRES_KEDA_USER}": ["GRANT SELECT ON task_instance TO {w.POSTGRES_KEDA_USER}"],
          "{w.POSTGRES_WORKER_USER}": [
              f"GRANT SELECT, INSERT, UPDATE ON {{Task.__tablename__}} TO {w.POSTGRES_WORKER_USER}",
              f"GRANT USAGE ON SEQUENCE {{', '.join(sequences)}} TO {w.POSTGRES_WORKER_USER}",
              f"GRANT SELECT ON {{', '.join(version_tables)}} TO {w.POSTGRES_WORKER_USER}"]}}
for attempt in range(60):
    with settings.engine.begin() as connection:
        for role in [role for role in grants if connection.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {{"role": role}}).first()]:
            for statement in grants.pop(role):
                connection.execute(text(statement))
            print(role, "granted")
    if not grants:
        break
    time.sleep(5)
else:
    raise SystemExit(f"no role {{', '.join(grants)}} after 5 minutes: KEDA could not count the queue, or the workers "
                     "could not store results")
"""


def database_cleanup_script(retention_days: int) -> str:
    """Drop what the previous run archived, then delete what is older than the retention, archiving it: the
    last night's deletions stay in `_airflow_deleted__<table>__<time>` tables for a day, so a mistaken retention
    can be undone, and the database does not keep them forever (the chart's default archives without end)."""
    tables = ",".join(CLEANED_TABLES)
    return ("set -euo pipefail; "
            f"airflow db drop-archived --tables {tables} --yes; "
            f"before=\"$(date -u -d '-{retention_days} days' '+%Y-%m-%dT%H:%M:%S+00:00')\"; "
            f"exec airflow db clean --clean-before-timestamp \"$before\" --tables {tables} --yes --verbose")


def database_cleanup_values(settings: AirflowSettings, metadata_secret: pulumi.Input[str]) -> dict:
    """The chart's database-cleanup CronJob. Its pod takes no volume of its own in chart 1.19, so the owner's URL
    comes as an environment variable, from the metadata Secret's cleanup key, which names no CA file (with a
    managed engine it requires TLS to the chart's PgBouncer without verifying it). No custom env: the other
    credentials' `_CMD` options would read files this pod does not have. `--verbose` prints counts per table,
    never rows."""
    return {
        "enabled": True,
        "schedule": DATABASE_CLEANUP_SCHEDULE,
        "applyCustomEnv": False,
        "env": [*WRITABLE_CACHE_ENV,
                {"name": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "valueFrom": {"secretKeyRef": {"name": metadata_secret, "key": w.CLEANUP_CONNECTION_KEY}}}],
        "command": ["bash"],
        "args": ["-c", database_cleanup_script(settings.database_cleanup_retention_days)],
        "resources": airflow_resources("200m", "512Mi"),
        "serviceAccount": {"automountServiceAccountToken": False},
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
    }


def keda_cooldown_seconds(settings: AirflowSettings) -> int:
    """KEDA's cooldown, which applies only to the last step, to zero workers (workerMinReplicas 0): longer than a
    worker's grace period. Every other step down is the HPA's (worker_scale_down)."""
    return settings.worker_grace_seconds + 60


def worker_scale_down(settings: AirflowSettings) -> dict:
    """The workers' HPA scale-down (KEDA `advanced.horizontalPodAutoscalerConfig.behavior`). Its default (a 300 s
    window, then up to 100 % of the pods every 15 s) stops most workers at once after a short lull. Here the
    queue must have been low for the whole window, and the workers go one a minute, each with its own grace
    period to finish what it runs (draining them one after another would take hours and gain nothing)."""
    return {"stabilizationWindowSeconds": settings.worker_scale_in_window_seconds, "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": WORKER_SCALE_IN_PERIOD_SECONDS}]}


@dataclass(frozen=True)
class ReleaseInputs:
    """What the chart's values take from the other components: names, never a secret value."""
    workers: WorkerNodes
    secrets: AirflowSecrets
    storage: StorageHandle
    database: DatabaseHandle
    broker: BrokerHandle
    # A digest of every secret the pods read: they roll when one is rotated.
    secrets_checksum: pulumi.Output[str]
    # Set: the Secrets Manager backend, under this prefix.
    secrets_prefix: Optional[str] = None


def airflow_values(settings: AirflowSettings, inputs: ReleaseInputs) -> dict:
    """The chart's values. `inputs.secrets_prefix` turns on the Secrets Manager backend; the database's chart values
    (its PgBouncer, with a managed engine) are merged last."""
    secret_files = _secret_files(inputs)
    secret_commands = [{"name": f"{option}_CMD", "value": f"cat {SECRETS_DIR}/{option.lower()}"}
                       for option, _, _ in secret_files]
    remote_logging = inputs.storage.logs_bucket_name is not None
    values: dict = {
        **_global_values(settings, inputs, secret_commands, remote_logging),
        "config": _config(settings, remote_logging),
        **_job_values(settings, inputs, secret_commands),
        **_component_values(settings, inputs, remote_logging),
        "dags": _dags(settings, inputs),
        "logs": {} if remote_logging else {"persistence": {"enabled": True,
                                                           "existingClaim": inputs.storage.logs_claim_name}},
    }
    _mount_secrets(values, secret_files)
    _service_accounts(values, settings)
    # The chart rolls its pods only for Secrets it renders itself; these are Pulumi's. A rotated key,
    # password or URL changes the digest, and with it the long-running Airflow pods. Not on the
    # migration and create-user Jobs (airflowPodAnnotations would reach them): a Job's pod template is
    # immutable, so an upgrade within their TTL would fail; they read the Secrets when they start.
    for component in LONG_RUNNING_COMPONENTS:
        values[component]["podAnnotations"] = {"checksum/platform-secrets": inputs.secrets_checksum}
    if settings.is_aws:
        _place(values, settings, inputs.workers)
        for component in ("scheduler", "apiServer", "triggerer", "dagProcessor"):
            values[component]["replicas"] = max(values[component]["replicas"], 2)
    if inputs.storage.logs_bucket_name is not None:
        values["config"]["logging"].update({
            "remote_base_log_folder": pulumi.Output.concat("s3://", inputs.storage.logs_bucket_name, "/logs"),
            "remote_log_conn_id": "aws_default",
            "delete_local_logs": "True",
        })
    if inputs.secrets_prefix is not None:
        values["config"]["secrets"] = airflow_secrets_config(inputs.secrets_prefix, settings.region)
    if settings.database_cleanup_retention_days:
        values["databaseCleanup"] = database_cleanup_values(settings, inputs.database.connection_secret_name)
    return deep_merge(values, inputs.database.airflow_chart_values)


def _secret_files(inputs: ReleaseInputs) -> list[tuple[str, pulumi.Input[str], str]]:
    """Each credential as a file of one projected volume, read by Airflow through the option's `_CMD` twin:
    (option, Secret, key)."""
    metadata_secret = inputs.database.connection_secret_name
    return [
        ("AIRFLOW__CORE__FERNET_KEY", inputs.secrets.fernet_key_secret_name, "fernet-key"),
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", metadata_secret, "connection"),
        # Airflow would derive its async URL from the sync one, `sslmode` included, which asyncpg refuses.
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", metadata_secret, w.ASYNC_CONNECTION_KEY),
        ("AIRFLOW__API__SECRET_KEY", inputs.secrets.api_secret_key_secret_name, "api-secret-key"),
        ("AIRFLOW__API_AUTH__JWT_SECRET", inputs.secrets.jwt_secret_name, "jwt-secret"),
        ("AIRFLOW__CELERY__BROKER_URL", inputs.broker.connection_secret_name, "connection"),
    ]


def _global_values(settings: AirflowSettings, inputs: ReleaseInputs, secret_commands: list[dict],
                   remote_logging: bool) -> dict:
    """What applies to the whole release: versions and images, the Secrets it names, the environment, the pods'
    security, the chart's own RBAC, policies and ingress."""
    fernet_key_secret = inputs.secrets.fernet_key_secret_name
    api_secret_key_secret = inputs.secrets.api_secret_key_secret_name
    jwt_secret = inputs.secrets.jwt_secret_name
    metadata_secret = inputs.database.connection_secret_name
    broker_secret = inputs.broker.connection_secret_name
    env = [*secret_commands, *WRITABLE_CACHE_ENV]
    if remote_logging:
        # No keys: boto3 finds the Pod Identity credentials the service accounts are associated with.
        env.append({"name": "AIRFLOW_CONN_AWS_DEFAULT",
                    "value": json.dumps({"conn_type": "aws", "extra": {"region_name": settings.region}})})
    return {
        "executor": "CeleryExecutor",
        "airflowVersion": settings.airflow_version,
        "defaultAirflowRepository": settings.airflow_image_repository,
        "defaultAirflowTag": pinned(settings.airflow_image_tag or settings.airflow_version, settings.airflow_image_digest),
        "images": {"statsd": {"tag": pinned(STATSD_IMAGE_TAG, settings.statsd_image_digest)},
                   "gitSync": {"tag": pinned(GIT_SYNC_IMAGE_TAG, settings.git_sync_image_digest)}},
        # Keys and connections come from Secrets Pulumi owns, so upgrades never regenerate them.
        "fernetKeySecretName": fernet_key_secret,
        "apiSecretKeySecretName": api_secret_key_secret,
        "jwtSecretName": jwt_secret,
        "data": {"metadataSecretName": metadata_secret, "brokerUrlSecretName": broker_secret},
        "enableBuiltInSecretEnvVars": {name: False for name in BUILT_IN_SECRET_ENV},
        "env": env,
        # Every pod of the chart gets /tmp (PgBouncer too, when a managed database has the chart run it).
        "volumes": [TMP_VOLUME],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "postgresql": {"enabled": False},
        "redis": {"enabled": False},
        "pgbouncer": {"enabled": False},
        "securityContexts": {"pod": POD_SECURITY_CONTEXT, "containers": READ_ONLY_CONTAINER_SECURITY_CONTEXT},
        # Nothing of Airflow calls the Kubernetes API with CeleryExecutor: no pod-launching Role, no token.
        # (EKS Pod Identity mounts a token of its own for S3, unaffected.) kubernetesPodOperator turns the
        # workers' token and their pod-launching Role back on; workerScaleInIdleFirst gives them a token and
        # AirflowRelease's fenced Role of their own (worker_deletion_cost_access).
        "allowPodLaunching": settings.kubernetes_pod_operator,
        "allowJobLaunching": False,
        # The chart renders the pod-log-reading Role from the Airflow 2 key, and binds it from the Airflow 3 one.
        "webserver": {"allowPodLogReading": False},
        "networkPolicies": {"enabled": True},
        "ingress": {"apiServer": {"enabled": False}, "flower": {"enabled": False}},
        "airflowLocalSettings": airflow_local_settings(settings),
    }


def _config(settings: AirflowSettings, remote_logging: bool) -> dict:
    """airflow.cfg, by section."""
    return {
        "database": {"sql_alchemy_connect_args_async": ASYNC_CONNECT_ARGS_OBJECT},
        "celery": {"worker_concurrency": settings.worker_concurrency,
                   # The chart sets this to the scheduler's CPU limit (2), and with more than one the executor
                   # starts a process pool for every batch it hands to Celery: forking the scheduler costs more
                   # than the few broker round trips it spreads (apache/airflow#39482: seconds for a batch of
                   # 32; the open #70690 drops the pool for that and for a deadlock of the forked scheduler).
                   "sync_parallelism": CELERY_SEND_PROCESSES},
        # One parsing process per CPU of the DAG processor's limit.
        "dag_processor": {"parsing_processes": DAG_PARSING_PROCESSES},
        "core": {"parallelism": parallelism_per_scheduler(settings),
                 "default_pool_task_slot_count": worker_slots(settings),
                 # A running task's log is fetched from the host its worker (or the triggerer) records. The
                 # default, the fully qualified name, is a Deployment pod's bare name, which no DNS resolves;
                 # the address it has in the pod's /etc/hosts (its IP) is what the API server can reach.
                 "hostname_callable": HOSTNAME_CALLABLE},
        "logging": {"remote_logging": str(remote_logging)},
        "scheduler": {"task_queued_timeout": settings.task_queued_timeout_seconds,
                      "task_queued_timeout_check_interval": TASK_QUEUED_TIMEOUT_CHECK_SECONDS,
                      "scheduler_health_check_threshold": SCHEDULER_HEALTH_CHECK_THRESHOLD_SECONDS,
                      "orphaned_tasks_check_interval": ORPHANED_TASKS_CHECK_SECONDS},
        "execution_api": {"jwt_expiration_time": execution_token_seconds(settings)},
    }


def _job_values(settings: AirflowSettings, inputs: ReleaseInputs, secret_commands: list[dict]) -> dict:
    """The migration and create-user Jobs."""
    admin_user_secret = inputs.secrets.admin_user_secret_name
    return {
        # Pulumi waits for the release; Helm hooks would deadlock that wait. Without custom env (DESIGN), the
        # Jobs get the `_CMD` options as their own env.
        "migrateDatabaseJob": {"useHelmHooks": False, "applyCustomEnv": False, "env": secret_commands,
                               "resources": airflow_resources("200m", "512Mi"),
                               # Running and queued tasks count against default_pool, 128 slots unless set:
                               # [core] default_pool_task_slot_count acts only when the database is created,
                               # so the migration sets the pool to the workers' slots on every release. Then KEDA's
                               # role may read the table its query counts (again after a migration rebuilt it).
                               # The slots and the grant as the script's arguments: a change shows as itself.
                               "args": ["bash", "-c", MIGRATE_SCRIPT, "migrate", str(worker_slots(settings)),
                                        GRANT_ROLES]},
        "createUserJob": {
            "useHelmHooks": False, "applyCustomEnv": False, "env": secret_commands,
            "resources": airflow_resources("200m", "512Mi"),
            # The admin's name and password stay in their Secret, as files only this Job mounts: neither in
            # the Job's args nor in its environment, nor in any process's arguments. Without --password the
            # command asks twice and, with no terminal, reads the answers from its standard input (getpass).
            "extraVolumes": [{"name": "admin-user", "secret": {"secretName": admin_user_secret, "defaultMode": 0o440}}],
            "extraVolumeMounts": [{"name": "admin-user", "mountPath": "/opt/airflow/admin-user", "readOnly": True}],
            "args": ["bash", "-c", 'set -o pipefail; password="$(cat /opt/airflow/admin-user/password)"; '
                                   'printf "%s\n%s\n" "$password" "$password" | airflow users create --role Admin '
                                   '--username "$(cat /opt/airflow/admin-user/username)" '
                                   '--email admin@example.invalid --firstname Airflow --lastname Admin'],
        },
    }


def _component_values(settings: AirflowSettings, inputs: ReleaseInputs, remote_logging: bool) -> dict:
    """Each long-running component: replicas, resources, disruption budget and spread, probes; the workers' KEDA."""
    metadata_secret = inputs.database.connection_secret_name
    api_server_sources = list(inputs.secrets.api_server_sources)
    return {
        "scheduler": {
            "replicas": settings.scheduler_replicas,
            "resources": airflow_resources("500m", "1Gi", cpu_limit="2"),
            "podDisruptionBudget": pdb(),
            "topologySpreadConstraints": zone_spread("scheduler"),
            "logGroomerSidecar": log_groomer(remote_logging),
            "livenessProbe": {"initialDelaySeconds": 10, "timeoutSeconds": 20, "failureThreshold": 5,
                              "periodSeconds": 60},
            "startupProbe": {"timeoutSeconds": 20, "failureThreshold": 6, "periodSeconds": 10},
        },
        "apiServer": {
            "replicas": settings.api_server_replicas,
            "resources": airflow_resources("500m", "1Gi", cpu_limit="2"),
            # Task logs come from S3 or the logs volume, never from pods.
            "allowPodLogReading": False,
            "podDisruptionBudget": pdb(),
            "topologySpreadConstraints": zone_spread("api-server"),
            # The same sources Security admits (the ALB or local ingress, and Airflow's pods calling the
            # execution API); an empty list would block them all.
            "networkPolicy": {"ingress": {"from": api_server_sources}},
            "livenessProbe": {"initialDelaySeconds": 15, "timeoutSeconds": 5, "failureThreshold": 5, "periodSeconds": 10},
            "readinessProbe": {"initialDelaySeconds": 15, "timeoutSeconds": 5, "failureThreshold": 5, "periodSeconds": 10},
            "startupProbe": {"timeoutSeconds": 20, "failureThreshold": 6, "periodSeconds": 10},
        },
        "workers": {
            "replicas": settings.worker_min_replicas,
            "resources": airflow_resources(settings.worker_cpu, settings.worker_memory,
                                           cpu_limit=settings.worker_cpu_limit or None),
            # KEDA reads the metadata connection from the worker container's environment (connectionFromEnv):
            # the one credential the chart can only hand over as an environment variable. KEDA's own key of the
            # Secret: its own role, which may only read task_instance, and no CA file, which KEDA does not have.
            "env": [{"name": "AIRFLOW_CONN_AIRFLOW_DB",
                     "valueFrom": {"secretKeyRef": {"name": metadata_secret, "key": w.KEDA_CONNECTION_KEY}}}],
            "terminationGracePeriodSeconds": settings.worker_grace_seconds,
            "podDisruptionBudget": pdb(),
            "topologySpreadConstraints": zone_spread("worker"),
            "logGroomerSidecar": log_groomer(remote_logging),
            # Remote logging keeps task logs; a 100Gi volume per worker would only slow scaling.
            "persistence": {"enabled": False},
            "keda": {
                "enabled": True,
                "minReplicaCount": settings.worker_min_replicas,
                "maxReplicaCount": settings.worker_max_replicas,
                "cooldownPeriod": keda_cooldown_seconds(settings),
                "pollingInterval": 10,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": worker_scale_down(settings)}}},
                # Through AIRFLOW_CONN_AIRFLOW_DB above, whichever pooler is in front; otherwise the chart would add
                # KEDA_DB_CONN to every Airflow container's environment when it runs PgBouncer itself.
                "usePgbouncer": True,
            },
            "livenessProbe": {"initialDelaySeconds": 10, "timeoutSeconds": 20, "failureThreshold": 5, "periodSeconds": 60},
        },
        "triggerer": {
            "replicas": settings.triggerer_replicas,
            "resources": airflow_resources("250m", "512Mi"),
            "podDisruptionBudget": pdb(),
            "topologySpreadConstraints": zone_spread("triggerer"),
            "logGroomerSidecar": log_groomer(remote_logging),
            "persistence": {"enabled": False},
            "livenessProbe": {"initialDelaySeconds": 10, "timeoutSeconds": 20, "failureThreshold": 5, "periodSeconds": 60},
        },
        "dagProcessor": {
            "replicas": settings.dag_processor_replicas,
            "resources": airflow_resources("500m", "1Gi", cpu_limit=str(DAG_PARSING_PROCESSES)),
            "podDisruptionBudget": pdb(),
            "topologySpreadConstraints": zone_spread("dag-processor"),
            "logGroomerSidecar": log_groomer(remote_logging),
            "livenessProbe": {"initialDelaySeconds": 10, "timeoutSeconds": 20, "failureThreshold": 5, "periodSeconds": 60},
        },
        "statsd": {
            "extraMappings": STATSD_EXTRA_MAPPINGS,
            "resources": resources("50m", "128Mi"),
            "securityContexts": {"pod": pod_security_context(NOBODY), "container": READ_ONLY_CONTAINER_SECURITY_CONTEXT},
        },
        "flower": {
            "enabled": settings.flower_enabled,
            "resources": airflow_resources("100m", "256Mi"),
        },
    }


def _dags(settings: AirflowSettings, inputs: ReleaseInputs) -> dict:
    """Where DAGs come from: git-sync, or the shared DAGs volume."""
    if not settings.git_sync_repository:
        return {"persistence": {"enabled": True, "existingClaim": inputs.storage.dags_claim_name}}
    git_sync: dict = {
        "enabled": True,
        "repo": settings.git_sync_repository,
        "branch": settings.git_sync_branch,
        "rev": "HEAD",
        "ref": settings.git_sync_branch,
        "depth": 1,
        "subPath": settings.git_sync_sub_path,
        "period": "60s",
        "resources": resources(*w.GIT_SYNC_REQUESTS),
        # git-sync keeps its git config under HOME: /tmp, the pod's emptyDir. Its UID is named: a context of
        # our own replaces the chart's (and its 65533), and git-sync would then try to add the pod's UID to
        # /etc/passwd, which the read-only image refuses.
        "securityContexts": {"container": {**READ_ONLY_CONTAINER_SECURITY_CONTEXT, "runAsUser": GIT_SYNC_UID}},
        "env": [{"name": "HOME", "value": "/tmp"}],
        "extraVolumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if settings.git_sync_credentials_secret:
        git_sync["credentialsSecret"] = settings.git_sync_credentials_secret
    return {"gitSync": git_sync}


def _mount_secrets(values: dict, secret_files: list[tuple[str, pulumi.Input[str], str]]) -> None:
    """The platform's Secrets go to the Airflow components that read them, one by one: the chart's global
    `volumes` reach every pod it renders, PgBouncer's included, which has no use for a Fernet key."""
    # The CA of a managed database's PgBouncer, where Database has one issued (optional: none with CloudNativePG,
    # whose URLs do not ask for it).
    metadata_ca = {"secret": {"name": w.METADATA_TLS_SECRET, "optional": True,
                              "items": [{"key": "ca.crt", "path": w.METADATA_CA_FILE.rsplit("/", 1)[1]}]}}
    secrets_volume = platform_secrets_volume([*secret_sources(secret_files), metadata_ca])
    # The workers' files: what they use, nothing more (see WORKER_SECRET_OPTIONS).
    worker_secrets_volume = platform_secrets_volume(
        [*secret_sources([(option, secret, WORKER_DATABASE_KEYS.get(option, key)) for option, secret, key in secret_files
                          if option in WORKER_SECRET_OPTIONS]), metadata_ca])
    for component in SECRET_READERS:
        volume = worker_secrets_volume if component == "workers" else secrets_volume
        values[component]["extraVolumes"] = [volume, *values[component].get("extraVolumes", [])]
        values[component]["extraVolumeMounts"] = [
            {"name": "platform-secrets", "mountPath": SECRETS_DIR, "readOnly": True},
            *values[component].get("extraVolumeMounts", [])]


def _service_accounts(values: dict, settings: AirflowSettings) -> None:
    """Nothing of Airflow itself calls the Kubernetes API with CeleryExecutor: no component's ServiceAccount
    mounts a token, but the workers' (their deletion cost; their tasks' pods with kubernetesPodOperator)."""
    for component in (*LONG_RUNNING_COMPONENTS, "statsd", "migrateDatabaseJob", "createUserJob"):
        # With kubernetesPodOperator the workers launch pods and a deferred operator's trigger watches them from
        # the triggerer: both call the Kubernetes API (the chart binds both to its pod-launching Role). The
        # workers also patch their own pods' deletion cost (workerScaleInIdleFirst).
        calls_api = {"workers": settings.kubernetes_pod_operator or settings.worker_scale_in_idle_first,
                     "triggerer": settings.kubernetes_pod_operator}.get(component, False)
        values[component]["serviceAccount"] = {"automountServiceAccountToken": calls_api}


def _place(values: dict, settings: AirflowSettings, workers: WorkerNodes) -> None:
    """Everything on the system nodes but the Celery workers, which get the worker nodes (and their taints)."""
    values["nodeSelector"] = settings.system_node_selector
    values["workers"]["nodeSelector"] = dict(workers.node_selector)
    if workers.karpenter:
        # A worker's running tasks are never cut short to consolidate its node: Karpenter waits until the
        # worker is gone (KEDA's scale-in, which gives it longestTaskSeconds and a minute to finish).
        values["workers"]["podAnnotations"] = {**values["workers"].get("podAnnotations", {}), **w.DO_NOT_DISRUPT}
    if workers.tolerations:
        values["workers"]["tolerations"] = list(workers.tolerations)


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it, key by key (nested dicts merged, anything else replaced)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def keda_values(placement: Optional[dict] = None) -> dict:
    return {
        # Exposes the operator's metrics port (Observability's PodMonitor scrapes it); no monitor from here.
        "prometheus": {"operator": {"enabled": True}},
        **(placement or {}),
        "resources": {
            "operator": resources("100m", "256Mi"),
            "metricServer": resources("100m", "256Mi"),
            "webhooks": resources("50m", "128Mi"),
        },
        # KEDA's images are distroless nonroot: the UID named, outside the range of host users.
        "podSecurityContext": {component: {"runAsNonRoot": True, "runAsUser": NONROOT_UID, "runAsGroup": NONROOT_UID}
                               for component in ("operator", "metricServer", "webhooks")},
        # cert-manager (Security's) issues the webhook and metrics-server certificates and its cainjector puts the
        # CA in place, so the operator needs no right to rewrite webhook configurations and APIServices.
        "certificates": {"autoGenerated": False, "certManager": {"enabled": True}},
    }
