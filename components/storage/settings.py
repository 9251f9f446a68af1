"""Storage's settings: task logs, backups and the shared volumes."""

from __future__ import annotations

from pydantic import Field

from components.platform import (
    PlatformSettings,
)


class StorageSettings(PlatformSettings):
    """Task logs, backups and the shared volumes."""

    log_retention_days: int = Field(
        default=30, ge=1, le=3650, description="Days task logs are kept in the logs bucket.")
    backup_retention_days: int = Field(
        default=30, ge=1, le=3650,
        description="Days database backups, their noncurrent object versions and EFS backups are kept.")
    dags_volume_size_gib: int = Field(
        default=5, ge=1, le=1000, description="Requested size of the DAGs volume (EFS ignores it; local clusters do not).")
    logs_volume_size_gib: int = Field(
        default=20, ge=1, le=10000,
        description="Requested size of the shared logs volume (local clusters; on AWS task logs go to S3).")
