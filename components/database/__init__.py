"""Database: HA PostgreSQL for Airflow's metadata, run by the CloudNativePG operator.

Operator and Barman Cloud plugin (Helm), a `Cluster` spread over zones with synchronous replication,
continuous WAL archiving and daily base backups to S3 (an `ObjectStore`, credentials from Pod Identity),
point-in-time restore as a setting, a PgBouncer `Pooler` in transaction mode, and the Secret with the
metadata connection URL that the Airflow chart and KEDA read.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import workloads as w
from components.database import managed as rds
from components.database.settings import DatabaseSettings
from components.generated_secrets import RDS_SPECIAL, generated_password, secrets_checksum
from components.handles import CertificateAuthority, ClusterHandle, DatabaseCredentials, DatabaseHandle, StorageHandle
from components.helm import chart_release
from components.namespaces import namespace_with_pod_security
from components.pods import resources

CNPG_CHARTS = "https://cloudnative-pg.github.io/charts"
BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
OBJECT_STORE = "airflow-db-backups"
RESTORE_SOURCE = "backup-origin"
DATABASE_NAME = w.POSTGRES_DATABASE


def metadata_url(user: str, password: str, host: str, port: int, database: str, sslmode: str = "require",
                 sslrootcert: str = "") -> str:
    """The metadata URL as Airflow (SQLAlchemy) and KEDA read it. The password may hold any character,
    so it is percent-encoded; `safe=""` encodes `/` too."""
    root = f"&sslrootcert={quote(sslrootcert)}" if sslrootcert else ""
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
            f"?sslmode={sslmode}{root}")


def pgbouncer_stats_url(password: str) -> str:
    """What the chart's PgBouncer metrics exporter connects to: PgBouncer's admin console on loopback, over TLS."""
    return metadata_url(w.POSTGRES_USER, password, "127.0.0.1", rds.PGBOUNCER_PORT, "pgbouncer")


def cloudnative_pg_metadata_urls(password: str, keda_password: str, worker_password: str, host: str,
                                 port: int) -> dict[str, str]:
    """The Secret's keys with CloudNativePG (Airflow, its workers, KEDA and the cleanup -> its Pooler): TLS
    required."""
    url = metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME)
    return {"connection": url, w.ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_USER, password, host, port,
                                                                         DATABASE_NAME),
            w.WORKER_CONNECTION_KEY: metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port, DATABASE_NAME),
            w.WORKER_ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port,
                                                            DATABASE_NAME),
            w.KEDA_CONNECTION_KEY: metadata_url(w.POSTGRES_KEDA_USER, keda_password, host, port, DATABASE_NAME),
            w.CLEANUP_CONNECTION_KEY: url}


def managed_metadata_urls(password: str, keda_password: str, worker_password: str, host: str, port: int,
                          ca_file: str = w.METADATA_CA_FILE) -> dict[str, str]:
    """The Secret's keys with a managed engine (Airflow -> the chart's PgBouncer): Airflow verifies PgBouncer's
    certificate and name against the platform CA (`verify-full`; its async engine does the same through the
    connect args AirflowRelease gives it when that file exists), KEDA and the cleanup only require TLS."""
    return {
        "connection": metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME, "verify-full", ca_file),
        w.ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME),
        w.WORKER_CONNECTION_KEY: metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port, DATABASE_NAME,
                                            "verify-full", ca_file),
        w.WORKER_ASYNC_CONNECTION_KEY: async_metadata_url(w.POSTGRES_WORKER_USER, worker_password, host, port,
                                                        DATABASE_NAME),
        w.KEDA_CONNECTION_KEY: metadata_url(w.POSTGRES_KEDA_USER, keda_password, host, port, DATABASE_NAME, "require"),
        w.CLEANUP_CONNECTION_KEY: metadata_url(w.POSTGRES_USER, password, host, port, DATABASE_NAME, "require"),
    }


def async_metadata_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """The URL of Airflow's async engine (asyncpg). Airflow derives one from the sync URL by changing the
    driver only, and asyncpg refuses the libpq `sslmode` parameter (TypeError: unexpected keyword argument
    'sslmode'); its own spelling is `ssl`. SQLAlchemy's statement cache is off: behind PgBouncer in
    transaction mode a cached statement may live on another server connection (AirflowRelease also turns
    asyncpg's own cache off, which only connect_args can)."""
    return (f"postgresql+asyncpg://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
            "?ssl=require&prepared_statement_cache_size=0")


@dataclass
class DatabaseArgs:
    settings: DatabaseSettings
    cluster: ClusterHandle
    # The Airflow namespace (Security's): the database's Secrets, and CloudNativePG's cluster, live there.
    namespace: pulumi.Output[str]
    credentials: DatabaseCredentials
    # Issues PgBouncer's certificate (a managed engine) and the Barman Cloud plugin's.
    certificate_authority: CertificateAuthority
    # Where backups go and who may write there (CloudNativePG on AWS); the KMS key (a managed engine).
    storage: StorageHandle


class Database(pulumi.ComponentResource):
    """The metadata database behind a pooler, and the Secret with its URLs: CloudNativePG in the cluster, or
    Aurora / RDS with the Airflow chart's PgBouncer in front. `handle` is what its clients take."""

    handle: DatabaseHandle

    connection_secret_name: pulumi.Output[str]
    # Digest of the published URLs: the pods that read them roll when the password is rotated.
    connection_checksum: pulumi.Output[str]
    # The CloudNativePG operator's release (None with a managed engine).
    operator: Optional[k8s.helm.v3.Release]
    # Values the Airflow chart gets from the database side: its PgBouncer, with a managed engine ({} otherwise).
    airflow_chart_values: dict

    def __init__(self, name: str, args: DatabaseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Database", name, None, opts)
        settings = args.settings
        self._k8s = pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider)
        self._operators = pulumi.ResourceOptions(parent=self, provider=args.cluster.operators_provider)
        self.operator, self.airflow_chart_values = None, {}
        # Where the operator's chart puts its Grafana dashboard (CloudNativePG only).
        self.dashboard_namespace: Optional[pulumi.Output[str]] = None
        build, published_urls = ((self._build_managed, managed_metadata_urls) if settings.managed_database
                                 else (self._build_cloudnative_pg, cloudnative_pg_metadata_urls))
        pooler_host, pooler_port = build(name, args)
        urls = pulumi.Output.all(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password).apply(
            lambda passwords: published_urls(*passwords, pooler_host, pooler_port))
        connection = k8s.core.v1.Secret(
            f"{name}-metadata-connection",
            metadata={"name": w.METADATA_CONNECTION_SECRET, "namespace": args.namespace},
            string_data=pulumi.Output.secret(urls),
            opts=self._k8s)
        self.connection_secret_name = connection.metadata.name
        self.connection_checksum = secrets_checksum(urls.apply(lambda found: json.dumps(found, sort_keys=True)))
        self.handle = DatabaseHandle(
            connection_secret_name=self.connection_secret_name, connection_checksum=self.connection_checksum,
            airflow_chart_values=self.airflow_chart_values, operator_namespace=self.dashboard_namespace, ready=self)
        self.register_outputs({"connection_secret_name": self.connection_secret_name})

    def _build_managed(self, name: str, args: DatabaseArgs) -> tuple[str, int]:
        """Aurora or RDS, PgBouncer's configuration, certificate and metrics login, and the chart values that
        run PgBouncer. Returns where Airflow connects: PgBouncer's Service."""
        settings = args.settings
        if args.cluster.partition is None or args.cluster.account_id is None or args.storage.kms_key_arn is None \
                or args.certificate_authority.issuer_name is None:
            raise ValueError("Database: a managed engine needs the AWS partition and account, the KMS key and the "
                             "platform CA issuer")
        # The master user's: only the bootstrap Job uses it. RDS refuses `@`, `/`, quotes and spaces in it.
        admin_password = pulumi.Output.secret(
            generated_password(f"{name}-admin-password", self, special=True, override_special=RDS_SPECIAL))
        database = rds.managed_postgres(
            name, settings, args.cluster, admin_password=admin_password, kms_key_arn=args.storage.kms_key_arn,
            opts=pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider))
        ini = database.endpoint.apply(lambda host: rds.pgbouncer_ini(
            server_host=host, server_port=database.port, database=DATABASE_NAME, user=w.POSTGRES_USER,
            pool_size=settings.pgbouncer_pool_size, max_client_connections=settings.pgbouncer_max_client_connections))
        users = pulumi.Output.all(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password).apply(
            lambda passwords: rds.pgbouncer_users(w.POSTGRES_USER, passwords[0])
            + rds.pgbouncer_users(w.POSTGRES_KEDA_USER, passwords[1])
            + rds.pgbouncer_users(w.POSTGRES_WORKER_USER, passwords[2]))
        pgbouncer_host = f"{rds.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local"
        # PgBouncer's certificate for Airflow's TLS connections, from the platform CA (cert-manager renews it).
        k8s.apiextensions.CustomResource(
            f"{name}-pgbouncer-tls",
            api_version="cert-manager.io/v1", kind="Certificate",
            # Pulumi waits until cert-manager has issued it: the Airflow pods' URL names its CA file.
            metadata={"name": w.METADATA_TLS_SECRET, "namespace": args.namespace,
                      "annotations": {"pulumi.com/waitFor": "condition=Ready"}},
            spec={"secretName": w.METADATA_TLS_SECRET, "commonName": pgbouncer_host,
                  "dnsNames": [rds.PGBOUNCER_SERVICE, f"{rds.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}",
                               f"{rds.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc", pgbouncer_host],
                  # As long as the platform CA's: PgBouncer reads its certificate only when it starts, and nothing
                  # restarts it when cert-manager renews one (README: Managed backends).
                  "duration": "87600h", "renewBefore": "720h",
                  "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                  "issuerRef": {"name": args.certificate_authority.issuer_name, "kind": "ClusterIssuer", "group": "cert-manager.io"}},
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=[args.certificate_authority.cert_manager])))
        # Airflow's own role, made by the master user once the database answers (again for a new password).
        ca_certificates = rds.rds_ca_certificates(settings.region)
        bootstrap_config = k8s.core.v1.ConfigMap(
            f"{name}-bootstrap",
            metadata={"name": rds.BOOTSTRAP_CONFIG, "namespace": args.namespace},
            data={"bootstrap.sql": rds.bootstrap_sql(), "rds-ca.crt": ca_certificates}, opts=self._k8s)
        # The role's password goes as its SCRAM verifier, with a salt of its own kept in the state.
        salt = random.RandomBytes(f"{name}-scram-salt", length=16, opts=pulumi.ResourceOptions(parent=self))
        keda_salt = random.RandomBytes(f"{name}-keda-scram-salt", length=16, opts=pulumi.ResourceOptions(parent=self))
        worker_salt = random.RandomBytes(f"{name}-worker-scram-salt", length=16,
                                         opts=pulumi.ResourceOptions(parent=self))
        bootstrap_secret = k8s.core.v1.Secret(
            f"{name}-bootstrap",
            metadata={"name": rds.BOOTSTRAP_SECRET, "namespace": args.namespace},
            string_data=pulumi.Output.secret(pulumi.Output.all(admin_password, database.endpoint,
                                                              args.credentials.app_password, salt.base64,
                                                              args.credentials.keda_password, keda_salt.base64,
                                                              args.credentials.worker_password, worker_salt.base64).apply(
                lambda values: {"pg_service.conf": rds.service_file(values[0], values[1], database.port),
                                "app-verifier": rds.scram_sha256_verifier(values[2], base64.b64decode(values[3])),
                                "keda-verifier": rds.scram_sha256_verifier(values[4], base64.b64decode(values[5])),
                                "worker-verifier": rds.scram_sha256_verifier(values[6],
                                                                             base64.b64decode(values[7]))})),
            opts=self._k8s)
        # Named after what it sets and where: a new password, script or database (a new or restored one has a new
        # AWS id) is a new Job, which runs; an unchanged one is left as it is.
        run_digest = secrets_checksum(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password,
                                      rds.bootstrap_sql(),
                                      database.resource_id).apply(
            lambda digest: digest[:10])
        bootstrap = k8s.batch.v1.Job(
            f"{name}-bootstrap",
            metadata={"name": run_digest.apply(lambda digest: f"{rds.BOOTSTRAP_CONFIG}-{digest}"),
                      "namespace": args.namespace,
                      # A Job that failed is replaced by the next `pulumi up` rather than waited for again.
                      "annotations": {"pulumi.com/replaceUnready": "true"}},
            spec=rds.bootstrap_job_spec(settings),
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=[*database.resources, bootstrap_config, bootstrap_secret])))
        k8s.core.v1.Secret(
            f"{name}-pgbouncer-config",
            metadata={"name": rds.PGBOUNCER_CONFIG_SECRET, "namespace": args.namespace},
            string_data={"pgbouncer.ini": ini, "users.txt": pulumi.Output.secret(users)},
            # PgBouncer starts only once Airflow's role exists: the release waits for both.
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[bootstrap])))
        stats = args.credentials.app_password.apply(pgbouncer_stats_url)
        k8s.core.v1.Secret(
            f"{name}-pgbouncer-stats",
            metadata={"name": rds.PGBOUNCER_STATS_SECRET, "namespace": args.namespace},
            string_data={"connection": pulumi.Output.secret(stats)}, opts=self._k8s)
        self.airflow_chart_values = rds.pgbouncer_chart_values(settings, ca_certificates, secrets_checksum(ini, users))
        return pgbouncer_host, rds.PGBOUNCER_PORT

    def _build_cloudnative_pg(self, name: str, args: DatabaseArgs) -> tuple[str, int]:
        """The operator, the cluster, its backups and its Pooler. Returns where Airflow connects: the Pooler."""
        settings = args.settings
        backups = settings.is_aws
        if args.credentials.keda_user_secret_name is None or args.credentials.worker_user_secret_name is None:
            raise ValueError("Database: CloudNativePG makes KEDA's and the workers' roles from their Secrets: "
                             "keda_user_secret_name and worker_user_secret_name are required")

        operator_namespace = namespace_with_pod_security(
            f"{name}-{w.CNPG_NAMESPACE}", w.CNPG_NAMESPACE, "restricted", self._operators)
        self.dashboard_namespace = operator_namespace.metadata.name
        self.operator = chart_release(
            f"{name}-cloudnative-pg", chart="cloudnative-pg", version=settings.cloudnative_pg_chart_version,
            repo=CNPG_CHARTS, namespace=w.CNPG_NAMESPACE,
            values=operator_values(ha=settings.is_aws, placement=settings.system_placement),
            opts=pulumi.ResourceOptions.merge(self._operators,
                                              pulumi.ResourceOptions(depends_on=[operator_namespace])))
        cluster_dependencies: list[pulumi.Resource] = [self.operator]

        if backups:
            plugin = chart_release(
                f"{name}-barman-cloud", chart="plugin-barman-cloud",
                version=settings.barman_cloud_plugin_chart_version, repo=CNPG_CHARTS,
                namespace=w.CNPG_NAMESPACE, values=barman_cloud_plugin_values(settings.system_placement),
                # The plugin talks to the operator over mTLS with certificates cert-manager issues.
                opts=pulumi.ResourceOptions.merge(self._operators, pulumi.ResourceOptions(
                    depends_on=[self.operator, args.certificate_authority.cert_manager])))
            object_store = k8s.apiextensions.CustomResource(
                f"{name}-object-store",
                api_version="barmancloud.cnpg.io/v1", kind="ObjectStore",
                metadata={"name": OBJECT_STORE, "namespace": args.namespace},
                spec=object_store_spec(args.storage.backups_bucket_name, args.storage.backup_retention_days),
                opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[plugin])))
            # The instances archive WAL from their first minute: their role must be in place first.
            cluster_dependencies += [plugin, object_store, *args.storage.database_access]

        cluster = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="postgresql.cnpg.io/v1", kind="Cluster",
            metadata={"name": w.POSTGRES_CLUSTER, "namespace": args.namespace},
            spec=cluster_spec(settings, args.cluster.system_zones, args.credentials.app_user_secret_name, args.credentials.keda_user_secret_name,
                              args.credentials.worker_user_secret_name, args.cluster.storage_class_name, backups),
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=cluster_dependencies,
                # CloudNativePG owns the instances' PVCs: deleting the Cluster deletes the data with it.
                protect=settings.protect_stateful_resources,
                retain_on_delete=settings.protect_stateful_resources,
                # A restore is a bootstrap choice: changing it later must not replace a live database.
                ignore_changes=["spec.bootstrap"])))

        if backups:
            k8s.apiextensions.CustomResource(
                f"{name}-daily-backup",
                api_version="postgresql.cnpg.io/v1", kind="ScheduledBackup",
                metadata={"name": f"{w.POSTGRES_CLUSTER}-daily", "namespace": args.namespace},
                spec={
                    "schedule": settings.postgres_backup_schedule,
                    "cluster": {"name": w.POSTGRES_CLUSTER},
                    "method": "plugin",
                    "pluginConfiguration": {"name": BARMAN_CLOUD_PLUGIN},
                    "backupOwnerReference": "self",
                    "immediate": True,
                },
                opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[cluster])))

        k8s.apiextensions.CustomResource(
            f"{name}-pooler",
            api_version="postgresql.cnpg.io/v1", kind="Pooler",
            metadata={"name": w.POSTGRES_POOLER, "namespace": args.namespace},
            spec=pooler_spec(settings),
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[cluster])))

        return f"{w.POSTGRES_POOLER}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local", w.POSTGRES_PORT


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
