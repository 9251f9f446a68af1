"""The platform's alert rules, one group per area, as data: Observability turns each group into a
PrometheusRule, docs/alerts.md has a section per alert (its runbook_url anchor), and tests/test_alerts.py proves
with `promtool test rules` that every alert fires on a matching series and stays silent on a healthy one.

Metric names are the ones the exporters really publish:
- Airflow: what Airflow 3.1 sends over statsd, after the release's statsd_exporter mapping (the chart's
  mappings plus AirflowRelease's STATSD_EXTRA_MAPPINGS); proven against real Airflow in
  tests/e2e/test_metrics_e2e.py.
- PostgreSQL: CloudNativePG 1.30's instance manager (`cnpg_collector_*`, the default monitoring queries
  `cnpg_pg_replication_*`, `cnpg_pg_stat_archiver_*`), the Barman Cloud plugin
  (`barman_cloud_cloudnative_pg_io_*`) and its PgBouncer exporter (`cnpg_pgbouncer_*`).
- Redis: the redis_exporter sidecar of redis-ha (`redis_*`).
- Platform: kube-state-metrics, the kubelet, and KEDA's operator (`keda_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

from components import workloads as w
from components.observability.settings import ObservabilitySettings

AIRFLOW_NS = f'namespace="{w.AIRFLOW_NAMESPACE}"'
COMPONENTS = "airflow-(scheduler|dag-processor|triggerer|api-server)"
# Prometheus names a PodMonitor's scrape job <namespace>/<monitor> (Observability's monitors).
INSTANCES_JOB = f"{w.MONITORING_NAMESPACE}/{w.POSTGRES_CLUSTER}"
POOLER_JOB = f"{w.MONITORING_NAMESPACE}/{w.POSTGRES_POOLER}"
# The Airflow chart's PgBouncer (Observability's airflow-pgbouncer monitor), in front of Aurora / RDS.
CHART_PGBOUNCER_JOB = f"{w.MONITORING_NAMESPACE}/{w.CHART_PGBOUNCER}"


@dataclass(frozen=True)
class ObservedStores:
    """What the thresholds need to know of the in-cluster stores (Database's and Broker's settings)."""
    postgres_instances: int
    pgbouncer_max_client_connections: int
    redis_replicas: int


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str          # critical: act now; warning: act today
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        """The heading's anchor in docs/alerts.md (GitHub: lower case, spaces to dashes)."""
        return self.name.lower()

    def rule(self, runbook_base_url: str, area: str) -> dict:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "area": area},
            "annotations": {"summary": self.summary, "description": self.description,
                            "runbook_url": f"{runbook_base_url}#{self.anchor}"},
        }


