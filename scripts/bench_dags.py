"""Scheduling latency and task throughput of Airflow with the configuration the program produces, beside the
same run with the chart's default configuration (`make bench`; figures, not a test: machines differ).

Both runs use the end-to-end tier's set-up (tests/support/airflow_platform.py, as tests/e2e/test_dags_e2e.py): PostgreSQL behind PgBouncer in transaction
mode and Redis on loopback, the API server, scheduler, DAG processor, triggerer and one Celery worker, with the
credentials and container environment of a stack's release (`--stack`, `local` by default: the configuration
sized for a small machine, which this benchmark runs on). They differ only in `airflow.cfg`: the one the release
renders, or the one the chart renders from its own defaults. Each starts with the release's migration Job
command (the chart's default pool size restored for the chart's configuration), triggers N runs of a DAG of T
parallel no-op tasks through the REST API and reads, from the metadata database, when each task was queued,
started and ended; the worker's peak memory (PSS of its processes, sampled twice a second) is printed beside.

    PYTHONPATH=tests python -m scripts.bench_dags [--stack local|prod] [--runs N] [--tasks T] [--repeat R] [--json PATH]

(from the repository's root; tests/ on the path for the tests' support package: `make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import yaml

from mock_engine import REPO
from support.airflow_cli import airflow
from support.airflow_platform import Platform, Servers, _api_up, create_admin, rendered_release, run_job_command
from support.daemons import _descendants, _query
from support.rendering import _render

BENCH_DAG = "bench_parallel"
# [core] default_pool_task_slot_count's default (airflow/config_templates/config.yml).
AIRFLOW_DEFAULT_POOL_SLOTS = 128


def dag_file(tasks: int) -> str:
    return f'''
from airflow.sdk import dag, task


@dag(dag_id="{BENCH_DAG}", schedule=None, catchup=False, max_active_runs=64, max_active_tasks=1024)
def bench():
    @task
    def noop(index: int):
        return index

    noop.expand(index=list(range({tasks})))


bench()
'''


def chart_default_cfg() -> str:
    documents = _render("airflow", "airflow", "airflow", json.dumps({"executor": "CeleryExecutor"}))
    return next(d for d in documents if d["kind"] == "ConfigMap" and "airflow.cfg" in (d.get("data") or {}))[
        "data"]["airflow.cfg"]


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def proportional_memory(pid: int) -> int:
    """Bytes of memory a process and every process under it hold, shared pages divided among their sharers
    (PSS, /proc/<pid>/smaps_rollup): what a pod's processes together count against its memory."""
    total = 0
    for member in (pid, *_descendants(pid)):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


