"""CloudNativePG, the in-cluster engine: the operator's and the Barman Cloud plugin's values, and the specs of the
Cluster, its object store and its Pooler."""

from __future__ import annotations

from typing import Optional

import pulumi

from components import workloads as w
from components.database.settings import DatabaseSettings
from components.database.urls import DATABASE_NAME
from components.pods import resources

CNPG_CHARTS = "https://cloudnative-pg.github.io/charts"
BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
OBJECT_STORE = "airflow-db-backups"
RESTORE_SOURCE = "backup-origin"

def operator_values(ha: bool, placement: Optional[dict] = None) -> dict:
    return {
        **(placement or {}),
        # Leader election lets a second operator take over at once.
        "replicaCount": 2 if ha else 1,
        "crds": {"create": True},
        "resources": resources("100m", "128Mi", memory_limit="512Mi"),
        # The operator's PodMonitor is Observability's (it needs its CRDs); the official CloudNativePG
        # dashboard is a plain ConfigMap in the operator's namespace, where Grafana's sidecar looks too: in the
        # monitoring namespace the operator would wait for what that namespace waits for (its volumes' drivers,
        # the load balancer controller).
        "monitoring": {"podMonitorEnabled": False, "grafanaDashboard": {"create": True}},
    }


def barman_cloud_plugin_values(placement: Optional[dict] = None) -> dict:
    return {
        **(placement or {}),
        "replicaCount": 1,
        "resources": resources("50m", "64Mi", memory_limit="256Mi"),
    }


def object_store_spec(bucket_name: pulumi.Input[str], retention_days: int) -> dict:
    return {
        "retentionPolicy": f"{retention_days}d",
        "configuration": {
            "destinationPath": pulumi.Output.concat("s3://", bucket_name, "/"),
            # No static keys: the instances' service account gets a role through EKS Pod Identity.
            "s3Credentials": {"inheritFromIAMRole": True},
            "wal": {"compression": "gzip", "maxParallel": 4},
            "data": {"compression": "gzip", "jobs": 2},
        },
        # The sidecar the plugin injects into the instances (and a recovery Job) gets these.
        "instanceSidecarConfiguration": {"resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                                       "limits": {"memory": "512Mi"}}},
    }


def cluster_spec(settings: DatabaseSettings, system_zones: int, app_user_secret: pulumi.Input[str], keda_user_secret: pulumi.Input[str],
                 worker_user_secret: pulumi.Input[str], storage_class: Optional[str], backups: bool) -> dict:
    instances = settings.postgres_instances
    spec: dict = {
        "instances": instances,
        "primaryUpdateStrategy": "unsupervised",
        "enablePDB": True,
        "storage": {"size": f"{settings.postgres_storage_gib}Gi",
                    **({"storageClass": storage_class} if storage_class else {})},
        "resources": {"requests": {"cpu": settings.postgres_cpu, "memory": settings.postgres_memory},
                      "limits": {"memory": settings.postgres_memory}},
        "affinity": {
            "enablePodAntiAffinity": True,
            "topologyKey": "topology.kubernetes.io/zone",
            # One instance per zone, required only where the system nodes span enough zones to honour it:
            # otherwise the surplus instances would stay Pending.
            "podAntiAffinityType": "required" if 1 < instances <= system_zones else "preferred",
            **settings.system_placement,
        },
        "postgresql": {"parameters": {
            "max_connections": str(settings.postgres_max_connections),
            "log_min_duration_statement": "1000",
        }},
        "monitoring": {"enablePodMonitor": False},
        # KEDA's role, made and kept by CloudNativePG (its password from the Secret); the migration Job grants it
        # SELECT on task_instance once the table exists.
        "managed": {"roles": [{"name": w.POSTGRES_KEDA_USER, "ensure": "present", "login": True, "inherit": False,
                               "connectionLimit": w.POSTGRES_KEDA_CONNECTION_LIMIT,
                               "passwordSecret": {"name": keda_user_secret},
                               "comment": "KEDA: reads task_instance for the workers' queue"},
                              # The workers' role: Celery's results (the migration Job grants it those tables).
                              {"name": w.POSTGRES_WORKER_USER, "ensure": "present", "login": True, "inherit": False,
                               "passwordSecret": {"name": worker_user_secret},
                               "comment": "Airflow's workers: Celery's task results only"}]},
    }
    if settings.postgres_image:
        spec["imageName"] = settings.postgres_image
    if instances >= 3:
        # Quorum commit: every transaction is on at least one standby before it is acknowledged.
        spec["postgresql"]["synchronous"] = {"method": "any", "number": 1, "dataDurability": "required"}
    if backups:
        spec["plugins"] = [{
            "name": BARMAN_CLOUD_PLUGIN, "isWALArchiver": True,
            "parameters": {"barmanObjectName": OBJECT_STORE, "serverName": settings.postgres_backup_server_name},
        }]
    if settings.postgres_restore_target_time:
        spec["bootstrap"] = {"recovery": {
            "source": RESTORE_SOURCE,
            "database": DATABASE_NAME,
            "owner": w.POSTGRES_USER,
            "secret": {"name": app_user_secret},
            "recoveryTarget": {"targetTime": settings.postgres_restore_target_time},
        }}
        spec["externalClusters"] = [{
            "name": RESTORE_SOURCE,
            "plugin": {"name": BARMAN_CLOUD_PLUGIN, "parameters": {
                "barmanObjectName": OBJECT_STORE, "serverName": settings.postgres_restore_from_server_name}},
        }]
    else:
        spec["bootstrap"] = {"initdb": {"database": DATABASE_NAME, "owner": w.POSTGRES_USER,
                                        "secret": {"name": app_user_secret}}}
    return spec


POOLER_RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}


def pooler_spec(settings: DatabaseSettings) -> dict:
    return {
        "cluster": {"name": w.POSTGRES_CLUSTER},
        "instances": settings.pgbouncer_instances,
        "type": "rw",
        "pgbouncer": {
            # Airflow opens and closes many short transactions; transaction pooling multiplexes them.
            "poolMode": "transaction",
            "parameters": {
                "default_pool_size": str(settings.pgbouncer_pool_size),
                "max_client_conn": str(settings.pgbouncer_max_client_connections),
                # asyncpg (Airflow's async engine) uses named prepared statements; PgBouncer 1.21+ (the
                # Pooler runs 1.25) keeps them working in transaction mode when it may track them.
                "max_prepared_statements": "200",
                # Every client over TCP uses TLS (the published URLs ask for it); CloudNativePG's default,
                # `prefer`, would also take plaintext. Its admin and metrics connections use the unix socket,
                # which PgBouncer exempts.
                "client_tls_sslmode": "require",
            },
        },
        # CloudNativePG gives PgBouncer the resources of the template's container named `pgbouncer`, and its
        # init container those of the template's init container named `bootstrap-controller` (none otherwise).
        "template": {"metadata": {"labels": dict(w.POSTGRES_POOLER_PODS)}, "spec": {
            "containers": [{"name": "pgbouncer", "resources": POOLER_RESOURCES}],
            "initContainers": [{"name": "bootstrap-controller", "resources": POOLER_RESOURCES}],
            **settings.system_placement,
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": dict(w.POSTGRES_POOLER_PODS)}}],
        }},
    }
