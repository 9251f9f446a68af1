"""The managed broker (Broker with `brokerEngine: elasticache`): a Valkey or Redis OSS replication group with
Multi-AZ automatic failover, encrypted at rest with the stack's KMS key and in transit (TLS required), an AUTH
token, `noeviction` (Celery must not lose queued tasks), daily snapshots, reachable from the cluster only.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components import workloads as w
from components.broker.settings import BrokerSettings
from components.data_store_access import cluster_only_security_group
from components.handles import ClusterHandle


def tls_broker_url(password: str, host: str, port: int, database: int = 0) -> str:
    """The Celery broker URL of a TLS-only Redis: `rediss://`, the server's certificate verified against the trusted
    authorities (ElastiCache's come from Amazon Trust Services, in every image's CA store) and its host name checked.
    Both are spelled out: kombu 5.5 without `ssl_cert_reqs` does not verify at all, and redis-py 5 checks no host
    name unless told (tests/test_real_servers_managed.py)."""
    return (f"rediss://:{quote(password, safe='')}@{host}:{port}/{database}"
            "?ssl_cert_reqs=required&ssl_check_hostname=true")


def parameter_group_family(settings: BrokerSettings) -> str:
    major = settings.elasticache_engine_version.split(".")[0]
    # ElastiCache names families valkey7, valkey8, redis7 (7.0 and later share one).
    return f"{settings.elasticache_engine}{major}"


@dataclass
class ManagedRedis:
    primary_endpoint: pulumi.Output[str]
    port: int
    # What a client needs before it can connect: the rule admitting the pods.
    access: pulumi.Resource


def managed_redis(name: str, settings: BrokerSettings, eks: ClusterHandle, *, auth_token: pulumi.Input[str],
                  generation: int, kms_key_arn: pulumi.Input[str], opts: pulumi.ResourceOptions) -> ManagedRedis:
    """An ElastiCache replication group for Celery's broker, in the cluster's private subnets; `generation` is the
    auth token's (brokerPasswordGeneration)."""
    name_prefix, zones = eks.name_prefix, eks.zones
    protect = settings.protect_stateful_resources
    # Before a destroy (teardown), what AWS will not delete while the kept group uses it is kept with it (Network
    # keeps its subnets).
    kept_with = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=settings.keeps_managed_stores))
    identifier = f"{name_prefix}-broker"
    subnet_group = aws.elasticache.SubnetGroup(f"{name}-broker", name=identifier, subnet_ids=list(eks.private_subnet_ids),
                                               description=f"Airflow {name_prefix}: Celery broker", opts=kept_with)
    security_group, from_cluster = cluster_only_security_group(
        f"{name}-broker", cluster=eks, port=w.REDIS_PORT, what="Redis to the Airflow Celery broker",
        keep=settings.keeps_managed_stores, opts=opts)
    # Named after its family: a new major version makes the next family's group before it drops this one.
    parameters = aws.elasticache.ParameterGroup(
        f"{name}-broker", name=f"{identifier}-{parameter_group_family(settings)}", family=parameter_group_family(settings),
        description="Celery broker: never evict a queued task",
        parameters=[{"name": "maxmemory-policy", "value": "noeviction"}], opts=kept_with)
    # Whatever deletes the group leaves a final snapshot, under a name no earlier deletion used.
    # A new one with every new replication group (another engine or key), whose name is then free again.
    suffix = random.RandomId(f"{name}-final-snapshot", byte_length=4,
                             keepers={"engine": settings.elasticache_engine, "kms_key": kms_key_arn},
                             opts=pulumi.ResourceOptions(parent=opts.parent))
    group = aws.elasticache.ReplicationGroup(
        f"{name}-elasticache", replication_group_id=identifier, description=f"Airflow {name_prefix}: Celery broker",
        engine=settings.elasticache_engine, engine_version=settings.elasticache_engine_version,
        node_type=settings.elasticache_node_type, num_cache_clusters=settings.elasticache_nodes, port=w.REDIS_PORT,
        automatic_failover_enabled=True, multi_az_enabled=True,
        preferred_cache_cluster_azs=[zones[index % len(zones)] for index in range(settings.elasticache_nodes)],
        subnet_group_name=subnet_group.name, security_group_ids=[security_group.id],
        parameter_group_name=parameters.name,
        at_rest_encryption_enabled=True, kms_key_id=kms_key_arn,
        transit_encryption_enabled=True, transit_encryption_mode="required",
        # A new token goes in with ROTATE (ElastiCache accepts the old one too while the pods roll); naming its
        # generation in elasticacheAuthTokenSetGeneration then sends it again with SET, which drops the old one
        # (the provider sends token and strategy when either changes). The next generation is ROTATE again by
        # itself: a new token is never SET over one the pods still use.
        auth_token=auth_token,
        auth_token_update_strategy="SET" if settings.elasticache_auth_token_set_generation
        == generation else "ROTATE",
        snapshot_retention_limit=settings.elasticache_snapshot_retention_days, snapshot_window="03:00-04:00",
        maintenance_window="sun:05:00-sun:06:00",
        final_snapshot_identifier=pulumi.Output.concat(identifier, "-final-", suffix.hex),
        auto_minor_version_upgrade=False, apply_immediately=settings.managed_apply_immediately,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=protect, retain_on_delete=protect)))
    return ManagedRedis(primary_endpoint=group.primary_endpoint_address, port=w.REDIS_PORT, access=from_cluster)
