"""Broker: HA Redis for Celery, from the redis-ha chart, or ElastiCache (`brokerEngine: elasticache`).

redis-ha: Redis servers with a Sentinel each, HAProxy in front so Celery always talks to the current primary at
one stable address, auth from the generated password, persistence, PDBs, hard anti-affinity, the
metrics exporter. Either way, the Secret with the broker URL the Airflow chart reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from components import workloads as w
from components.broker import elasticache
from components.broker.settings import BrokerSettings
from components.generated_secrets import secrets_checksum
from components.handles import BrokerCredentials, BrokerHandle, ClusterHandle, StorageHandle
from components.helm import chart_release, pinned
from components.pods import memory_bytes, resources

# The chart names its services after fullnameOverride: <release>, <release>-haproxy, ...
HAPROXY_SERVICE = f"{w.REDIS_RELEASE}-haproxy"


def broker_url(password: str, host: str, port: int, database: int = 0) -> str:
    """The Celery broker URL. The password may hold any character, so it is percent-encoded."""
    return f"redis://:{quote(password, safe='')}@{host}:{port}/{database}"


@dataclass
class BrokerArgs:
    settings: BrokerSettings
    cluster: ClusterHandle
    # The Airflow namespace (Security's): redis-ha and the broker URL Secret live there.
    namespace: pulumi.Output[str]
    credentials: BrokerCredentials
    # The stack's KMS key (ElastiCache's encryption at rest).
    storage: StorageHandle


class Broker(pulumi.ComponentResource):
    """redis-ha or ElastiCache, and the broker URL Secret. `handle` is what its clients take."""

    handle: BrokerHandle

    def __init__(self, name: str, args: BrokerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Broker", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider)
        password = args.credentials.password
        secret_opts = k8s_opts
        if args.settings.managed_broker:
            if args.storage.kms_key_arn is None:
                raise ValueError("Broker: ElastiCache needs the stack's KMS key")
            redis = elasticache.managed_redis(
                name, args.settings, args.cluster, auth_token=password, generation=args.credentials.generation,
                kms_key_arn=args.storage.kms_key_arn,
                opts=pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider))
            url = pulumi.Output.all(password, redis.primary_endpoint).apply(
                lambda values: elasticache.tls_broker_url(values[0], values[1], redis.port))
            # Airflow starts once its pods may reach the broker.
            secret_opts = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[redis.access]))
        else:
            chart_release(
                f"{name}-redis-ha", release_name=w.REDIS_RELEASE, chart="redis-ha",
                version=args.settings.redis_ha_chart_version, repo="https://dandydeveloper.github.io/charts",
                namespace=args.namespace,
                values=redis_ha_values(args.settings, args.cluster.system_nodes, args.credentials.auth_secret_name,
                                       args.cluster.storage_class_name),
                # Three servers start one after another (OrderedReady), each waiting for its volume.
                timeout=900, opts=k8s_opts)
            url = password.apply(lambda plain: broker_url(
                plain, f"{HAPROXY_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local", w.REDIS_PORT))
        connection = k8s.core.v1.Secret(
            f"{name}-broker-url",
            metadata={"name": w.BROKER_URL_SECRET, "namespace": args.namespace},
            string_data={"connection": pulumi.Output.secret(url)},
            opts=secret_opts)
        self.handle = BrokerHandle(connection_secret_name=connection.metadata.name,
                                   connection_checksum=secrets_checksum(url), ready=self)
        self.register_outputs({"connection_secret_name": self.handle.connection_secret_name})


# Of the container's memory, what Redis may hold in data; the rest is its own overhead, replication and
# AOF-rewrite buffers. Past it, with `noeviction`, writes are refused instead of the pod being OOM-killed.
REDIS_MAXMEMORY_SHARE = 0.75
# redis-ha 4.39.0's image tags, repeated so a digest can be pinned next to them (a test keeps them equal).
# renovate: datasource=docker depName=public.ecr.aws/docker/library/redis
REDIS_IMAGE_TAG = "8.8.0-alpine"
# renovate: datasource=docker depName=public.ecr.aws/docker/library/haproxy
HAPROXY_IMAGE_TAG = "3.3.10-alpine"
# renovate: datasource=docker depName=quay.io/oliver006/redis_exporter
REDIS_EXPORTER_IMAGE_TAG = "v1.86.0"
HAPROXY_UID = 10099
SMALL_CONTAINER = resources("10m", "32Mi", memory_limit="64Mi")


def redis_maxmemory_bytes(settings: BrokerSettings) -> int:
    return int(memory_bytes(settings.redis_memory) * REDIS_MAXMEMORY_SHARE)


def redis_ha_values(settings: BrokerSettings, system_nodes: int, auth_secret: pulumi.Input[str],
                    storage_class: Optional[str]) -> dict:
    replicas = settings.redis_replicas
    ha = replicas >= 3
    # One server (and one HAProxy) per node, required only where there are enough system nodes for it.
    hard_anti_affinity = ha and replicas <= system_nodes
    # The memory limit equals the request: maxmemory is a share of it.
    # Redis is single-threaded but forks for persistence; one core for each, never throttled in between.
    redis_resources = resources("100m", settings.redis_memory, cpu_limit="2")
    # No checksum annotation for the password: a rolling restart cannot rotate it. A restarted server with
    # the new password cannot authenticate to a primary that still has the old one, its readiness waits
    # for a replication link that never comes, and the rollout stops there (README: Rotate secrets).
    return {
        **settings.system_placement,
        "fullnameOverride": w.REDIS_RELEASE,
        "replicas": replicas,
        "auth": True,
        "existingSecret": auth_secret,
        "authKey": "auth",
        "hardAntiAffinity": hard_anti_affinity,
        "topologySpreadConstraints": {"enabled": ha, "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                      "whenUnsatisfiable": "ScheduleAnyway"},
        "podDisruptionBudget": {"maxUnavailable": 1},
        # Redis, Sentinel and their scripts write only under /data (the volume): the image stays read-only.
        "containerSecurityContext": {"readOnlyRootFilesystem": True},
        "persistentVolume": {"enabled": True, "size": f"{settings.redis_storage_gib}Gi",
                             **({"storageClass": storage_class} if storage_class else {})},
        "redis": {
            "resources": redis_resources,
            "config": {
                # A lone primary has no replica to wait for; with replicas, refuse writes no replica saw.
                "min-replicas-to-write": 1 if ha else 0,
                # Celery must not lose queued tasks: evicting keys would do exactly that.
                "maxmemory-policy": "noeviction",
                "maxmemory": str(redis_maxmemory_bytes(settings)),
            },
        },
        "init": {"resources": SMALL_CONTAINER},
        "splitBrainDetection": {"resources": SMALL_CONTAINER},
        "sentinel": {"quorum": 2 if ha else 1, "resources": resources("50m", "64Mi", memory_limit="128Mi")},
        "haproxy": {
            "enabled": True,
            "replicas": 3 if ha else 1,
            "hardAntiAffinity": hard_anti_affinity,
            "podDisruptionBudget": {"maxUnavailable": 1},
            "init": {"resources": SMALL_CONTAINER},
            "metrics": {"enabled": True},
            "resources": resources("50m", "64Mi", memory_limit="256Mi", cpu_limit="1"),
            "image": {"tag": pinned(HAPROXY_IMAGE_TAG, settings.haproxy_image_digest)},
            # HAProxy writes only to its two emptyDirs (group 99 through fsGroup) and never calls the Kubernetes
            # API: it runs read-only, without a token, under a UID outside the range of host users.
            "securityContext": {"runAsUser": HAPROXY_UID, "runAsGroup": 99, "fsGroup": 99},
            "containerSecurityContext": {"readOnlyRootFilesystem": True, "runAsUser": HAPROXY_UID},
            "serviceAccount": {"automountToken": False},
        },
        "exporter": {"enabled": True, "tag": pinned(REDIS_EXPORTER_IMAGE_TAG, settings.redis_exporter_image_digest),
                     "resources": resources("20m", "32Mi", memory_limit="128Mi")},
        "image": {"tag": pinned(REDIS_IMAGE_TAG, settings.redis_image_digest)},
    }
