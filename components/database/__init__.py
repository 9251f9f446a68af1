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
from typing import Callable, Optional

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import workloads as w
from components.database import managed
from components.database.cloudnative_pg import (
    BARMAN_CLOUD_PLUGIN,
    CNPG_CHARTS,
    OBJECT_STORE,
    barman_cloud_plugin_values,
    cluster_spec,
    object_store_spec,
    operator_values,
    pooler_spec,
)
from components.database.settings import DatabaseSettings
from components.database.urls import (
    DATABASE_NAME,
    cloudnative_pg_metadata_urls,
    managed_metadata_urls,
    pgbouncer_stats_url,
)
from components.generated_secrets import RDS_SPECIAL, generated_password, secrets_checksum
from components.handles import CertificateAuthority, ClusterHandle, DatabaseCredentials, DatabaseHandle, StorageHandle
from components.helm import chart_release
from components.namespaces import namespace_with_pod_security


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
        build: Callable[[str, DatabaseArgs], tuple[str, int]] = (
            self._build_managed if settings.managed_database else self._build_cloudnative_pg)
        published_urls: Callable[..., dict[str, str]] = (
            managed_metadata_urls if settings.managed_database else cloudnative_pg_metadata_urls)
        pooler_host, pooler_port = build(name, args)
        urls = pulumi.Output.all(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password).apply(
            lambda passwords: published_urls(*passwords, pooler_host, pooler_port))
        secret_urls: pulumi.Output[dict[str, str]] = pulumi.Output.secret(urls)
        connection = k8s.core.v1.Secret(
            f"{name}-metadata-connection",
            metadata={"name": w.METADATA_CONNECTION_SECRET, "namespace": args.namespace},
            string_data=secret_urls,
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
        if args.storage.kms_key_arn is None:
            raise ValueError("Database: a managed engine needs the stack's KMS key")
        # The master user's: only the bootstrap Job uses it. RDS refuses `@`, `/`, quotes and spaces in it.
        admin_password: pulumi.Output[str] = pulumi.Output.secret(
            generated_password(f"{name}-admin-password", self, special=True, override_special=RDS_SPECIAL))
        database = managed.managed_postgres(
            name, settings, args.cluster, admin_password=admin_password, kms_key_arn=args.storage.kms_key_arn,
            opts=pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider))
        ini = database.endpoint.apply(lambda host: managed.pgbouncer_ini(
            server_host=host, server_port=database.port, database=DATABASE_NAME, user=w.POSTGRES_USER,
            pool_size=settings.pgbouncer_pool_size, max_client_connections=settings.pgbouncer_max_client_connections))
        users = pulumi.Output.all(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password).apply(
            lambda passwords: managed.pgbouncer_users(w.POSTGRES_USER, passwords[0])
            + managed.pgbouncer_users(w.POSTGRES_KEDA_USER, passwords[1])
            + managed.pgbouncer_users(w.POSTGRES_WORKER_USER, passwords[2]))
        pgbouncer_host = f"{managed.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local"
        # PgBouncer's certificate for Airflow's TLS connections, from the platform CA (cert-manager renews it).
        k8s.apiextensions.CustomResource(
            f"{name}-pgbouncer-tls",
            api_version="cert-manager.io/v1", kind="Certificate",
            # Pulumi waits until cert-manager has issued it: the Airflow pods' URL names its CA file.
            metadata={"name": w.METADATA_TLS_SECRET, "namespace": args.namespace,
                      "annotations": {"pulumi.com/waitFor": "condition=Ready"}},
            spec={"secretName": w.METADATA_TLS_SECRET, "commonName": pgbouncer_host,
                  "dnsNames": [managed.PGBOUNCER_SERVICE, f"{managed.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}",
                               f"{managed.PGBOUNCER_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc", pgbouncer_host],
                  # As long as the platform CA's: PgBouncer reads its certificate only when it starts, and nothing
                  # restarts it when cert-manager renews one (docs/managed-backends.md).
                  "duration": "87600h", "renewBefore": "720h",
                  "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                  "issuerRef": {"name": args.certificate_authority.issuer_name, "kind": "ClusterIssuer", "group": "cert-manager.io"}},
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=[args.certificate_authority.cert_manager])))
        # Airflow's own role, made by the master user once the database answers (again for a new password).
        ca_certificates = managed.rds_ca_certificates(settings.region)
        bootstrap_config = k8s.core.v1.ConfigMap(
            f"{name}-bootstrap",
            metadata={"name": managed.BOOTSTRAP_CONFIG, "namespace": args.namespace},
            data={"bootstrap.sql": managed.bootstrap_sql(), "rds-ca.crt": ca_certificates}, opts=self._k8s)
        # The role's password goes as its SCRAM verifier, with a salt of its own kept in the state.
        salt = random.RandomBytes(f"{name}-scram-salt", length=16, opts=pulumi.ResourceOptions(parent=self))
        keda_salt = random.RandomBytes(f"{name}-keda-scram-salt", length=16, opts=pulumi.ResourceOptions(parent=self))
        worker_salt = random.RandomBytes(f"{name}-worker-scram-salt", length=16,
                                         opts=pulumi.ResourceOptions(parent=self))
        secrets = pulumi.Output.all(admin_password, database.endpoint, args.credentials.app_password, salt.base64,
                                    args.credentials.keda_password, keda_salt.base64, args.credentials.worker_password,
                                    worker_salt.base64)
        bootstrap_data: pulumi.Output[dict[str, str]] = pulumi.Output.secret(secrets.apply(
            lambda values: {"pg_service.conf": managed.service_file(values[0], values[1], database.port),
                            "app-verifier": managed.scram_sha256_verifier(values[2], base64.b64decode(values[3])),
                            "keda-verifier": managed.scram_sha256_verifier(values[4], base64.b64decode(values[5])),
                            "worker-verifier": managed.scram_sha256_verifier(values[6], base64.b64decode(values[7]))}))
        bootstrap_secret = k8s.core.v1.Secret(
            f"{name}-bootstrap",
            metadata={"name": managed.BOOTSTRAP_SECRET, "namespace": args.namespace},
            string_data=bootstrap_data,
            opts=self._k8s)
        # Named after what it sets and where: a new password, script or database (a new or restored one has a new
        # AWS id) is a new Job, which runs; an unchanged one is left as it is.
        run_digest = secrets_checksum(args.credentials.app_password, args.credentials.keda_password, args.credentials.worker_password,
                                      managed.bootstrap_sql(),
                                      database.resource_id).apply(
            lambda digest: digest[:10])
        bootstrap = k8s.batch.v1.Job(
            f"{name}-bootstrap",
            metadata={"name": run_digest.apply(lambda digest: f"{managed.BOOTSTRAP_CONFIG}-{digest}"),
                      "namespace": args.namespace,
                      # A Job that failed is replaced by the next `pulumi up` rather than waited for again.
                      "annotations": {"pulumi.com/replaceUnready": "true"}},
            spec=managed.bootstrap_job_spec(settings),
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(
                depends_on=[*database.resources, bootstrap_config, bootstrap_secret])))
        secret_users: pulumi.Output[str] = pulumi.Output.secret(users)
        k8s.core.v1.Secret(
            f"{name}-pgbouncer-config",
            metadata={"name": managed.PGBOUNCER_CONFIG_SECRET, "namespace": args.namespace},
            string_data={"pgbouncer.ini": ini, "users.txt": secret_users},
            # PgBouncer starts only once Airflow's role exists: the release waits for both.
            opts=pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[bootstrap])))
        stats: pulumi.Output[str] = pulumi.Output.secret(args.credentials.app_password.apply(pgbouncer_stats_url))
        k8s.core.v1.Secret(
            f"{name}-pgbouncer-stats",
            metadata={"name": managed.PGBOUNCER_STATS_SECRET, "namespace": args.namespace},
            string_data={"connection": stats}, opts=self._k8s)
        self.airflow_chart_values = managed.pgbouncer_chart_values(settings, ca_certificates, secrets_checksum(ini, users))
        return pgbouncer_host, managed.PGBOUNCER_PORT

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
            bucket = args.storage.backups_bucket_name
            if bucket is None:
                raise ValueError("Database: CloudNativePG's backups on AWS need Storage's backups bucket")
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
                spec=object_store_spec(bucket, args.storage.backup_retention_days),
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
