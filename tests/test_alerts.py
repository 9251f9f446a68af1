"""The platform's alert rules, proven with Prometheus's own tools (Debian's `prometheus` package: promtool).

For every alert: `promtool check rules` accepts the PrometheusRule's groups as the program registers them,
and `promtool test rules` shows the alert firing on a matching series and staying silent on a healthy one.
The series below, and every series a rule or dashboard selects, are held to what the exporters publish at their
pinned versions (tests/fixtures/exporter-metrics.yaml, from their sources) as each stack's monitors scrape them;
the airflow_* names are proven against real Airflow in tests/e2e/test_metrics_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from components.broker import redis_ha
from components.config import Settings, load_settings
from components.observability.alerts import alert_groups
from mock_engine import REPO
from support import exporter_metrics as em
from support.prometheus_tools import promtool
from support.rendering import chart_name, render_release
from support.stacks import stack_settings

RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
AIRFLOW = 'namespace="airflow"'
DB = 'namespace="airflow", cluster="airflow-db"'
# What the PodMonitor's scrape gives the exporter's series (job: <namespace>/<monitor>).
REDIS = 'namespace="airflow", job="monitoring/airflow-redis"'
CHART_PGB = 'namespace="airflow", job="monitoring/airflow-pgbouncer", pod="airflow-pgbouncer-x"'
CHART_PGB_Y = CHART_PGB.replace("pgbouncer-x", "pgbouncer-y")

# alert -> (firing series, healthy series, labels the firing alert carries beyond alertname/severity/area)
# Series values use promtool's expanding notation: 'a+bxN' is a, a+b, ... N+1 samples, one per minute.
CASES: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str]]] = {
    # --- Airflow -----------------------------------------------------------------------------------------
    "AirflowSchedulerHeartbeatStopped": (
        {f"airflow_scheduler_heartbeat{{{AIRFLOW}}}": "0+1x10 10x30"},
        {f"airflow_scheduler_heartbeat{{{AIRFLOW}}}": "0+1x40"}, {}),
    "AirflowDagProcessorHeartbeatStopped": (
        {f"airflow_dag_processor_heartbeat{{{AIRFLOW}}}": "0+1x10 10x30"},
        {f"airflow_dag_processor_heartbeat{{{AIRFLOW}}}": "0+1x40"}, {}),
    "AirflowTriggererHeartbeatStopped": (
        {f"airflow_triggerer_heartbeat{{{AIRFLOW}}}": "0+1x10 10x30"},
        {f"airflow_triggerer_heartbeat{{{AIRFLOW}}}": "0+1x40"}, {}),
    "AirflowDagImportErrors": (
        {f"airflow_dag_processing_import_errors{{{AIRFLOW}}}": "0 0 2x40"},
        {f"airflow_dag_processing_import_errors{{{AIRFLOW}}}": "0x40"}, {}),
    "AirflowTaskFailureRateHigh": (
        {f"airflow_ti_failures{{{AIRFLOW}}}": "0+1x40", f"airflow_ti_successes{{{AIRFLOW}}}": "0+1x40"},
        {f"airflow_ti_failures{{{AIRFLOW}}}": "0+1x40", f"airflow_ti_successes{{{AIRFLOW}}}": "0+20x40"}, {}),
    "AirflowTasksQueuedNotRunning": (
        {f'airflow_pool_queued_slots{{{AIRFLOW}, pool="default_pool"}}': "5x40",
         f'airflow_pool_running_slots{{{AIRFLOW}, pool="default_pool"}}': "0x40"},
        {f'airflow_pool_queued_slots{{{AIRFLOW}, pool="default_pool"}}': "5x40",
         f'airflow_pool_running_slots{{{AIRFLOW}, pool="default_pool"}}': "3x40"},
        {}),
    "AirflowExecutorOutOfSlots": (
        {f'airflow_executor_open_slots{{{AIRFLOW}, executor="CeleryExecutor"}}': "0x40"},
        {f'airflow_executor_open_slots{{{AIRFLOW}, executor="CeleryExecutor"}}': "0x20 10x20"},
        {}),
    "AirflowTaskInstancesKilledWithoutHeartbeat": (
        {f"airflow_task_instances_without_heartbeats_killed{{{AIRFLOW}}}": "0x20 1x20"},
        {f"airflow_task_instances_without_heartbeats_killed{{{AIRFLOW}}}": "0x40"}, {}),
    "AirflowPoolStarving": (
        {f'airflow_pool_starving_tasks{{{AIRFLOW}, pool="default_pool"}}': "3x40",
         f"airflow_pool_starving_tasks{{{AIRFLOW}}}": "3x40"},
        {f'airflow_pool_starving_tasks{{{AIRFLOW}, pool="default_pool"}}': "0x40",
         # The unlabelled twin (whichever pool came last) is not a pool.
         f"airflow_pool_starving_tasks{{{AIRFLOW}}}": "3x40"}, {"pool": "default_pool"}),
    "AirflowComponentReplicasUnavailable": (
        {f'kube_deployment_status_replicas_available{{{AIRFLOW}, deployment="airflow-scheduler"}}': "1x40",
         f'kube_deployment_spec_replicas{{{AIRFLOW}, deployment="airflow-scheduler"}}': "2x40"},
        {f'kube_deployment_status_replicas_available{{{AIRFLOW}, deployment="airflow-scheduler"}}': "2x40",
         f'kube_deployment_spec_replicas{{{AIRFLOW}, deployment="airflow-scheduler"}}': "2x40"},
        {"namespace": "airflow", "deployment": "airflow-scheduler"}),
    "AirflowApiServerNotReady": (
        {f'kube_deployment_status_replicas_available{{{AIRFLOW}, deployment="airflow-api-server"}}': "0x40"},
        {f'kube_deployment_status_replicas_available{{{AIRFLOW}, deployment="airflow-api-server"}}': "2x40"},
        {"namespace": "airflow", "deployment": "airflow-api-server"}),
    # --- PostgreSQL --------------------------------------------------------------------------------------
    "PostgresInstanceDown": (
        {f'cnpg_collector_up{{{DB}, pod="airflow-db-2"}}': "1x5 0x35"},
        {f'cnpg_collector_up{{{DB}, pod="airflow-db-2"}}': "1x40"},
        {"namespace": "airflow", "cluster": "airflow-db", "pod": "airflow-db-2"}),
    "PostgresNoPrimary": (
        {f'cnpg_pg_replication_in_recovery{{{DB}, pod="airflow-db-1"}}': "1x40",
         f'cnpg_pg_replication_in_recovery{{{DB}, pod="airflow-db-2"}}': "1x40"},
        {f'cnpg_pg_replication_in_recovery{{{DB}, pod="airflow-db-1"}}': "0x40",
         f'cnpg_pg_replication_in_recovery{{{DB}, pod="airflow-db-2"}}': "1x40"}, {}),
    "PostgresReplicationLagHigh": (
        {f'cnpg_pg_replication_lag{{{DB}, pod="airflow-db-2"}}': "900x40"},
        {f'cnpg_pg_replication_lag{{{DB}, pod="airflow-db-2"}}': "2x40"}, {"pod": "airflow-db-2"}),
    "PostgresWalArchivingFailing": (
        {f"cnpg_pg_stat_archiver_last_failed_time{{{DB}}}": "2000x40",
         f"cnpg_pg_stat_archiver_last_archived_time{{{DB}}}": "1000x40"},
        {f"cnpg_pg_stat_archiver_last_failed_time{{{DB}}}": "1000x40",
         f"cnpg_pg_stat_archiver_last_archived_time{{{DB}}}": "2000x40"},
        {"namespace": "airflow", "cluster": "airflow-db"}),
    "PgBouncerDown": (
        {'up{namespace="airflow", job="monitoring/airflow-db-pooler", pod="airflow-db-pooler-x"}': "1x5 0x35"},
        {'up{namespace="airflow", job="monitoring/airflow-db-pooler", pod="airflow-db-pooler-x"}': "1x40",
         f'cnpg_pgbouncer_last_collection_error{{{AIRFLOW}, pod="airflow-db-pooler-x"}}': "0x40"},
        {"namespace": "airflow", "job": "monitoring/airflow-db-pooler", "pod": "airflow-db-pooler-x"}),
    # The exporter answers while PgBouncer does not: its scrape is up, its PgBouncer series are gone. A second,
    # healthy pod must not hide the first (the rule matches pod by pod).
    "ChartPgBouncerDown": (
        {f'up{{{CHART_PGB}}}': "1x40", f'up{{{CHART_PGB_Y}}}': "1x40",
         f'pgbouncer_exporter_lists_items{{{CHART_PGB}, list="databases"}}': "1x5 _x35",
         f'pgbouncer_exporter_lists_items{{{CHART_PGB_Y}, list="databases"}}': "1x40"},
        {f'up{{{CHART_PGB}}}': "1x40", f'up{{{CHART_PGB_Y}}}': "1x40",
         f'pgbouncer_exporter_lists_items{{{CHART_PGB}, list="databases"}}': "1x40",
         f'pgbouncer_exporter_lists_items{{{CHART_PGB_Y}, list="databases"}}': "1x40"},
        {"namespace": "airflow", "job": "monitoring/airflow-pgbouncer", "pod": "airflow-pgbouncer-x"}),
    "PgBouncerClientConnectionsNearLimit": (
        {f'cnpg_pgbouncer_lists_used_clients{{{AIRFLOW}, pod="airflow-db-pooler-x"}}': "990x40"},
        {f'cnpg_pgbouncer_lists_used_clients{{{AIRFLOW}, pod="airflow-db-pooler-x"}}': "100x40"},
        {"pod": "airflow-db-pooler-x"}),
    "PostgresStreamingReplicasMissing": (
        {f'cnpg_pg_replication_streaming_replicas{{{DB}, pod="airflow-db-1"}}': "1x40"},
        {f'cnpg_pg_replication_streaming_replicas{{{DB}, pod="airflow-db-1"}}': "2x40"}, {}),
    # promtool's clock starts at 0: a backup taken at second 1 is 27 hours old at 27h; a healthy one keeps
    # being taken (its timestamp follows the clock).
    "PostgresBackupTooOld": (
        {f"barman_cloud_cloudnative_pg_io_last_available_backup_timestamp{{{DB}}}": "1x1700"},
        {f"barman_cloud_cloudnative_pg_io_last_available_backup_timestamp{{{DB}}}": "1+60x1700"}, {}),
    # --- Redis -------------------------------------------------------------------------------------------
    "RedisNoMaster": (
        {f'redis_instance_info{{{REDIS}, pod="airflow-redis-server-0", role="slave"}}': "1x40"},
        {f'redis_instance_info{{{REDIS}, pod="airflow-redis-server-0", role="master"}}': "1x40"}, {}),
    "RedisMasterLinkDown": (
        {f'redis_master_link_up{{{REDIS}, pod="airflow-redis-server-1"}}': "0x40"},
        {f'redis_master_link_up{{{REDIS}, pod="airflow-redis-server-1"}}': "1x40"},
        {"namespace": "airflow", "job": "monitoring/airflow-redis", "pod": "airflow-redis-server-1"}),
    "RedisMemoryNearMaxmemory": (
        {f'redis_memory_used_bytes{{{REDIS}, pod="airflow-redis-server-0"}}': "95x40",
         f'redis_memory_max_bytes{{{REDIS}, pod="airflow-redis-server-0"}}': "100x40"},
        {f'redis_memory_used_bytes{{{REDIS}, pod="airflow-redis-server-0"}}': "10x40",
         f'redis_memory_max_bytes{{{REDIS}, pod="airflow-redis-server-0"}}': "100x40"},
        {"namespace": "airflow", "job": "monitoring/airflow-redis", "pod": "airflow-redis-server-0"}),
    "RedisReplicasMissing": (
        {f'redis_connected_slaves{{{REDIS}, pod="airflow-redis-server-0"}}': "1x40",
         f'redis_instance_info{{{REDIS}, pod="airflow-redis-server-0", role="master"}}': "1x40"},
        {f'redis_connected_slaves{{{REDIS}, pod="airflow-redis-server-0"}}': "2x40",
         f'redis_instance_info{{{REDIS}, pod="airflow-redis-server-0", role="master"}}': "1x40"}, {}),
    # --- Platform ----------------------------------------------------------------------------------------
    "AirflowPodCrashLooping": (
        {f'kube_pod_container_status_waiting_reason{{{AIRFLOW}, pod="airflow-scheduler-x", container="scheduler", '
         f'reason="CrashLoopBackOff"}}': "1x40"},
        {f'kube_pod_container_status_waiting_reason{{{AIRFLOW}, pod="airflow-scheduler-x", container="scheduler", '
         f'reason="CrashLoopBackOff"}}': "0x40"},
        {"pod": "airflow-scheduler-x", "container": "scheduler"}),
    "AirflowPodOOMKilled": (
        {f'kube_pod_container_status_restarts_total{{{AIRFLOW}, pod="airflow-worker-x", container="worker"}}':
         "0x30 1x10",
         f'kube_pod_container_status_last_terminated_reason{{{AIRFLOW}, pod="airflow-worker-x", container="worker", '
         f'reason="OOMKilled"}}': "1x40"},
        {f'kube_pod_container_status_restarts_total{{{AIRFLOW}, pod="airflow-worker-x", container="worker"}}':
         "0x40",
         f'kube_pod_container_status_last_terminated_reason{{{AIRFLOW}, pod="airflow-worker-x", container="worker", '
         f'reason="OOMKilled"}}': "1x40"},
        {"namespace": "airflow", "pod": "airflow-worker-x", "container": "worker"}),
    "PersistentVolumeFillingUp": (
        {'kubelet_volume_stats_used_bytes{namespace="airflow", persistentvolumeclaim="data-x"}': "90x40",
         'kubelet_volume_stats_capacity_bytes{namespace="airflow", persistentvolumeclaim="data-x"}': "100x40"},
        {'kubelet_volume_stats_used_bytes{namespace="airflow", persistentvolumeclaim="data-x"}': "50x40",
         'kubelet_volume_stats_capacity_bytes{namespace="airflow", persistentvolumeclaim="data-x"}': "100x40"},
        {"namespace": "airflow", "persistentvolumeclaim": "data-x"}),
    "KedaScalerErrors": (
        {'keda_scaler_detail_errors_total{namespace="keda", exported_namespace="airflow", scaledObject="airflow-worker", '
         'scaler="postgresql"}': "0+1x40"},
        {'keda_scaler_detail_errors_total{namespace="keda", exported_namespace="airflow", scaledObject="airflow-worker", '
         'scaler="postgresql"}': "0x40"},
        {"scaledObject": "airflow-worker"}),
    "NodeNotReady": (
        {'kube_node_status_condition{node="ip-10-0-1-1", condition="Ready", status="true"}': "0x40"},
        {'kube_node_status_condition{node="ip-10-0-1-1", condition="Ready", status="true"}': "1x40"},
        {"node": "ip-10-0-1-1", "condition": "Ready", "status": "true"}),
}
# The backup alert needs more than a day to pass.
EVAL_TIME = {"PostgresBackupTooOld": "27h"}


def registered_groups(run) -> list[dict]:
    return [group for rule in run.of_type(RULE) for group in rule.values["spec"]["groups"]]


def without_annotations(groups: list[dict]) -> list[dict]:
    """promtool's unit tests compare annotations too; the alerts' logic is what these cases test (the
    annotations' templates are checked by `promtool check rules`, their anchors against docs/alerts.md below)."""
    return [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
            for group in groups]


def run_promtool(*args: str, files: dict[str, object]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as directory:
        for name, content in files.items():
            Path(directory, name).write_text(yaml.safe_dump(content, sort_keys=False))
        return subprocess.run([promtool(), *args], cwd=directory, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stack", ["local", "prod", "prod-managed"])
def test_promtool_accepts_every_rule_group(stack_runs, stack):
    groups = registered_groups(stack_runs[stack])
    # airflow, platform, and the in-cluster engines' (postgresql, redis) or the managed database's PgBouncer.
    assert len(groups) == (3 if stack == "prod-managed" else 4)
    checked = run_promtool("check", "rules", "rules.yaml", files={"rules.yaml": {"groups": groups}})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"SUCCESS: \d+ rules found", checked.stdout)


def test_every_alert_has_a_case_that_fires_and_one_that_stays_silent(stack_runs):
    alerts = {rule["alert"] for stack in ("prod", "prod-managed")
              for group in registered_groups(stack_runs[stack]) for rule in group["rules"]}
    assert sorted(alerts) == sorted(CASES), "every alert needs a firing and a healthy case here"


@pytest.mark.parametrize("stack", ["local", "staging", "prod", "prod-managed"])
def test_every_alert_fires_on_a_matching_series_and_stays_silent_on_a_healthy_one(stack_runs, stack):
    groups = registered_groups(stack_runs[stack])
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    tests = []
    for name, rule in rules.items():
        firing, healthy, labels = CASES[name]
        expected = {"alertname": name, **rule["labels"], **labels}
        expected.pop("alertname")
        eval_time = EVAL_TIME.get(name, "35m")
        tests.append({"interval": "1m", "name": f"{name} fires now",
                      "input_series": [{"series": s, "values": v} for s, v in firing.items()],
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": name,
                                           "exp_alerts": [{"exp_labels": expected}]}]})
        tests.append({"interval": "1m", "name": f"{name} stays silent",
                      "input_series": [{"series": s, "values": v} for s, v in healthy.items()],
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": []}]})
    # Cases that need a day to pass run with a coarser evaluation interval, so promtool does not evaluate every
    # rule each minute for 27 hours.
    # The two promtool runs are independent: side by side, one per core.
    runs = []
    for long_cases, interval in ((False, "1m"), (True, "10m")):
        selected = [t for t in tests if (t["name"].rsplit(" ", 2)[0] in EVAL_TIME) == long_cases]
        if selected:
            runs.append({"rules.yaml": {"groups": without_annotations(groups)},
                         "tests.yaml": {"rule_files": ["rules.yaml"], "evaluation_interval": interval,
                                        "tests": selected}})
    assert runs
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda files: run_promtool("test", "rules", "tests.yaml", files=files), runs))
    for result in results:
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "SUCCESS" in result.stdout