class PeakMemory:
    """The highest proportional memory of a process tree, sampled twice a second while the benchmark runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopped.wait(0.5):
            self.peak = max(self.peak, proportional_memory(self.pid))

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join()
        return self.peak


def measure(airflow_bin: Path, rendered: dict, label: str, runs: int, tasks: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{label.replace(' ', '-')}-"))
    workdir.chmod(0o755)
    servers = Servers(workdir, rendered)
    platform = Platform(airflow_bin, rendered, servers, workdir / "airflow-home")
    try:
        (platform.home / "dags" / f"{BENCH_DAG}.py").write_text(dag_file(tasks))
        # The release's migration Job (its grants give the workers' own database role what it needs); with the
        # chart's configuration, the default pool back at Airflow's default size, which the Job changes.
        migrated = run_job_command(platform, rendered["migrate"]["args"])
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        if label == "chart default":
            assert airflow(airflow_bin, platform.env, "pools", "set", "default_pool", str(AIRFLOW_DEFAULT_POOL_SLOTS),
                           "Default pool").returncode == 0
        platform.daemons.start("api-server", "api-server", "--host", "127.0.0.1", "--port",
                               str(platform.ports["api"]), "--workers", "1")
        for component in ("scheduler", "dag-processor", "triggerer"):
            platform.daemons.start(component, component)
        worker = platform.daemons.processes[platform.start_worker()]
        from support.servers import with_host_and_port
        metadata = with_host_and_port(rendered["secrets"]["airflow-metadata-connection"]["connection"],
                                      "127.0.0.1", servers.pgbouncer.port)
        platform.wait(lambda: _query(metadata, "select count(*) from serialized_dag where dag_id = %s",
                                     BENCH_DAG)[0][0] == 1, 300, "the DAG is parsed")
        platform.wait(lambda: _api_up(platform.api), 120, "the API answers")
        assert create_admin(platform).returncode == 0
        assert platform.api.login(*platform.admin) in (200, 201)
        memory = PeakMemory(worker.pid)
        started = time.monotonic()
        run_ids = [platform.api.trigger(BENCH_DAG) for _ in range(runs)]
        platform.wait(lambda: all(platform.api.run_state(BENCH_DAG, run_id) in ("success", "failed")
                                  for run_id in run_ids), 1800, "the benchmark runs finish")
        polled = time.monotonic() - started
        worker_peak_mib = memory.stop() / 2**20
        # Wall time from the database, not from polling: first run created to last run ended.
        [(created, ended)] = _query(metadata, "select min(queued_at), max(end_date) from dag_run where dag_id = %s",
                                    BENCH_DAG)
        wall = (ended - created).total_seconds()
        rows = _query(metadata, "select queued_dttm, start_date, end_date, state from task_instance "
                                "where dag_id = %s", BENCH_DAG)
        latencies = [(start - queued).total_seconds() for queued, start, _, _ in rows if queued and start]
        first_queued = min(queued for queued, _, _, _ in rows if queued)
        last_end = max(end for _, _, end, _ in rows if end)
        succeeded = sum(1 for *_, state in rows if state == "success")
        span_minutes = (last_end - first_queued).total_seconds() / 60
        return {"label": label, "runs": runs, "tasks_per_run": tasks, "task_instances": len(rows),
                "succeeded": succeeded, "queued_to_running_p50_s": round(percentile(latencies, 0.5), 2),
                "queued_to_running_p95_s": round(percentile(latencies, 0.95), 2),
                "tasks_per_minute": round(succeeded / span_minutes, 1) if span_minutes else None,
                "wall_seconds": round(wall, 1), "polled_seconds": round(polled, 1),
                "worker_memory_peak_mib": round(worker_peak_mib)}
    finally:
        platform.daemons.stop(list(platform.daemons.processes))
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="local", help="the stack whose release is measured (default local)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the stack changed for this measurement (YAML value), e.g. workerConcurrency=16")
    parser.add_argument("--runs", type=int, default=3, help="DAG runs triggered at once (default 3)")
    parser.add_argument("--tasks", type=int, default=20, help="parallel tasks per run (default 20)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="measurements per configuration, alternating which goes first (default 2)")
    parser.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "airflow-bench.json")
    arguments = parser.parse_args()
    airflow_bin = Path(os.environ.get("AIRFLOW_BIN", REPO / ".venv-airflow" / "bin" / "airflow"))
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in arguments.set)}
    produced = rendered_release(arguments.stack, overrides or None)
    # The chart's own airflow.cfg: it lacks the async engine's connect args, which the release adds.
    configurations = {"produced": produced, "chart default": {**produced, "cfg": chart_default_cfg()}}
    results: dict[str, list[dict]] = {label: [] for label in configurations}
    for repetition in range(arguments.repeat):
        order = list(configurations) if repetition % 2 == 0 else list(reversed(configurations))
        for label in order:
            results[label].append(measure(airflow_bin, configurations[label], label, arguments.runs, arguments.tasks))
    machine = f"{host.machine()}, {os.cpu_count()} CPUs, Python {host.python_version()}"
    print(f"\nAirflow DAG benchmark ({machine}), {time.strftime('%Y-%m-%d')}, the {arguments.stack} stack: "
          f"{arguments.runs} runs x {arguments.tasks} parallel tasks, one Celery worker; median of {arguments.repeat} "
          f"(min-max){'; ' + ', '.join(arguments.set) if arguments.set else ''}")
    print(f"{'configuration':15s} {'tasks ok':>9s} {'queued->running p50':>22s} {'p95':>18s} {'tasks/min':>20s} "
          f"{'wall':>18s} {'worker memory (PSS)':>24s}")

    def cell(label: str, key: str, unit: str = "") -> str:
        values = [result[key] or 0 for result in results[label]]
        return f"{statistics.median(values):.1f}{unit} ({min(values):.1f}-{max(values):.1f})"
    for label in configurations:
        ok = sum(result["succeeded"] for result in results[label])
        total = sum(result["task_instances"] for result in results[label])
        print(f"{label:15s} {ok:>4d}/{total:<4d} {cell(label, 'queued_to_running_p50_s', 's'):>22s} "
              f"{cell(label, 'queued_to_running_p95_s', 's'):>18s} {cell(label, 'tasks_per_minute'):>20s} "
              f"{cell(label, 'wall_seconds', 's'):>18s} {cell(label, 'worker_memory_peak_mib', ' MiB'):>24s}")
    arguments.json.write_text(json.dumps({"machine": machine, "stack": arguments.stack, "results": results},
                                         indent=1))
    print(f"written to {arguments.json}")


if __name__ == "__main__":
    main()
