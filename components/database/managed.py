"""The managed metadata database (Database with `databaseEngine: aurora | rds`), and the PgBouncer in front of it.

Aurora PostgreSQL (a writer and a reader in two zones) or RDS PostgreSQL Multi-AZ, encrypted with the stack's
KMS key, TLS enforced by the parameter group, automated backups with point-in-time restore, a final snapshot,
Performance Insights and enhanced monitoring, reachable on 5432 from the cluster's nodes and pods only.

CloudNativePG's Pooler fronts only its own clusters, so PgBouncer comes from the Airflow chart's `pgbouncer`
section, with a configuration of the platform's own: transaction pooling, TLS towards Airflow (a certificate
from the platform CA), and `verify-full` towards the database against the RDS certificate authorities.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components import workloads as w
from components.data_store_access import cluster_only_security_group
from components.database.settings import DatabaseSettings
from components.handles import ClusterHandle
from components.iam import managed_policy_arn, service_trust_policy
from components.pods import NOBODY, container_security_context, pod_security_context, resources

# The Airflow chart (1.19.0) names PgBouncer's Service <release>-pgbouncer and serves it on ports.pgbouncer.
PGBOUNCER_SERVICE = w.CHART_PGBOUNCER
PGBOUNCER_PORT = w.CHART_PGBOUNCER_PORT
PGBOUNCER_PODS = w.CHART_PGBOUNCER_PODS
PGBOUNCER_CONFIG_SECRET = "airflow-pgbouncer-config"     # keys: pgbouncer.ini, users.txt (the chart mounts both)
PGBOUNCER_STATS_SECRET = "airflow-pgbouncer-stats"       # key: connection (the chart's metrics exporter reads it)
PGBOUNCER_TLS_SECRET = w.METADATA_TLS_SECRET             # cert-manager's: tls.crt, tls.key, ca.crt
# Where the chart mounts `pgbouncer.ssl.ca` (its certificates Secret), and where ours mounts the TLS Secret.
SERVER_CA_FILE = "/etc/pgbouncer/root.crt"
CLIENT_TLS_DIR = "/etc/pgbouncer/tls"
# The RDS certificate authority the instances present; the bundle below holds its root for every region.
RDS_CA = "rds-ca-rsa2048-g1"
RDS_CA_BUNDLE = Path(__file__).resolve().parent / "certs" / "rds-ca-bundle.pem"


def rds_ca_certificates(region: str, bundle: Path = RDS_CA_BUNDLE) -> str:
    """The RDS certificate authorities of one region, as PEM (`Amazon RDS <region> ...` in their subject)."""
    blocks = re.findall(r"# ([^\n]+)\n(-----BEGIN CERTIFICATE-----\n.+?-----END CERTIFICATE-----\n)",
                        bundle.read_text(), re.S)
    pems = "".join(pem for subject, pem in blocks if re.search(rf"CN=Amazon RDS {re.escape(region)} ", subject))
    if not pems:
        raise ValueError(f"{bundle} holds no RDS certificate authority of region {region}: regenerate it "
                         "(make rds-ca-bundle)")
    return pems


def _quote(value: str) -> str:
    """A PgBouncer auth_file field: double-quoted, a double quote doubled."""
    return '"' + value.replace('"', '""') + '"'


def pgbouncer_users(user: str, password: str) -> str:
    return f"{_quote(user)} {_quote(password)}\n"


def pgbouncer_ini(*, server_host: str, server_port: int, database: str, user: str, pool_size: int,
                  max_client_connections: int, listen_port: int = PGBOUNCER_PORT,
                  auth_file: str = "/etc/pgbouncer/users.txt", server_ca_file: str = SERVER_CA_FILE,
                  client_tls_dir: str = CLIENT_TLS_DIR) -> str:
    """PgBouncer's configuration: transaction pooling, TLS required from clients, and the database's
    certificate verified against its CA and host name."""
    return "\n".join([
        "[databases]",
        f"{database} = host={server_host} port={server_port} dbname={database}",
        "",
        "[pgbouncer]",
        "listen_addr = *",
        f"listen_port = {listen_port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file}",
        # The metrics exporter reads SHOW STATS/POOLS as this user over the admin console.
        f"stats_users = {user}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        f"max_client_conn = {max_client_connections}",
        # asyncpg (Airflow's async engine) uses prepared statements; PgBouncer 1.21+ tracks them per client.
        "max_prepared_statements = 200",
        "ignore_startup_parameters = extra_float_digits",
        "server_tls_sslmode = verify-full",
        f"server_tls_ca_file = {server_ca_file}",
        "client_tls_sslmode = require",
        f"client_tls_cert_file = {client_tls_dir}/tls.crt",
        f"client_tls_key_file = {client_tls_dir}/tls.key",
        "",
    ])


def restricted_pod_context(uid: int) -> dict:
    """A pod's security context under Pod Security `restricted`, running as `uid` (its group, and the volumes')."""
    return pod_security_context(uid, gid=uid, fs_group=uid)


READ_ONLY_CONTAINER = container_security_context(read_only_root=True)


def pgbouncer_chart_values(settings: DatabaseSettings, ca_certificates: str, config_checksum: pulumi.Input[str]) -> dict:
    """The Airflow chart's `pgbouncer` section (and KEDA's way to the database) that the managed engines hand to
    AirflowRelease: the chart renders PgBouncer; its configuration and credentials are Database's Secrets."""
    return {
        "pgbouncer": {
            "enabled": True,
            "replicas": max(settings.pgbouncer_instances, 2),
            "configSecretName": PGBOUNCER_CONFIG_SECRET,
            # Public certificates: the chart puts them in a Secret of its own, mounted at SERVER_CA_FILE.
            "ssl": {"ca": ca_certificates},
            "extraVolumes": [{"name": "pgbouncer-tls", "secret": {"secretName": PGBOUNCER_TLS_SECRET,
                                                                   "defaultMode": 0o440}}],
            "extraVolumeMounts": [{"name": "pgbouncer-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": True}],
            "resources": resources("100m", "64Mi", memory_limit="256Mi"),
            "podDisruptionBudget": {"enabled": True, "config": {"maxUnavailable": 1}},
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": PGBOUNCER_PODS}}],
            # The chart rolls PgBouncer for configurations it renders; this one is Database's.
            "podAnnotations": {"checksum/platform-pgbouncer-config": config_checksum},
            "serviceAccount": {"automountServiceAccountToken": False},
            # Pod Security `restricted`, as the rest of the namespace; neither container writes a file (no Unix
            # socket: unix_socket_dir is empty). The image's user is nobody (the chart's pgbouncer.uid).
            "securityContexts": {"pod": restricted_pod_context(NOBODY), "container": READ_ONLY_CONTAINER},
            "metricsExporterSidecar": {
                "securityContexts": {"container": READ_ONLY_CONTAINER},
                "statsSecretName": PGBOUNCER_STATS_SECRET, "statsSecretKey": "connection",
                "resources": resources("20m", "32Mi", memory_limit="64Mi"),
            },
        },
    }