def test_the_unit_tests_would_catch_a_broken_rule(prod):
    """A rule whose expression no longer matches its series must fail the promtool tests above."""
    groups = registered_groups(prod)
    broken = [{**group, "rules": [{**rule, "expr": rule["expr"].replace("airflow_scheduler_heartbeat",
                                                                         "airflow_scheduler_heartbeats")}
                                  for rule in group["rules"]]} for group in groups]
    firing, healthy, _ = CASES["AirflowSchedulerHeartbeatStopped"]
    result = run_promtool("test", "rules", "tests.yaml", files={
        "rules.yaml": {"groups": without_annotations(broken)},
        "tests.yaml": {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
            {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in healthy.items()],
             "alert_rule_test": [{"eval_time": "35m", "alertname": "AirflowSchedulerHeartbeatStopped",
                                  "exp_alerts": []}]}]}})
    assert result.returncode != 0, "a misspelt metric makes the heartbeat alert fire on a healthy scheduler"


def test_every_alert_carries_severity_summary_description_and_a_runbook_in_the_alerts_doc(stack_runs):
    """Every runbook_url is alertRunbookBaseUrl (where docs/alerts.md is published) plus the anchor of that alert's
    heading in docs/alerts.md."""
    runbooks = (REPO / "docs" / "alerts.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", runbooks, re.M)}
    base = load_settings({}).alert_runbook_base_url
    for group in [*registered_groups(stack_runs["prod"]), *registered_groups(stack_runs["prod-managed"])]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], rule["alert"]
            url, _, anchor = annotations["runbook_url"].partition("#")
            assert url == base and anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/alerts.md"