def airflow_alerts(settings: ObservabilitySettings) -> list[Alert]:
    queued_for = f"{settings.airflow_queued_alert_minutes}m"
    return [
        Alert("AirflowSchedulerHeartbeatStopped",
              "sum(rate(airflow_scheduler_heartbeat[5m])) == 0 or absent(airflow_scheduler_heartbeat)",
              "5m", "critical", "No Airflow scheduler is heartbeating",
              "No scheduler has sent a heartbeat for 5 minutes: no task is being scheduled."),
        Alert("AirflowDagProcessorHeartbeatStopped",
              "sum(rate(airflow_dag_processor_heartbeat[5m])) == 0 or absent(airflow_dag_processor_heartbeat)",
              "5m", "critical", "No Airflow DAG processor is heartbeating",
              "No DAG processor has sent a heartbeat for 5 minutes: DAG changes are not being picked up."),
        Alert("AirflowTriggererHeartbeatStopped",
              "sum(rate(airflow_triggerer_heartbeat[5m])) == 0 or absent(airflow_triggerer_heartbeat)",
              "5m", "critical", "No Airflow triggerer is heartbeating",
              "No triggerer has sent a heartbeat for 5 minutes: deferred tasks will not resume."),
        Alert("AirflowDagImportErrors",
              "max(airflow_dag_processing_import_errors) > 0",
              "10m", "warning", "DAG files fail to import",
              "{{ $value }} DAG file(s) fail to import: their DAGs are missing from Airflow."),
        Alert("AirflowTaskFailureRateHigh",
              "sum(increase(airflow_ti_failures[30m])) > 5 and sum(increase(airflow_ti_failures[30m])) / "
              "clamp_min(sum(increase(airflow_ti_failures[30m])) + sum(increase(airflow_ti_successes[30m])), 1) > 0.2",
              "5m", "warning", "Many Airflow tasks fail",
              "More than 5 task instances and more than 20 % of all finished task instances failed in 30 minutes."),
        # Task-instance states per pool: the Celery executor counts a task waiting in Redis as running, so its
        # own gauges cannot tell that workers take no work.
        Alert("AirflowTasksQueuedNotRunning",
              f'sum(min_over_time(airflow_pool_queued_slots{{pool!=""}}[{queued_for}])) > 0 and '
              f'sum(max_over_time(airflow_pool_running_slots{{pool!=""}}[{queued_for}])) == 0',
              "2m", "critical", "Airflow tasks are queued but none runs",
              f"Tasks have been queued for {queued_for} while no task runs: the workers do not take work."),
        # Every report for 10 minutes said no slot was open (both schedulers write the same series).
        Alert("AirflowExecutorOutOfSlots",
              "max(max_over_time(airflow_executor_open_slots[10m])) < 1",
              "5m", "warning", "The executor has no open slots",
              "All executor slots (core.parallelism) are taken: raise workerMaxReplicas or parallelism, or find "
              "the long-running tasks."),
        Alert("AirflowTaskInstancesKilledWithoutHeartbeat",
              "sum(increase(airflow_task_instances_without_heartbeats_killed[15m])) > 0",
              "0m", "warning", "Task instances were killed without a heartbeat",
              "Task instances stopped heartbeating and were failed by the scheduler (zombies): a worker died or "
              "was evicted mid-task."),
        Alert("AirflowPoolStarving",
              'max by (pool) (min_over_time(airflow_pool_starving_tasks{pool!=""}[15m])) > 0',
              "0m", "warning", "An Airflow pool is starving",
              "Pool {{ $labels.pool }} has had tasks waiting for a free slot for 15 minutes."),
        # The heartbeat alerts above fire only when every replica stopped (they share one counter).
        Alert("AirflowComponentReplicasUnavailable",
              f'kube_deployment_status_replicas_available{{{AIRFLOW_NS}, deployment=~"{COMPONENTS}"}} '
              f'< kube_deployment_spec_replicas{{{AIRFLOW_NS}, deployment=~"{COMPONENTS}"}}',
              "15m", "warning", "An Airflow component runs fewer replicas than asked for",
              "{{ $labels.deployment }} has had fewer available replicas than desired for 15 minutes: one more "
              "failure takes it down."),
        Alert("AirflowApiServerNotReady",
              f'kube_deployment_status_replicas_available{{{AIRFLOW_NS}, deployment="airflow-api-server"}} < 1',
              "5m", "critical", "No Airflow API server is ready",
              "The Airflow UI, REST API and the workers' execution API are unavailable."),
    ]