# The master user: only the bootstrap Job logs in as it. Airflow logs in as its own role (w.POSTGRES_USER), which
# the Job creates and gives the database to: no `rds_superuser` rights in Airflow's pods.
ADMIN_USER = "airflow_admin"
BOOTSTRAP_SECRET = "airflow-db-bootstrap"        # keys: pg_service.conf, app-verifier, keda-verifier (the Job's alone)
BOOTSTRAP_CONFIG = "airflow-db-bootstrap"        # keys: bootstrap.sql, rds-ca.crt
BOOTSTRAP_SECRETS_DIR = "/run/secrets/db"
BOOTSTRAP_CONFIG_DIR = "/etc/bootstrap"
# postgres:17-alpine's psql (a client only); its user `postgres` is uid 70.
# renovate: datasource=docker depName=postgres
BOOTSTRAP_IMAGE = "postgres:17.6-alpine"
POSTGRES_ALPINE_UID = 70


def scram_sha256_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677, as its scram_build_secret
    writes it). Given as the role's password, PostgreSQL stores it as it is: the plain password never reaches the
    server, nor its logs (a failing statement is logged with its text)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    encode = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


def service_file(password: str, host: str, port: int, ca_file: str = f"{BOOTSTRAP_CONFIG_DIR}/rds-ca.crt") -> str:
    """The master user's connection as a libpq service (`service=admin`): read from a file, never on a command
    line."""
    return "\n".join(["[admin]", f"host={host}", f"port={port}", f"dbname={w.POSTGRES_DATABASE}",
                      f"user={ADMIN_USER}", f"password={password}", "sslmode=verify-full", f"sslrootcert={ca_file}",
                      ""])