def test_thresholds_follow_the_settings():
    settings = stack_settings("prod", {"postgresReplicationLagAlertSeconds": 42})
    lag = next(a for a in alert_groups(settings.observability, settings.observed_stores)["postgresql"] if a.name == "PostgresReplicationLagHigh")
    assert "> 42" in lag.expr
    local_settings = stack_settings("local")
    local = {a.name for a in alert_groups(local_settings.observability, local_settings.observed_stores)["postgresql"]}
    assert "PostgresBackupTooOld" not in local and "PostgresStreamingReplicasMissing" not in local, \
        "a local stack keeps no backups and has one instance"


# ---------------------------------------------------------------------------------------------------------
# The series are the exporters' own

STACKS = ["local", "staging", "prod", "prod-managed"]
RELEASE = "kubernetes:helm.sh/v3:Release"


def stack_scrapes(run) -> dict[tuple[str, str], em.Scrape]:
    """The monitors of a stack: the program's, and the ServiceMonitors kube-prometheus-stack renders (with the
    Services of that chart and Airflow's, which the monitors select)."""
    program = [registration.values for kind in ("PodMonitor", "ServiceMonitor")
               for registration in run.of_type(f"kubernetes:monitoring.coreos.com/v1:{kind}")]
    releases = [r for r in run.of_type(RELEASE) if chart_name(r) in ("kube-prometheus-stack", "airflow")]
    assert len(releases) == 2
    # Helm puts a template without a namespace in the release's.
    documents = [{**d, "metadata": {"namespace": release.values["namespace"], **d["metadata"]}}
                 for release in releases for d in render_release(release) if d]
    return em.scrapes(program, documents)