def postgres_alerts(settings: ObservabilitySettings, stores: ObservedStores) -> list[Alert]:
    cluster = f'cluster="{w.POSTGRES_CLUSTER}"'
    standbys = stores.postgres_instances - 1
    alerts = [
        # Either PostgreSQL does not answer its instance manager, or the pod cannot be scraped at all.
        Alert("PostgresInstanceDown",
              f'cnpg_collector_up{{{cluster}}} == 0 or up{{job="{INSTANCES_JOB}"}} == 0',
              "5m", "critical", "A PostgreSQL instance is down",
              "Instance {{ $labels.pod }} of the metadata database does not answer."),
        Alert("PostgresNoPrimary",
              f"sum(cnpg_pg_replication_in_recovery{{{cluster}}} == bool 0) < 1 "
              f"or absent(cnpg_pg_replication_in_recovery{{{cluster}}})",
              "2m", "critical", "The metadata database has no primary",
              "No instance is out of recovery: Airflow cannot write."),
        Alert("PostgresReplicationLagHigh",
              f"max by (pod) (cnpg_pg_replication_lag{{{cluster}}}) > {settings.postgres_replication_lag_alert_seconds}",
              "5m", "warning", "A PostgreSQL standby lags behind",
              f"Standby {{{{ $labels.pod }}}} is {{{{ $value }}}} s behind the primary "
              f"(threshold {settings.postgres_replication_lag_alert_seconds} s)."),
        Alert("PostgresWalArchivingFailing",
              f"cnpg_pg_stat_archiver_last_failed_time{{{cluster}}} > cnpg_pg_stat_archiver_last_archived_time{{{cluster}}}",
              "10m", "critical", "WAL archiving to the backups bucket fails",
              "The last attempt to archive WAL failed: point-in-time recovery stops at the last archived segment."),
        # CloudNativePG 1.30's PgBouncer exporter does not publish an `up` of its own: the scrape's `up`, and
        # the exporter's failure to query PgBouncer.
        Alert("PgBouncerDown",
              f'up{{job="{POOLER_JOB}"}} == 0 or absent(up{{job="{POOLER_JOB}"}}) '
              f"or cnpg_pgbouncer_last_collection_error{{{AIRFLOW_NS}}} == 1",
              "5m", "critical", "PgBouncer is down",
              "A PgBouncer pod does not reach PostgreSQL, or none reports: Airflow's database connections fail."),
        Alert("PgBouncerClientConnectionsNearLimit",
              f"max by (pod) (cnpg_pgbouncer_lists_used_clients{{{AIRFLOW_NS}}}) > "
              f"{int(stores.pgbouncer_max_client_connections * 0.9)}",
              "10m", "warning", "PgBouncer client connections near max_client_conn",
              f"{{{{ $labels.pod }}}} serves {{{{ $value }}}} clients, above 90 % of "
              f"pgbouncerMaxClientConnections ({stores.pgbouncer_max_client_connections})."),
    ]
    if standbys > 0:
        alerts.append(Alert(
            "PostgresStreamingReplicasMissing",
            f"max(cnpg_pg_replication_streaming_replicas{{{cluster}}}) < {standbys}",
            "10m", "warning", "Fewer standbys stream than the cluster has",
            f"The primary streams to {{{{ $value }}}} standby(s), {standbys} expected: a zone or instance is lost "
            "and synchronous commit may block."))
    if settings.is_aws:
        backup = "barman_cloud_cloudnative_pg_io_last_available_backup_timestamp"
        alerts.append(Alert(
            "PostgresBackupTooOld",
            # Guarded against 0: the plugin reports 0 before the first backup exists.
            f"(time() - max({backup}{{{cluster}}}) > 26 * 3600) and max({backup}{{{cluster}}}) > 0",
            "30m", "critical", "The last database backup is more than 26 hours old",
            "The daily base backup has not completed: restores would replay more WAL, or fail if it is lost."))
    return alerts


def chart_pgbouncer_alerts(settings: ObservabilitySettings) -> list[Alert]:
    """The chart's PgBouncer in front of Aurora / RDS; the database itself is watched from CloudWatch. Its
    exporter (jbub/pgbouncer_exporter 0.18) has no `up` gauge: when it cannot query PgBouncer it still answers
    the scrape, without any of its PgBouncer series (internal/collector/exporter.go, Collect)."""
    up = f'up{{job="{CHART_PGBOUNCER_JOB}"}}'
    return [
        Alert("ChartPgBouncerDown",
              f"{up} == 0 or absent({up}) "
              f"or ({up} == 1 unless on (namespace, pod) pgbouncer_exporter_lists_items{{job=\"{CHART_PGBOUNCER_JOB}\"}})",
              "5m", "critical", "PgBouncer in front of the managed database is down",
              "A PgBouncer pod does not answer, or none reports: Airflow's database connections fail."),
    ]