def bootstrap_sql(app_verifier_file: str = f"{BOOTSTRAP_SECRETS_DIR}/app-verifier",
                  keda_verifier_file: str = f"{BOOTSTRAP_SECRETS_DIR}/keda-verifier",
                  worker_verifier_file: str = f"{BOOTSTRAP_SECRETS_DIR}/worker-verifier") -> str:
    """Creates Airflow's role (or sets its password) and gives it the database, KEDA's role (no rights: the
    migration Job grants it SELECT on task_instance) and the workers' (no rights: the migration Job grants it
    Celery's tables), as the master user, idempotently. The passwords arrive as their SCRAM verifiers, read from
    files by psql and quoted by format(%L)."""
    return "\n".join([
        "\\set ON_ERROR_STOP on",
        f"\\set app_verifier `cat {app_verifier_file}`",
        f"\\set keda_verifier `cat {keda_verifier_file}`",
        f"\\set worker_verifier `cat {worker_verifier_file}`",
        f"SELECT format('CREATE ROLE %I LOGIN', '{w.POSTGRES_WORKER_USER}') "
        f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{w.POSTGRES_WORKER_USER}') \\gexec",
        f"SELECT format('ALTER ROLE %I WITH LOGIN NOINHERIT PASSWORD %L', '{w.POSTGRES_WORKER_USER}', "
        ":'worker_verifier') \\gexec",
        f"SELECT format('CREATE ROLE %I LOGIN', '{w.POSTGRES_KEDA_USER}') "
        f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{w.POSTGRES_KEDA_USER}') \\gexec",
        f"SELECT format('ALTER ROLE %I WITH LOGIN NOINHERIT CONNECTION LIMIT {w.POSTGRES_KEDA_CONNECTION_LIMIT} "
        f"PASSWORD %L', '{w.POSTGRES_KEDA_USER}', :'keda_verifier') \\gexec",
        f"SELECT format('CREATE ROLE %I LOGIN', '{w.POSTGRES_USER}') "
        f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{w.POSTGRES_USER}') \\gexec",
        f"SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', '{w.POSTGRES_USER}', :'app_verifier') \\gexec",
        # The master user may hand the database over only to a role it is a member of. From PostgreSQL 15 the
        # database's owner owns its `public` schema too (pg_database_owner).
        f"GRANT {w.POSTGRES_USER} TO CURRENT_USER;",
        f"ALTER DATABASE {w.POSTGRES_DATABASE} OWNER TO {w.POSTGRES_USER};",
        "",
    ])


def bootstrap_job_spec(settings: DatabaseSettings) -> dict:
    """The Job that runs bootstrap_sql() with psql: Pod Security `restricted`, no token, on the system nodes."""
    return {
        # Retries within Pulumi's 10 minutes of waiting, so a failure shows as the Job's own.
        "backoffLimit": 3,
        "template": {
            "metadata": {"labels": dict(w.DB_BOOTSTRAP_PODS)},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                **settings.system_placement,
                "securityContext": restricted_pod_context(POSTGRES_ALPINE_UID),
                "containers": [{
                    "name": "psql",
                    "image": BOOTSTRAP_IMAGE,
                    "command": ["psql", "-X", "-d", "service=admin", "-f", f"{BOOTSTRAP_CONFIG_DIR}/bootstrap.sql"],
                    "env": [{"name": "PGSERVICEFILE", "value": f"{BOOTSTRAP_SECRETS_DIR}/pg_service.conf"}],
                    "securityContext": READ_ONLY_CONTAINER,
                    "resources": resources("50m", "64Mi", memory_limit="128Mi"),
                    "volumeMounts": [{"name": "db", "mountPath": BOOTSTRAP_SECRETS_DIR, "readOnly": True},
                                     {"name": "bootstrap", "mountPath": BOOTSTRAP_CONFIG_DIR, "readOnly": True}],
                }],
                "volumes": [{"name": "db", "secret": {"secretName": BOOTSTRAP_SECRET, "defaultMode": 0o440}},
                            {"name": "bootstrap", "configMap": {"name": BOOTSTRAP_CONFIG}}],
            },
        },
    }