@pytest.fixture(scope="module")
def scrapes_by_stack(stack_runs) -> dict[str, dict[tuple[str, str], em.Scrape]]:
    return {stack: stack_scrapes(stack_runs[stack]) for stack in STACKS}


def exporter_selectors(expression: str) -> list[em.Selector]:
    return [s for s in em.selectors(expression) if not s.name.startswith("airflow_")]


@pytest.mark.parametrize("stack", STACKS)
def test_every_series_a_rule_selects_is_one_an_exporter_publishes_and_the_stack_scrapes(stack_runs, scrapes_by_stack,
                                                                                        stack):
    scrapes = scrapes_by_stack[stack]
    checked, errors = 0, []
    for group in registered_groups(stack_runs[stack]):
        for rule in group["rules"]:
            for selector in exporter_selectors(rule["expr"]):
                checked += 1
                errors += [f"{rule['alert']}: {e}" for e in em.problems(selector, scrapes)]
    assert checked >= 10, f"only {checked} exporter selectors found in the rules"
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("stack", STACKS)
def test_every_series_a_dashboard_selects_is_one_an_exporter_publishes_and_the_stack_scrapes(scrapes_by_stack, stack):
    selected = [(where, s) for where, expr in em.dashboard_exprs() for s in exporter_selectors(expr)]
    assert selected, "the dashboards select no exporter series: the test would hold nothing"
    errors = [f"{where}: {e}" for where, s in selected for e in em.problems(s, scrapes_by_stack[stack])]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("stack", STACKS)
