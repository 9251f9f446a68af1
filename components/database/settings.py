"""Database's settings: CloudNativePG and its PgBouncer, or Aurora / RDS (the engine itself is chosen in
PlatformSettings.database_engine)."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.platform import (
    QUANTITY_PATTERN,
    PlatformSettings,
)
from components.workloads import POSTGRES_KEDA_CONNECTION_LIMIT


class DatabaseSettings(PlatformSettings):
    """The metadata database: CloudNativePG and its PgBouncer, or Aurora / RDS."""

    database_engine_version: str = Field(
        default="17.5", pattern=r"^1[4-9]\.[0-9]{1,2}$",
        description="PostgreSQL version of aurora/rds, major.minor (minor upgrades are reviewed changes: "
                    "automatic minor upgrades are off).")
    database_instance_class: str = Field(
        default="db.r7g.large", pattern=r"^db\.[a-z0-9]+\.[a-z0-9]+$",
        description="Instance class of the aurora/rds instances (Performance Insights needs a large or bigger class).")
    database_storage_gib: int = Field(
        default=100, ge=20, le=65536, description="Allocated storage of rds, in GiB (Aurora grows by itself).")
    database_max_storage_gib: int = Field(
        default=500, ge=20, le=65536,
        description="Ceiling of rds storage autoscaling, in GiB (at least databaseStorageGib).")
    database_backup_retention_days: int = Field(
        default=14, ge=1, le=35,
        description="Days of aurora/rds automated backups; any second in them can be restored (point in time).")
    database_performance_insights_retention_days: int = Field(
        default=7, ge=7, le=731,
        description="Days Performance Insights keeps (aurora/rds): 7 (free), or a multiple of 31 up to 731.")
    database_monitoring_interval_seconds: int = Field(
        default=60, description="Enhanced monitoring interval of aurora/rds, in seconds: 1, 5, 10, 15, 30 or 60.")
    postgres_instances: int = Field(
        default=1, ge=1, le=9,
        description="PostgreSQL instances (1 primary + standbys), spread over zones; 3 or more enable "
                    "synchronous replication to a quorum of one standby.")
    postgres_storage_gib: int = Field(default=10, ge=1, le=16384, description="Volume size of each PostgreSQL instance, in GiB.")
    postgres_cpu: str = Field(default="500m", pattern=QUANTITY_PATTERN,
                              description="CPU request of each PostgreSQL instance (a Kubernetes quantity).")
    postgres_memory: str = Field(default="1Gi", pattern=QUANTITY_PATTERN,
                                 description="Memory request and limit of each PostgreSQL instance.")
    postgres_image: str = Field(
        default="", max_length=300,
        description="PostgreSQL image; empty means the default of the pinned operator version.")
    postgres_max_connections: int = Field(default=200, ge=20, le=5000, description="PostgreSQL max_connections.")
    postgres_backup_schedule: str = Field(
        default="0 0 2 * * *", pattern=r"^(\S+\s+){5}\S+$",
        description="When the base backup runs: a six-field cron (seconds first), in UTC.")
    postgres_backup_server_name: str = Field(
        default="airflow-db", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Folder in the backups bucket this cluster archives WAL and base backups to.")
    postgres_restore_target_time: str = Field(
        default="", pattern=r"^$|^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$",
        description="Point-in-time restore: bootstrap a new cluster from the backups up to this time "
                    "(RFC 3339, e.g. 2026-11-27T23:00:00Z) instead of creating an empty database.")
    postgres_restore_from_server_name: str = Field(
        default="airflow-db", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Folder in the backups bucket to restore from (postgresRestoreTargetTime).")
    pgbouncer_instances: int = Field(default=1, ge=1, le=10, description="PgBouncer pods in front of the primary.")
    pgbouncer_pool_size: int = Field(
        default=20, ge=1, le=1000, description="PgBouncer default_pool_size: server connections per user and database.")
    pgbouncer_max_client_connections: int = Field(
        default=1000, ge=10, le=100000, description="PgBouncer max_client_conn.")
    # renovate: datasource=helm depName=cloudnative-pg registryUrl=https://cloudnative-pg.github.io/charts
    cloudnative_pg_chart_version: str = Field(
        default="0.29.0", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of the CloudNativePG operator.")
    # renovate: datasource=helm depName=plugin-barman-cloud registryUrl=https://cloudnative-pg.github.io/charts
    barman_cloud_plugin_chart_version: str = Field(
        default="0.7.0", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of the Barman Cloud plugin.")

    @field_validator("database_monitoring_interval_seconds")

    @classmethod
    def _monitoring_interval(cls, value: int) -> int:
        if value not in (1, 5, 10, 15, 30, 60):
            raise ValueError("must be one of 1, 5, 10, 15, 30, 60")
        return value

    @property
    def reserved_connections(self) -> int:
        """Connections of max_connections the poolers cannot have for Airflow: PostgreSQL's
        superuser_reserved_connections (3, which CloudNativePG's instance manager and metrics exporter use as
        postgres), each PgBouncer's auth_query login, KEDA's role (its own pool in every PgBouncer, held to its
        connection limit on the server), and a few for a person's psql and the operator's checks."""
        return 3 + self.pgbouncer_instances + POSTGRES_KEDA_CONNECTION_LIMIT + 5