def postgres_family(settings: DatabaseSettings) -> str:
    major = settings.database_engine_version.split(".")[0]
    return f"aurora-postgresql{major}" if settings.database_engine == "aurora" else f"postgres{major}"


# Every connection TLS; slow statements logged.
PARAMETERS = {"rds.force_ssl": "1", "log_min_duration_statement": "1000"}
# The same, as Aurora's cluster parameter group and RDS's parameter group each take them.
CLUSTER_PARAMETERS: list[aws.rds.ClusterParameterGroupParameterArgsDict] = [
    {"name": name, "value": value} for name, value in PARAMETERS.items()]
INSTANCE_PARAMETERS: list[aws.rds.ParameterGroupParameterArgsDict] = [
    {"name": name, "value": value} for name, value in PARAMETERS.items()]


@dataclass
class ManagedPostgres:
    endpoint: pulumi.Output[str]
    port: int
    # AWS's id of the database (Aurora cluster or RDS instance): a new or restored database has a new one.
    resource_id: pulumi.Output[str]
    # What PgBouncer needs before it can log in: the database (its instances) and the rule admitting the pods.
    resources: list[pulumi.Resource]


def managed_postgres(name: str, settings: DatabaseSettings, eks: ClusterHandle, *, admin_password: pulumi.Input[str],
                     kms_key_arn: pulumi.Input[str], opts: pulumi.ResourceOptions) -> ManagedPostgres:
    """Aurora or RDS PostgreSQL for Airflow's metadata, in the cluster's private subnets."""
    name_prefix, zones = eks.name_prefix, eks.zones
    if eks.account_id is None or eks.partition is None:
        raise ValueError("Aurora and RDS need the AWS account and partition (target=aws)")
    protect = settings.protect_stateful_resources
    keep = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=protect, retain_on_delete=protect))
    # Before a destroy (teardown), what AWS will not delete while the kept database uses it is kept with it
    # (Network keeps its subnets).
    kept_with = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=settings.keeps_managed_stores))
    identifier = f"{name_prefix}-metadata"
    subnet_group = aws.rds.SubnetGroup(f"{name}-metadata", name=identifier, subnet_ids=list(eks.private_subnet_ids),
                                       description=f"Airflow {name_prefix}: metadata database", opts=kept_with)
    security_group, from_cluster = cluster_only_security_group(
        f"{name}-metadata", cluster=eks, port=w.POSTGRES_PORT, what="PostgreSQL to the Airflow metadata database",
        keep=settings.keeps_managed_stores, opts=opts)
    monitoring_role = aws.iam.Role(
        f"{name}-monitoring", assume_role_policy=service_trust_policy("monitoring.rds.amazonaws.com", eks.account_id),
        opts=opts)
    monitoring_policy = aws.iam.RolePolicyAttachment(
        f"{name}-monitoring", role=monitoring_role.name,
        policy_arn=managed_policy_arn(eks.partition, "service-role/AmazonRDSEnhancedMonitoringRole"), opts=opts)
    monitoring = {"monitoring_interval": settings.database_monitoring_interval_seconds,
                  "monitoring_role_arn": monitoring_role.arn,
                  "performance_insights_enabled": True, "performance_insights_kms_key_id": kms_key_arn,
                  "performance_insights_retention_period": settings.database_performance_insights_retention_days,
                  "ca_cert_identifier": RDS_CA, "auto_minor_version_upgrade": False, "publicly_accessible": False}
    # Whatever deletes the database (a throwaway stack's destroy, or a protected one's after `state unprotect`)
    # leaves a final snapshot, under a name no earlier deletion of this stack's database used.
    # A new one with every new database (another engine or key; a major upgrade keeps the database), whose name
    # is then free again.
    suffix = random.RandomId(f"{name}-final-snapshot", byte_length=4,
                             keepers={"engine": settings.database_engine, "kms_key": kms_key_arn},
                             opts=pulumi.ResourceOptions(parent=opts.parent))
    snapshot = {"deletion_protection": protect, "skip_final_snapshot": False,
                "final_snapshot_identifier": pulumi.Output.concat(identifier, "-final-", suffix.hex),
                "copy_tags_to_snapshot": True}
    after_monitoring = pulumi.ResourceOptions.merge(keep, pulumi.ResourceOptions(depends_on=[monitoring_policy]))

    if settings.database_engine == "aurora":
        # Named after its family: a major upgrade makes the next family's group before it drops this one.
        parameters = aws.rds.ClusterParameterGroup(
            f"{name}-metadata", name=f"{identifier}-{postgres_family(settings)}", family=postgres_family(settings),
            description="Airflow metadata: TLS only", parameters=CLUSTER_PARAMETERS, opts=kept_with)
        cluster = aws.rds.Cluster(
            f"{name}-aurora", cluster_identifier=identifier, engine="aurora-postgresql",
            engine_version=settings.database_engine_version, database_name=w.POSTGRES_DATABASE,
            master_username=ADMIN_USER, master_password=admin_password, port=w.POSTGRES_PORT,
            db_subnet_group_name=subnet_group.name, vpc_security_group_ids=[security_group.id],
            db_cluster_parameter_group_name=parameters.name, storage_encrypted=True, kms_key_id=kms_key_arn,
            backup_retention_period=settings.database_backup_retention_days, preferred_backup_window="02:00-03:00",
            preferred_maintenance_window="sun:04:00-sun:05:00", enabled_cloudwatch_logs_exports=["postgresql"],
            # A new major databaseEngineVersion is a reviewed change; AWS needs to be told it may make it.
            allow_major_version_upgrade=True, apply_immediately=settings.managed_apply_immediately,
            **snapshot, opts=keep)
        instances = [aws.rds.ClusterInstance(
            f"{name}-aurora-{index}", identifier=f"{identifier}-{index}", cluster_identifier=cluster.id,
            engine=cluster.engine, engine_version=cluster.engine_version,
            instance_class=settings.database_instance_class, availability_zone=zones[index % len(zones)],
            db_subnet_group_name=subnet_group.name, promotion_tier=index,
            apply_immediately=settings.managed_apply_immediately, **monitoring, opts=after_monitoring)
            for index in range(2)]
        return ManagedPostgres(endpoint=cluster.endpoint, port=w.POSTGRES_PORT,
                               resource_id=cluster.cluster_resource_id,
                               resources=[from_cluster, cluster, *instances])

    instance_parameters = aws.rds.ParameterGroup(
        f"{name}-metadata", name=f"{identifier}-{postgres_family(settings)}", family=postgres_family(settings),
        description="Airflow metadata: TLS only", parameters=INSTANCE_PARAMETERS, opts=kept_with)
    instance = aws.rds.Instance(
        f"{name}-rds", identifier=identifier, engine="postgres", engine_version=settings.database_engine_version,
        instance_class=settings.database_instance_class, multi_az=True,
        allocated_storage=settings.database_storage_gib, max_allocated_storage=settings.database_max_storage_gib,
        storage_type="gp3", storage_encrypted=True, kms_key_id=kms_key_arn,
        db_name=w.POSTGRES_DATABASE, username=ADMIN_USER, password=admin_password, port=w.POSTGRES_PORT,
        db_subnet_group_name=subnet_group.name, vpc_security_group_ids=[security_group.id],
        parameter_group_name=instance_parameters.name, backup_retention_period=settings.database_backup_retention_days,
        backup_window="02:00-03:00", maintenance_window="sun:04:00-sun:05:00",
        enabled_cloudwatch_logs_exports=["postgresql", "upgrade"], allow_major_version_upgrade=True,
        # The automated backups (point-in-time restore) outlive the instance, for their retention.
        delete_automated_backups=False, apply_immediately=settings.managed_apply_immediately,
        **monitoring, **snapshot, opts=after_monitoring)
    return ManagedPostgres(endpoint=instance.address, port=w.POSTGRES_PORT, resource_id=instance.resource_id,
                           resources=[from_cluster, instance])