def test_every_label_a_rule_groups_matches_or_names_in_its_text_is_one_its_series_carry(stack_runs, scrapes_by_stack,
                                                                                       stack):
    """`by`, `on`, `ignoring`, `group_left` and the annotations' {{ $labels.x }} name labels the operands' series
    carry: a misspelt one matches everything (or nothing) and promtool's one-series cases would not notice."""
    errors, templated = [], 0
    for group in registered_groups(stack_runs[stack]):
        for rule in group["rules"]:
            labels, problems = em.expression_labels(rule["expr"], scrapes_by_stack[stack])
            errors += [f"{rule['alert']}: {p}" for p in problems]
            text = " ".join(rule["annotations"][key] for key in ("summary", "description"))
            for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text):
                templated += 1
                if labels is None or (label not in labels and em.ANY_LABEL not in labels):
                    errors.append(f"{rule['alert']}: its text names $labels.{label}, its series carry "
                                  f"{sorted(labels or [])}")
    assert templated >= 5
    assert not errors, "\n".join(errors)


def test_the_label_check_refuses_a_misspelt_grouping_or_matching_label(scrapes_by_stack):
    prod, managed = scrapes_by_stack["prod"], scrapes_by_stack["prod-managed"]
    job = 'job="monitoring/airflow-pgbouncer"'
    good = f"up{{{job}}} == 1 unless on (namespace, pod) pgbouncer_exporter_lists_items{{{job}}}"
    assert em.expression_labels(good, managed)[1] == []
    assert em.expression_labels(good.replace("(namespace, pod)", "(namespce, pod)"), managed)[1]
    assert em.expression_labels("sum by (scaledObject) (keda_scaler_detail_errors_total)", prod)[1] == []
    assert em.expression_labels("sum by (scaledobject) (keda_scaler_detail_errors_total)", prod)[1]
    labels, _ = em.expression_labels('max by (pod) (cnpg_pg_replication_lag{cluster="airflow-db"}) > 1', prod)
    assert labels == {"pod"}


