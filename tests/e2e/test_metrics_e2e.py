"""End-to-end tier (`make e2e`): the metrics Airflow really sends, through the release's statsd mapping.

A UDP listener on loopback stands in for the chart's statsd exporter. Airflow runs as real processes (api-server
for the Execution API, scheduler, dag-processor, triggerer and a Celery worker, CeleryExecutor over the Redis
broker, metadata through PgBouncer) with the `[metrics]` section of the release's rendered `airflow.cfg`
(statsd host and port pointed at the listener). Its DAGs folder holds a scheduled DAG with a task and a
deferred sensor, a DAG whose task fails, a DAG whose task stops its own supervisor (so the scheduler kills it
for want of heartbeats) and a file that does not import. Every line received is mapped with
`statsd_mapping` through the `mappings.yml` of the release's statsd ConfigMap, as rendered by Helm from the
program's values.

Then every `airflow_*` name that the platform's alert rules (the PrometheusRule resources of the prod stack)
and dashboards (components/observability/dashboards/*.json) use must be among the series that come out, with the labels their
selectors require (`{pool!=""}` needs a series that has `pool`).

The names seen and the series they become are written to METRICS_OBSERVED (default
/tmp/metrics-work/observed.json). A few of Airflow's intervals are shortened (pool and running-task gauges,
stats printing, task heartbeat timeout) so that every metric shows up within a couple of minutes; they
change when metrics are sent, not their names.

Airflow needs the `statsd` package (the apache/airflow image has it: its default extras include `statsd`);
without it Airflow logs "Could not configure StatsClient" and sends nothing. AIRFLOW_EXTRA_PYTHONPATH, if set,
is put on the PYTHONPATH of the Airflow processes (for an e2e virtualenv that lacks it).
"""

from __future__ import annotations

import configparser
import difflib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mock_engine import run_program
from support.airflow_cli import airflow, async_env
from support.daemons import Daemons, _free_port, _query
from support.exporter_metrics import DASHBOARDS, dashboard_exprs
from support.rendering import render_all
from support.servers import with_host_and_port
from support.statsd_mapping import Exporter, LineError, MappingConfig, parse_line

pytestmark = pytest.mark.e2e

PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
OBSERVED = Path(os.environ.get("METRICS_OBSERVED", "/tmp/metrics-work/observed.json"))
MIN_USED_NAMES = 5

# Bounds, not expectations: how long to wait for each stage at most.
DAGS_PARSED_WITHIN = 240
RUNS_FINISHED_WITHIN = 420
SETTLE_SECONDS = 8          # more than two pool/running-task gauge intervals after the runs finished
SPEEDUPS = {
    "AIRFLOW__SCHEDULER__POOL_METRICS_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__RUNNING_METRICS_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "5",
}

SCHEDULED_DAG, FAILING_DAG, HEARTBEAT_DAG = "metrics_e2e", "metrics_e2e_failing", "metrics_e2e_heartbeat"
DAG_FILES = {
    "metrics_e2e.py": f'''
import time
from datetime import datetime, timedelta

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import DAG, task

# Scheduled (not triggered): the scheduler creates its run on unpause and sends dagrun.schedule_delay.
with DAG("{SCHEDULED_DAG}", schedule="@hourly", start_date=datetime(2024, 1, 1), catchup=False, max_active_runs=1):
    @task
    def work():
        time.sleep(6)  # long enough to be counted as running

    work()
    WaitSensor(task_id="deferred", time_to_wait=timedelta(seconds=8), deferrable=True)
''',
    "metrics_e2e_failing.py": f'''
from datetime import datetime

from airflow.sdk import DAG, task

with DAG("{FAILING_DAG}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    @task(retries=0)
    def fails():
        raise RuntimeError("fails on purpose: ti_failures")

    fails()
''',
    "metrics_e2e_heartbeat.py": f'''
from datetime import datetime

from airflow.sdk import DAG, task

with DAG("{HEARTBEAT_DAG}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    @task(retries=0)
    def loses_its_heartbeat():
        import os
        import signal
        import time
        # The parent is the task supervisor, which heartbeats for the task: stopped, it heartbeats no more,
        # and the scheduler kills the task instance (task_instances_without_heartbeats_killed).
        os.kill(os.getppid(), signal.SIGSTOP)
        time.sleep(600)

    loses_its_heartbeat()
''',
    "broken_dag.py": '''
from airflow.sdk import DAG  # noqa: F401  (the DAG processor only parses files that mention airflow and dag)

raise ImportError("this DAG file does not import, on purpose: dag_processing.import_errors")
''',
}


