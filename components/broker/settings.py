"""Broker's settings: the Celery broker, redis-ha in the cluster or ElastiCache (the engine itself is chosen in
PlatformSettings.broker_engine)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.platform import (
    DIGEST_PATTERN,
    QUANTITY_PATTERN,
    PlatformSettings,
)


class BrokerSettings(PlatformSettings):
    """The Celery broker: redis-ha, or ElastiCache."""

    elasticache_engine: Literal["valkey", "redis"] = Field(
        default="valkey", description="ElastiCache engine: `valkey` or `redis` (Redis OSS).")
    elasticache_engine_version: str = Field(
        default="8.1", pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$",
        description="ElastiCache engine version, major.minor (valkey 7.2 or newer, redis 7.0 or newer).")
    elasticache_node_type: str = Field(
        default="cache.r7g.large", pattern=r"^cache\.[a-z0-9]+\.[a-z0-9]+$",
        description="ElastiCache node type.")
    elasticache_nodes: int = Field(
        default=3, ge=2, le=6,
        description="ElastiCache nodes: one primary and replicas, one per zone as far as the zones go (2 or more "
                    "for Multi-AZ failover).")
    elasticache_snapshot_retention_days: int = Field(
        default=7, ge=1, le=35, description="Days ElastiCache keeps its daily snapshots.")
    elasticache_auth_token_set_generation: int = Field(
        default=0, ge=0, le=1000,
        description="The brokerPasswordGeneration whose AUTH token ElastiCache is to accept alone: set it to "
                    "brokerPasswordGeneration once the Airflow pods run with the new token, and the next `up` drops "
                    "the old one (SET). Below it, a new token is added with ROTATE (ElastiCache accepts both).")
    redis_replicas: int = Field(
        default=1, ge=1, le=7,
        description="Redis servers (each with a Sentinel); 3 or more survive the loss of one node or zone.")
    redis_storage_gib: int = Field(default=8, ge=1, le=1000, description="Volume size of each Redis server, in GiB.")
    redis_memory: str = Field(default="512Mi", pattern=QUANTITY_PATTERN, description="Memory request and limit of each Redis server.")
    # renovate: datasource=helm depName=redis-ha registryUrl=https://dandydeveloper.github.io/charts
    redis_ha_chart_version: str = Field(
        default="4.39.0", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of redis-ha.")
    redis_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's Redis image (Redis and Sentinel).")
    haproxy_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's HAProxy image.")
    redis_exporter_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's Redis exporter image.")