# Prometheus's result labels (promql/engine.go resultMetric, VectorAnd/Or/Unless, aggregations, absent), as promtool
# 2.42 evaluates them: expression -> the labels of its result (a function of REDIS_LABELS' own, where it keeps them).
REDIS_LABELS = 'redis_memory_used_bytes{namespace="airflow"}'
RESULT_LABELS = [
    (f"{REDIS_LABELS} > on (pod) redis_memory_max_bytes", {"pod"}),
    (f"{REDIS_LABELS} > ignoring (container) redis_memory_max_bytes", lambda left: left - {"container"}),
    (f"{REDIS_LABELS} / on (pod) group_left (role) redis_instance_info", lambda left: left | {"role"}),
    (f"redis_instance_info * on (pod) group_right (role) {REDIS_LABELS}", lambda left: left | {"role"}),
    (f"topk by (pod) (1, {REDIS_LABELS})", lambda left: left),
    (f"{REDIS_LABELS} and on (pod) redis_instance_info", lambda left: left),
    (f'count_values("value", {REDIS_LABELS})', {"value"}),
    ('absent(up{job="monitoring/airflow-redis", job!="x", pod=""})', set()),
    ('absent(up{job="monitoring/airflow-redis", namespace="airflow"})', {"job", "namespace"}),
    ("hour()", set()),
    ("time()", None),
]