# ---------------------------------------------------------------------------------------------------------
# What the platform uses: airflow_* names in the alert rules and dashboards


_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_MATCHERS = re.compile(r"\{[^{}]*\}")
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_AIRFLOW_NAME = re.compile(r"(?<![A-Za-z0-9_:$])airflow_[A-Za-z0-9_:]*(?![A-Za-z0-9_:$])")


def airflow_names(expr: Any) -> set[str]:
    """The `airflow_*` metric names of a PromQL expression: identifiers outside strings, label matchers and
    grouping clauses (so label names and values do not count), e.g. `airflow_x{...}`, `airflow_x[5m]`,
    `rate(airflow_x)`. Names built from Grafana variables (`airflow_$name`) are left out."""
    text = str(expr or "")
    text = _PROMQL_STRING.sub('""', text)
    text = _PROMQL_MATCHERS.sub("{}", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    return {name for name in _AIRFLOW_NAME.findall(text) if name != "airflow_"}


_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:$])(airflow_[A-Za-z0-9_:]*)\s*\{((?:[^{}]|\$\{[^{}]*\})*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)')
_GRAFANA_VARIABLE = re.compile(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _matches_empty(operator: str, value: str) -> bool:
    """Whether a PromQL label matcher matches a series that lacks the label (its value is then "").
    Grafana variables are taken to be non-empty; a regex PromQL cannot compile is taken to match ""."""
    value = _GRAFANA_VARIABLE.sub("x", value)
    if operator in ("=", "!="):
        return (value == "") == (operator == "=")
    try:
        empty = re.fullmatch(value, "") is not None      # PromQL regexes are fully anchored
    except re.error:
        return True
    return empty == (operator == "=~")


def required_labels(expr: Any) -> list[tuple[str, frozenset[str]]]:
    """(name, labels a series must carry to be selected) for every `airflow_x{...}` selector of an expression:
    `pool!=""`, `dag_id="x"` or `hostname=~".+"` select only series that have the label."""
    found = []
    for name, matchers in _SELECTOR.findall(str(expr or "")):
        labels = frozenset(label for label, operator, quoted in _MATCHER.findall(matchers)
                           if not _matches_empty(operator, quoted[1:-1]))
        found.append((name, labels))
    return found


def rule_exprs(run) -> tuple[list[tuple[str, str]], set[str]]:
    """(where, expr) of every rule of every PrometheusRule the program registers, and the recording rules' names."""
    exprs, recorded = [], set()
    for registration in run.of_type(PROMETHEUS_RULE):
        spec = registration.values.get("spec") or {}
        for group in spec.get("groups") or []:
            for rule in group.get("rules") or []:
                label = rule.get("alert") or rule.get("record") or "?"
                if rule.get("record"):
                    recorded.add(str(rule["record"]))
                exprs.append((f"PrometheusRule {registration.name}: {group.get('name')}/{label}", str(rule.get("expr"))))
    return exprs, recorded


# ---------------------------------------------------------------------------------------------------------
# The release: its statsd mapping and the [metrics] it gives the Airflow pods


@pytest.fixture(scope="module")
def release():
    run = run_program("prod")
    documents = render_all(run)["airflow"]
    configmaps = [d for d in documents if d["kind"] == "ConfigMap"]
    mappings = [d for d in configmaps if "mappings.yml" in (d.get("data") or {})]
    configs = [d for d in configmaps if "airflow.cfg" in (d.get("data") or {})]
    assert len(mappings) == 1 and len(configs) == 1, [d["metadata"]["name"] for d in configmaps]
    airflow_cfg = configparser.ConfigParser(interpolation=None)
    airflow_cfg.read_string(configs[0]["data"]["airflow.cfg"])
    exporter_images = [c["image"] for d in documents if d["kind"] == "Deployment"
                       for c in d["spec"]["template"]["spec"]["containers"] if "statsd-exporter" in c["image"]]
    return {
        "run": run,
        "mappings_yml": mappings[0]["data"]["mappings.yml"],
        "mappings_configmap": mappings[0]["metadata"]["name"],
        "metrics": dict(airflow_cfg["metrics"]) if airflow_cfg.has_section("metrics") else {},
        "exporter_image": exporter_images[0] if exporter_images else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Running Airflow


class StatsdListener:
    """Collects every UDP datagram sent to a loopback port, on a thread."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-listener", daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65535))
            except socket.timeout:
                continue

    def lines(self) -> list[str]:
        return [line for packet in list(self.packets) for line in packet.decode("utf-8", "replace").split("\n")
                if line]

    def saw(self, name: str) -> bool:
        return any(line.split(":", 1)[0] == name for line in self.lines())

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _wait(condition, within: float, what: str, daemons: Daemons, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        daemons.assert_running()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {name}\n{daemons.log_tail(name, 1500)}" for name in daemons.processes)
            pytest.fail(f"{what}: not within {within}s. {diagnostics()}\n{logs}")
        time.sleep(2)


@pytest.fixture(scope="module")
def observed(airflow_bin, platform, servers, release):  # noqa: F811
    OBSERVED.parent.mkdir(parents=True, exist_ok=True)
    logs = OBSERVED.parent / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    dags = Path(tempfile.mkdtemp(prefix="metrics-e2e-dags-"))
    for name, text in DAG_FILES.items():
        (dags / name).write_text(text)

    listener = StatsdListener()
    api_port = _free_port()
    env = async_env(platform, servers, servers["pgbouncer"])
    env.update({f"AIRFLOW__METRICS__{key.upper()}": value for key, value in release["metrics"].items()})
    env.update({
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        **SPEEDUPS,
    })
    if os.environ.get("AIRFLOW_EXTRA_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["AIRFLOW_EXTRA_PYTHONPATH"]
    metadata = with_host_and_port(platform["metadata_url"], "127.0.0.1", servers["pgbouncer"])
    daemons = Daemons(airflow_bin, env, logs)
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        has_statsd = subprocess.run([str(airflow_bin.parent / "python"), "-c", "import statsd"], env=env,
                                    capture_output=True, text=True)
        if has_statsd.returncode != 0:
            pytest.fail("Airflow's virtualenv has no `statsd` package, so Airflow would send no metrics at all "
                        "(the apache/airflow image installs the `statsd` extra): requirements/e2e.in needs "
                        "apache-airflow[postgres,statsd], or set AIRFLOW_EXTRA_PYTHONPATH")
        migrated = airflow(airflow_bin, env, "db", "migrate")
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        timings["migrated"] = time.monotonic() - started

        daemons.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                      "--workers", "1", "--apps", "execution")
        daemons.start("scheduler", "scheduler", "--skip-serve-logs")
        daemons.start("dag-processor", "dag-processor")
        daemons.start("triggerer", "triggerer", "--skip-serve-logs")
        daemons.start("celery-worker", "celery", "worker", "--concurrency", "3", "--skip-serve-logs",
                      "--without-mingle", "--without-gossip")

        dag_ids = (SCHEDULED_DAG, FAILING_DAG, HEARTBEAT_DAG)
        _wait(lambda: len(_query(metadata, "select dag_id from serialized_dag where dag_id in %s",
                                 dag_ids)) == len(dag_ids),
              DAGS_PARSED_WITHIN, "the DAG processor serialises the test DAGs", daemons)
        timings["parsed"] = time.monotonic() - started

        commands = [["dags", "unpause", "--treat-dag-id-as-regex", "--yes", "^metrics_e2e"],
                    ["dags", "trigger", FAILING_DAG], ["dags", "trigger", HEARTBEAT_DAG]]
        clis = [subprocess.Popen([str(airflow_bin), *command], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for command in commands]
        for command, cli in zip(commands, clis, strict=True):
            _, stderr = cli.communicate(timeout=300)
            assert cli.returncode == 0, f"airflow {' '.join(command)}: {stderr[-2000:]}"

        def runs() -> dict[str, set[str]]:
            found = defaultdict(set)
            for dag_id, state in _query(metadata, "select dag_id, state from dag_run where dag_id in %s", dag_ids):
                found[dag_id].add(state)
            return found

        def finished() -> bool:
            states = runs()
            return ("success" in states[SCHEDULED_DAG] and "failed" in states[FAILING_DAG]
                    and listener.saw("airflow.task_instances_without_heartbeats_killed"))

        def diagnostics() -> str:
            tis = _query(metadata, "select dag_id, task_id, state from task_instance order by dag_id, task_id")
            return f"runs: {dict(runs())}; task instances: {tis}"

        _wait(finished, RUNS_FINISHED_WITHIN, "the runs finish and a task is killed for want of heartbeats",
              daemons, diagnostics)
        timings["runs_finished"] = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        daemons.assert_running()
    finally:
        exit_codes = daemons.stop(["celery-worker", "triggerer", "dag-processor", "scheduler"])
        exit_codes.update(daemons.stop(["api-server"]))
        time.sleep(1)
        listener.close()
        shutil.rmtree(dags, ignore_errors=True)
    timings["stopped"] = time.monotonic() - started

    config = MappingConfig.from_yaml(release["mappings_yml"])
    exporter = Exporter(config)
    unparsable, raw = [], {}
    outcomes = []
    for line in listener.lines():
        try:
            events = parse_line(line)
        except LineError as error:
            unparsable.append(f"{line!r}: {error}")
            continue
        name = line.split(":", 1)[0]
        entry = raw.setdefault(name, {"types": set(), "count": 0, "last_line": line})
        entry["count"] += 1
        entry["last_line"] = line
        entry["types"].update(event.statsd_type for event in events)
        outcomes.extend(exporter.feed(events))

    series: dict[str, dict] = {}
    mapped: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    for outcome in outcomes:
        result = outcome.result
        mapped.setdefault(outcome.event.name, {
            "prometheus_name": result.name, "labels": result.labels, "type": outcome.prometheus_type,
            "mapping": result.mapping.match if result.mapping else None, "dropped": outcome.dropped})
        if outcome.dropped:
            dropped[outcome.event.name] = outcome.dropped
        for name, keys in outcome.series:
            entry = series.setdefault(name, {"type": outcome.prometheus_type, "label_keys": set(), "from": set()})
            entry["label_keys"].add(keys)
            entry["from"].add(outcome.event.name)

    result = {
        "exporter_image": release["exporter_image"],
        "mapping_configmap": release["mappings_configmap"],
        "metrics_config": {**release["metrics"], "statsd_host": "127.0.0.1 (the test's listener)"},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "exit_codes": exit_codes,
        "lines": len(listener.lines()),
        "unparsable": unparsable,
        "statsd": {name: {"types": sorted(v["types"]), "count": v["count"], "last_line": v["last_line"],
                          **mapped.get(name, {})} for name, v in sorted(raw.items())},
        "series": {name: {"type": v["type"], "label_keys": sorted(list(k) for k in v["label_keys"]),
                          "from": sorted(v["from"])[:12], "from_count": len(v["from"])}
                   for name, v in sorted(series.items())},
        "dropped": dropped,
    }
    OBSERVED.write_text(json.dumps(result, indent=1, sort_keys=False))
    return result


# ---------------------------------------------------------------------------------------------------------
# Tests


# What the Airflow part must produce, whatever the rules: the statsd names (as sent, with the release's prefix).
ESSENTIAL = (
    "scheduler_heartbeat", "dag_processor_heartbeat", "triggerer_heartbeat",
    "executor.open_slots", "executor.queued_tasks", "executor.running_tasks",
    "ti_successes", "ti_failures", "task_instances_without_heartbeats_killed",
    "pool.open_slots.default_pool", "pool.running_slots.default_pool", "pool.queued_slots.default_pool",
    "pool.deferred_slots.default_pool", "pool.scheduled_slots.default_pool", "pool.starving_tasks.default_pool",
    f"dagrun.duration.success.{SCHEDULED_DAG}", f"dagrun.duration.failed.{FAILING_DAG}",
    f"dagrun.schedule_delay.{SCHEDULED_DAG}", "dag_processing.import_errors",
    "triggerer.capacity_left", "triggers.running", f"ti.running.default.{SCHEDULED_DAG}.work",
)


def test_airflow_sends_the_metrics_the_exporter_understands(observed, release):
    prefix = release["metrics"].get("statsd_prefix", "airflow")
    sent = set(observed["statsd"])
    assert observed["unparsable"] == []
    missing = [name for name in ESSENTIAL if f"{prefix}.{name}" not in sent]
    assert not missing, f"Airflow did not send {missing}; it sent {sorted(sent)}"
    # The broken file counts: the gauge is the number of files that failed to import.
    last = observed["statsd"][f"{prefix}.dag_processing.import_errors"]["last_line"]
    assert float(last.split(":", 1)[1].split("|", 1)[0]) >= 1, last


def test_every_airflow_metric_the_alerts_and_dashboards_use_is_produced(request, release):
    rules, recorded = rule_exprs(release["run"])
    exprs = [*rules, *dashboard_exprs()]
    used: dict[str, list[str]] = defaultdict(list)
    for where, expr in exprs:
        for name in airflow_names(expr) - recorded:
            used[name].append(where)
    assert len(used) >= MIN_USED_NAMES, (
        f"only {len(used)} airflow_* metric names found in the alert rules and dashboards ({sorted(used)}): "
        f"{len(rules)} rule expressions from {PROMETHEUS_RULE} registrations of the prod stack and "
        f"{len(exprs) - len(rules)} from {DASHBOARDS}/*.json")

    observed = request.getfixturevalue("observed")
    produced = set(observed["series"])
    missing = sorted(set(used) - produced)
    lines = []
    for name in missing:
        closest = difflib.get_close_matches(name, produced, n=4, cutoff=0.5)
        lines.append(f"  {name} (used by {', '.join(sorted(set(used[name]))[:3])}); closest produced: "
                     f"{', '.join(closest) or 'none'}")
    assert not missing, ("airflow_* names used by the alert rules/dashboards that the release's statsd mapping "
                         f"does not produce from what Airflow sends (see {OBSERVED}):\n" + "\n".join(lines))


def test_the_labels_the_alerts_and_dashboards_select_on_are_produced(request, release):
    """A used name is not enough: `airflow_pool_running_slots{pool!=""}` selects nothing when that name only
    arrives unlabelled (a per-pool name that fell through the mapping, plus its untagged twin)."""
    rules, recorded = rule_exprs(release["run"])
    selectors = [(where, name, labels) for where, expr in [*rules, *dashboard_exprs()]
                 for name, labels in required_labels(expr) if labels and name not in recorded]
    observed = request.getfixturevalue("observed")
    problems = []
    for where, name, labels in selectors:
        if name not in observed["series"]:
            continue  # not produced at all: the test above says so
        label_sets = [set(keys) for keys in observed["series"][name]["label_keys"]]
        if not any(labels <= keys for keys in label_sets):
            problems.append(f"  {name}{{{', '.join(sorted(labels))}}} ({where}): produced only with the label "
                            f"sets {sorted(sorted(keys) for keys in label_sets)}")
    assert not problems, ("selectors of the alert rules/dashboards that need labels the release's statsd mapping "
                          f"does not give (see {OBSERVED}):\n" + "\n".join(sorted(set(problems))))