def redis_alerts(stores: ObservedStores) -> list[Alert]:
    # Only redis-ha's exporter sidecars publish redis_* in the Airflow namespace (a PodMonitor's targets
    # carry no `service` label).
    redis = AIRFLOW_NS
    replicas = stores.redis_replicas - 1
    alerts = [
        Alert("RedisNoMaster",
              f'(count(redis_instance_info{{{redis}, role="master"}}) or vector(0)) < 1',
              "2m", "critical", "The Celery broker has no Redis master",
              "No Redis server is master: Celery cannot queue tasks."),
        Alert("RedisMasterLinkDown",
              f"redis_master_link_up{{{redis}}} == 0",
              "5m", "warning", "A Redis replica lost its master",
              "Replica {{ $labels.pod }} is not replicating from the master."),
        Alert("RedisMemoryNearMaxmemory",
              f"redis_memory_used_bytes{{{redis}}} / redis_memory_max_bytes{{{redis}}} > 0.9 "
              f"and redis_memory_max_bytes{{{redis}}} > 0",
              "10m", "warning", "The Celery broker is nearly full",
              "Redis holds {{ $value | humanizePercentage }} of maxmemory; when full it refuses new tasks."),
    ]
    if replicas > 0:
        alerts.append(Alert(
            "RedisReplicasMissing",
            f'max(redis_connected_slaves{{{redis}}} and on (pod) redis_instance_info{{{redis}, role="master"}}) '
            f"< {replicas}",
            "10m", "warning", "The Redis master has fewer replicas than expected",
            f"The master has {{{{ $value }}}} replica(s), {replicas} expected."))
    return alerts


def platform_alerts(settings: ObservabilitySettings) -> list[Alert]:
    return [
        Alert("AirflowPodCrashLooping",
              f'max by (pod, container) (kube_pod_container_status_waiting_reason{{{AIRFLOW_NS}, '
              f'reason="CrashLoopBackOff"}}) >= 1',
              "10m", "warning", "A pod in the Airflow namespace is crash-looping",
              "{{ $labels.pod }} ({{ $labels.container }}) keeps restarting."),
        Alert("AirflowPodOOMKilled",
              f"(increase(kube_pod_container_status_restarts_total{{{AIRFLOW_NS}}}[15m]) > 0) and on "
              f"(namespace, pod, container) (kube_pod_container_status_last_terminated_reason{{{AIRFLOW_NS}, "
              f'reason="OOMKilled"}} == 1)',
              "0m", "warning", "A container in the Airflow namespace was OOM-killed",
              "{{ $labels.pod }} ({{ $labels.container }}) ran out of memory and was restarted."),
        Alert("PersistentVolumeFillingUp",
              f'kubelet_volume_stats_used_bytes{{namespace=~"{w.AIRFLOW_NAMESPACE}|{w.MONITORING_NAMESPACE}"}} '
              f'/ kubelet_volume_stats_capacity_bytes{{namespace=~"{w.AIRFLOW_NAMESPACE}|{w.MONITORING_NAMESPACE}"}} > 0.85',
              "10m", "warning", "A volume is more than 85 % full",
              "{{ $labels.persistentvolumeclaim }} is {{ $value | humanizePercentage }} full."),
        Alert("KedaScalerErrors",
              "sum by (scaledObject) (increase(keda_scaler_detail_errors_total[10m])) > 0",
              "10m", "warning", "KEDA cannot read the Celery queue",
              "The worker autoscaler's scaler fails: workers are no longer scaled with the queue."),
        Alert("NodeNotReady",
              'kube_node_status_condition{condition="Ready", status="true"} == 0',
              "10m", "warning", "A node is not ready",
              "{{ $labels.node }} has not been Ready for 10 minutes; its pods are being evicted."),
    ]


def alert_groups(settings: ObservabilitySettings, stores: ObservedStores) -> dict[str, list[Alert]]:
    """Alerts by area; each area becomes one PrometheusRule. The in-cluster engines' rules exist only when those
    engines run: Aurora, RDS and ElastiCache are watched from CloudWatch, outside this platform."""
    groups = {"airflow": airflow_alerts(settings)}
    if settings.managed_database:
        groups["pgbouncer"] = chart_pgbouncer_alerts(settings)
    else:
        groups["postgresql"] = postgres_alerts(settings, stores)
    if not settings.managed_broker:
        groups["redis"] = redis_alerts(stores)
    groups["platform"] = platform_alerts(settings)
    return groups


def prometheus_rule_spec(area: str, alerts: list[Alert], runbook_base_url: str) -> dict:
    return {"groups": [{"name": f"airflow-platform-{area}",
                        "rules": [alert.rule(runbook_base_url, area) for alert in alerts]}]}