@pytest.mark.parametrize(("expression", "expected"), RESULT_LABELS)
def test_the_label_check_infers_result_labels_as_prometheus_does(scrapes_by_stack, expression, expected):
    prod = scrapes_by_stack["prod"]
    left, _ = em.expression_labels(REDIS_LABELS, prod)
    expected = expected(left) if callable(expected) else expected
    labels, problems = em.expression_labels(expression, prod)
    assert problems == [] and (labels if labels is None else set(labels)) == expected


def test_a_fallback_vector_needs_no_matching_label():
    """`or on () vector(0)`, the usual fallback, is valid PromQL whatever the left side carries."""
    assert em.expression_labels("sum(up) or on () vector(0)", {})[1] == []


def case_series(stack_run) -> list[tuple[str, str]]:
    """(alert, series) of every promtool case of the alerts this stack has."""
    alerts = {rule["alert"] for group in registered_groups(stack_run) for rule in group["rules"]}
    return [(alert, series) for alert in sorted(alerts) for firing, healthy, _ in [CASES[alert]]
            for series in [*firing, *healthy]]


@pytest.mark.parametrize("stack", STACKS)
def test_every_series_the_promtool_cases_feed_is_one_the_exporters_publish(stack_runs, scrapes_by_stack, stack):
    """Each case's series, with every label it carries, could come out of the stack's scrapes: the cases cannot
    be copied from a wrong rule and agree with it."""
    errors = []
    cases = case_series(stack_runs[stack])
    for alert, series in cases:
        selector, = em.selectors(series)
        if selector.name.startswith("airflow_"):
            continue
        present = {label: value for label, op, value in selector.matchers}
        errors += [f"{alert}: {series}: {e}" for e in em.problems(selector, scrapes_by_stack[stack], present)]
    assert len(cases) > 30
    assert not errors, "\n".join(errors)


