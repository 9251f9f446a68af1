"""Production Airflow on EKS (or on a laptop cluster): the stack's composition.

Thin on purpose: read the settings, build the components in dependency order, hand each one its own settings and
the handles of those it builds on, export the outputs.
"""

import pulumi
import pulumi_aws as aws

from components.airflow import AirflowRelease, AirflowReleaseArgs
from components.broker import Broker, BrokerArgs
from components.cluster import Cluster, ClusterArgs
from components.config import load_settings
from components.database import Database, DatabaseArgs
from components.delivery import Delivery, DeliveryArgs
from components.observability import Observability, ObservabilityArgs
from components.platform import aws_default_tags, aws_name_prefix
from components.security import Security, SecurityArgs
from components.security.network_policies import Workloads
from components.storage import Storage, StorageArgs

settings = load_settings()
stack = pulumi.get_stack()
name_prefix = aws_name_prefix(pulumi.get_project(), stack)

aws_provider = None
if settings.is_aws:
    aws_provider = aws.Provider(
        "aws",
        region=settings.region,
        default_tags={"tags": aws_default_tags(pulumi.get_project(), stack)},
    )

kubernetes = Cluster("cluster", ClusterArgs(
    settings=settings.cluster,
    nodes=settings.nodes,
    name_prefix=name_prefix,
    worker_grace_seconds=settings.airflow.worker_grace_seconds,
    deploys_from_github=bool(settings.github_repository),
    aws_provider=aws_provider,
))
cluster = kubernetes.handle

security = Security("security", SecurityArgs(
    settings=settings.security,
    cluster=cluster,
    workloads=Workloads(
        git_sync=bool(settings.git_sync_repository),
        kubernetes_pod_operator=settings.kubernetes_pod_operator,
        worker_deletion_cost=settings.worker_scale_in_idle_first,
        replicated_database=settings.postgres_instances > 1,
        restoring_database=bool(settings.postgres_restore_target_time),
    ),
    ingress_hosts=tuple(filter(None, [settings.ingress_host, settings.grafana_host])),
))
namespaces = security.namespaces

storage = Storage("storage", StorageArgs(
    settings=settings.storage,
    cluster=cluster,
    namespace=namespaces.airflow,
)).handle

database = Database("database", DatabaseArgs(
    settings=settings.database,
    cluster=cluster,
    namespace=namespaces.airflow,
    credentials=security.database_credentials,
    certificate_authority=security.certificate_authority,
    storage=storage,
)).handle

broker = Broker("broker", BrokerArgs(
    settings=settings.broker,
    cluster=cluster,
    namespace=namespaces.airflow,
    credentials=security.broker_credentials,
    storage=storage,
)).handle

# Beside Broker, after the CloudNativePG operator's namespace (its dashboard is there); nothing waits for it.
observability = Observability("observability", ObservabilityArgs(
    settings=settings.observability,
    cluster=cluster,
    namespace=namespaces.monitoring,
    certificate_authority=security.certificate_authority,
    stores=settings.observed_stores,
    ingress=security.ingress,
    dashboard_namespaces={"cnpg": database.operator_namespace} if database.operator_namespace is not None else {},
))

airflow = AirflowRelease("airflow", AirflowReleaseArgs(
    settings=settings.airflow,
    cluster=cluster,
    namespace=namespaces.airflow,
    secrets=security.airflow_secrets,
    certificate_authority=security.certificate_authority,
    storage=storage,
    database=database,
    broker=broker,
    ingress=security.ingress,
    secrets_prefix=settings.secrets_prefix(name_prefix) if settings.secrets_backend == "aws-secrets-manager" else None,
))

# GitHub Actions' way in (githubRepository): after the cluster, beside everything else; nothing waits for it.
delivery = None
if settings.github_repository:
    delivery = Delivery("delivery", DeliveryArgs(
        settings=settings.delivery,
        cluster=cluster,
        deploy_environment=stack,
        preview_environment=f"preview-{stack}",
    ))

pulumi.export("ingress_url", airflow.ingress_url)
pulumi.export("admin_username", airflow.admin_username)
pulumi.export("admin_password", security.admin_password)
pulumi.export("grafana_url", observability.grafana_url)
pulumi.export("grafana_admin_password", observability.grafana_admin_password)
pulumi.export("cluster_name", cluster.cluster_name)
pulumi.export("metadata_connection_secret", database.connection_secret_name)
pulumi.export("broker_url_secret", broker.connection_secret_name)
if kubernetes.kubeconfig is not None:
    pulumi.export("kubeconfig", kubernetes.kubeconfig)
if settings.is_aws:
    pulumi.export("logs_bucket_name", storage.logs_bucket_name)
    if storage.backups_bucket_name is not None:
        pulumi.export("backups_bucket_name", storage.backups_bucket_name)
    assert security.ingress is not None
    pulumi.export("certificate_arn", security.ingress.certificate_arn)
if delivery is not None:
    pulumi.export("github_deploy_role_arn", delivery.deploy_role_arn)
    pulumi.export("github_preview_role_arn", delivery.preview_role_arn)
    pulumi.export("github_runner_project", delivery.runner_project_name)
