"""Broker: HA Redis for Celery, from the redis-ha chart, or ElastiCache (`brokerEngine: elasticache`).

redis-ha: Redis servers with a Sentinel each, HAProxy in front so Celery always talks to the current primary at
one stable address, auth from the generated password, persistence, PDBs, hard anti-affinity, the
metrics exporter. Either way, the Secret with the broker URL the Airflow chart reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from components import workloads as w
from components.broker import elasticache
from components.broker.redis_ha import HAPROXY_SERVICE, REDIS_HA_CHARTS, broker_url, redis_ha_values
from components.broker.settings import BrokerSettings
from components.generated_secrets import secrets_checksum
from components.handles import BrokerCredentials, BrokerHandle, ClusterHandle, StorageHandle
from components.helm import chart_release


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
                version=args.settings.redis_ha_chart_version, repo=REDIS_HA_CHARTS,
                namespace=args.namespace,
                values=redis_ha_values(args.settings, args.cluster.system_nodes, args.credentials.auth_secret_name,
                                       args.cluster.storage_class_name),
                # Three servers start one after another (OrderedReady), each waiting for its volume.
                timeout=900, opts=k8s_opts)
            url = password.apply(lambda plain: broker_url(
                plain, f"{HAPROXY_SERVICE}.{w.AIRFLOW_NAMESPACE}.svc.cluster.local", w.REDIS_PORT))
        secret_url: pulumi.Output[str] = pulumi.Output.secret(url)
        connection = k8s.core.v1.Secret(
            f"{name}-broker-url",
            metadata={"name": w.BROKER_URL_SECRET, "namespace": args.namespace},
            string_data={"connection": secret_url},
            opts=secret_opts)
        self.handle = BrokerHandle(connection_secret_name=connection.metadata.name,
                                   connection_checksum=secrets_checksum(url), ready=self)
        self.register_outputs({"connection_secret_name": self.handle.connection_secret_name})