# (stack, selector, refused?)
SERIES_CONTROLS = [
    ("prod", 'redis_master_link_up{namespace="airflow"} == 0', False),
    ("prod", 'redis_master_link_status{namespace="airflow"} == 0', True),
    ("prod", 'redis_instance_info{role="primary"}', True),
    ("prod", 'kube_pod_container_status_waiting_reason{reason="CrashLoopBackoff"}', True),
    ("prod", 'sum by (scaledObject) (keda_scaler_detail_errors_total{scaledobject="airflow-worker"})', True),
    # KEDA's own `namespace` label collides with the target's and becomes exported_namespace.
    ("prod", 'keda_scaler_detail_errors_total{exported_namespace="airflow"}', False),
    ("prod", 'keda_scaler_detail_errors_total{namespace="airflow"}', True),
    ("prod-managed", 'up{job="monitoring/airflow-db-pooler"}', True),
    ("prod", 'up{job="monitoring/airflow-db-pooler"}', False),
    ("prod-managed", 'cnpg_pg_replication_lag{namespace="airflow"}', True),
    ("prod-managed", 'pgbouncer_up{namespace="airflow"} == 0', True),
    ("prod", 'cnpg_pg_stat_archiver_last_failed_time{cluster="airflow-db"}', False),
    ("prod", 'cnpg_pg_stat_archiver_last_failure_time{cluster="airflow-db"}', True),
    # Every matcher on one scrape: a job of one monitor and the namespace of another do not make a series.
    ("prod", 'up{job="monitoring/airflow-db-pooler", namespace="keda"}', True),
    ("prod", 'up{job="monitoring/keda-operator", namespace="keda"}', False),
    # A regular expression is held to the values too; a ServiceMonitor without a namespace selector scrapes its own.
    ("prod", 'kube_pod_container_status_waiting_reason{reason=~"CrashLoopBackoff|Evicting"}', True),
    ("prod", 'kube_pod_container_status_waiting_reason{reason=~"CrashLoop.*"}', False),
    ("prod", 'kube_node_status_condition{namespace="airflow"}', True),
    # The kubelet's targets are nodes: `node`, no `pod`.
    ("prod", 'kubelet_volume_stats_used_bytes{node="ip-10-0-1-1"}', False),
    ("prod", 'kubelet_volume_stats_used_bytes{pod="x"}', True),
]


def test_the_series_check_refuses_what_no_exporter_publishes(scrapes_by_stack):
    """The controls: a misspelt name, a label the exporter does not set, a value it does not give, a job no
    monitor has, the managed stack's absent engines, and the exporter's label under the name the scrape moved
    it from."""
    wrong = [(stack, expression) for stack, expression, refused in SERIES_CONTROLS
             if any(em.problems(s, scrapes_by_stack[stack]) for s in em.selectors(expression)) != refused]
    assert wrong == []


def test_each_exporter_was_read_at_the_version_the_platform_pins():
    """A version bump fails here until the fixture is read again against the new tag."""
    pins = {
        "../shared/charts/cloudnative-pg/Chart.yaml appVersion": em.chart_app_version("cloudnative-pg"),
        "../shared/charts/plugin-barman-cloud/Chart.yaml appVersion": em.chart_app_version("plugin-barman-cloud"),
        "../shared/charts/keda/Chart.yaml appVersion": em.chart_app_version("keda"),
        "../shared/charts/kube-prometheus-stack/charts/kube-state-metrics/Chart.yaml appVersion":
            em.chart_app_version("kube-prometheus-stack/charts/kube-state-metrics"),
        "components/broker/redis_ha.py REDIS_EXPORTER_IMAGE_TAG": redis_ha.REDIS_EXPORTER_IMAGE_TAG,
        "../shared/charts/airflow/values.yaml images.pgbouncerExporter.tag":
            yaml.safe_load((em.SHARED_CHARTS / "airflow/values.yaml").read_text())
            ["images"]["pgbouncerExporter"]["tag"].rsplit("-", 1)[-1],
        "components/cluster/settings.py kubernetes_version": Settings.model_fields["kubernetes_version"].default,
        "none": "any",
    }
    for project, entry in em.fixture().items():
        assert entry["pinned_by"] in pins, f"{project}: no reader for its pin {entry['pinned_by']!r}"
        assert str(entry["version"]) == pins[entry["pinned_by"]], \
            f"{project}: read at {entry['version']}, the platform pins {pins[entry['pinned_by']]}"
