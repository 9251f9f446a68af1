"""redis-ha, the in-cluster engine: Redis with Sentinel behind HAProxy, its values and its URL."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

import pulumi

from components import workloads as w
from components.broker.settings import BrokerSettings
from components.helm import pinned
from components.pods import memory_bytes, resources

REDIS_HA_CHARTS = "https://dandydeveloper.github.io/charts"
# The chart names its services after fullnameOverride: <release>, <release>-haproxy, ...
HAPROXY_SERVICE = f"{w.REDIS_RELEASE}-haproxy"


def broker_url(password: str, host: str, port: int, database: int = 0) -> str:
    """The Celery broker URL. The password may hold any character, so it is percent-encoded."""
    return f"redis://:{quote(password, safe='')}@{host}:{port}/{database}"


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
    # for a replication link that never comes, and the rollout stops there (docs/operations.md, Rotate secrets).
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
