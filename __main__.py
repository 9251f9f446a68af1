"""Production Airflow on EKS (or on a laptop cluster): the stack's composition.

Thin on purpose: read the settings, build the components in dependency order, export the outputs.
"""

import pulumi
import pulumi_aws as aws

from components.airflow import AirflowRelease, AirflowReleaseArgs
from components.broker import Broker, BrokerArgs
from components.cluster import Cluster, ClusterArgs
from components.database import Database, DatabaseArgs
from components.delivery import Delivery, DeliveryArgs
from components.observability import Observability, ObservabilityArgs
from components.security import Security, SecurityArgs
from components.settings import aws_default_tags, aws_name_prefix, load_settings
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

cluster = Cluster("cluster", ClusterArgs(settings=settings, name_prefix=name_prefix, aws_provider=aws_provider))

security = Security("security", SecurityArgs(
    settings=settings,
    k8s_provider=cluster.provider,
    operators_provider=cluster.operators_provider,
    aws_provider=aws_provider,
    cluster_name=cluster.cluster_name,
    private_subnet_cidrs=cluster.private_subnet_cidrs,
    public_subnet_cidrs=cluster.public_subnet_cidrs,
    s3_cidrs=cluster.s3_cidrs,
    secrets_manager_cidrs=cluster.secrets_manager_cidrs,
))

storage = Storage("storage", StorageArgs(
    settings=settings,
    name_prefix=name_prefix,
    k8s_provider=cluster.provider,
    airflow_namespace=security.airflow_namespace,
    aws_provider=aws_provider,
    cluster_name=cluster.cluster_name,
    vpc_id=cluster.vpc_id,
    zones=cluster.zones,
    private_subnet_ids=cluster.private_subnet_ids,
    node_security_group_id=cluster.cluster_security_group_id,
    partition=cluster.partition,
    account_id=cluster.account_id,
))

# Where a managed database or broker lives and who may reach it (used only by databaseEngine aurora | rds and
# brokerEngine elasticache).
managed_placement = dict(
    aws_provider=aws_provider,
    name_prefix=name_prefix,
    vpc_id=cluster.vpc_id,
    zones=cluster.zones,
    private_subnet_ids=cluster.private_subnet_ids,
    node_security_group_id=cluster.cluster_security_group_id,
    kms_key_arn=storage.kms_key_arn,
)

database = Database("database", DatabaseArgs(
    settings=settings,
    k8s_provider=cluster.provider,
    operators_provider=cluster.operators_provider,
    airflow_namespace=security.airflow_namespace,
    app_user_secret_name=security.postgres_user_secret_name,
    app_user_password=security.postgres_password,
    keda_user_secret_name=security.keda_database_user_secret_name,
    keda_user_password=security.keda_database_password,
    worker_user_secret_name=security.worker_database_user_secret_name,
    worker_user_password=security.worker_database_password,
    cert_manager=security.cert_manager,
    backups_bucket_name=storage.backups_bucket_name,
    backup_access=storage.database_access,
    storage_class_name=cluster.default_storage_class_name,
    partition=cluster.partition,
    account_id=cluster.account_id,
    cluster_ca_issuer_name=security.cluster_ca_issuer_name,
    **managed_placement,
))

broker = Broker("broker", BrokerArgs(
    settings=settings,
    k8s_provider=cluster.provider,
    airflow_namespace=security.airflow_namespace,
    redis_auth_secret_name=security.redis_auth_secret_name,
    redis_password=security.redis_password,
    storage_class_name=cluster.default_storage_class_name,
    **managed_placement,
))

# Beside Broker, after the CloudNativePG operator's namespace (its dashboard is there); nothing waits for it.
observability = Observability("observability", ObservabilityArgs(
    settings=settings,
    k8s_provider=cluster.provider,
    monitoring_namespace=security.monitoring_namespace,
    cert_manager=security.cert_manager,
    dashboard_namespaces={"cnpg": database.dashboard_namespace} if database.dashboard_namespace is not None else {},
    storage_class_name=cluster.default_storage_class_name,
    aws_provider=aws_provider,
    certificate_arn=security.certificate_arn,
    load_balancer_controller=cluster.load_balancer_controller,
))

airflow = AirflowRelease("airflow", AirflowReleaseArgs(
    settings=settings,
    k8s_provider=cluster.provider,
    operators_provider=cluster.operators_provider,
    security=security,
    storage=storage,
    database=database,
    broker=broker,
    airflow_namespace=security.airflow_namespace,
    fernet_key_secret_name=security.fernet_key_secret_name,
    api_secret_key_secret_name=security.api_secret_key_secret_name,
    jwt_secret_name=security.jwt_secret_name,
    admin_user_secret_name=security.admin_user_secret_name,
    metadata_secret_name=database.connection_secret_name,
    broker_secret_name=broker.connection_secret_name,
    dags_claim_name=storage.dags_claim_name,
    logs_claim_name=storage.logs_claim_name,
    aws_provider=aws_provider,
    logs_bucket_name=storage.logs_bucket_name,
    certificate_arn=security.certificate_arn,
    api_server_sources=security.api_server_sources,
    # The pods' AWS access: their role and its policies, and the endpoint they read secrets through.
    log_access=[*storage.airflow_access, *filter(None, [cluster.secrets_manager_endpoint])],
    load_balancer_controller=cluster.load_balancer_controller,
    worker_capacity=cluster.worker_capacity,
    secrets_prefix=settings.secrets_prefix(name_prefix) if settings.secrets_backend == "aws-secrets-manager" else None,
))

# GitHub Actions' way in (githubRepository): after the cluster, beside everything else; nothing waits for it.
delivery = None
if settings.github_repository:
    delivery = Delivery("delivery", DeliveryArgs(
        repository=settings.github_repository,
        connection_arn=settings.github_connection_arn,
        oidc_provider_arn=settings.github_oidc_provider_arn,
        deploy_environment=stack,
        preview_environment=f"preview-{stack}",
        name_prefix=name_prefix,
        partition=cluster.partition,
        account_id=cluster.account_id,
        region=settings.region,
        cluster_name=cluster.cluster_name,
        vpc_id=cluster.vpc_id,
        private_subnet_ids=cluster.private_subnet_ids,
        cluster_security_group_id=cluster.cluster_security_group_id,
        aws_provider=aws_provider,
    ))

pulumi.export("ingress_url", airflow.ingress_url)
pulumi.export("admin_username", airflow.admin_username)
pulumi.export("admin_password", security.admin_password)
pulumi.export("grafana_url", observability.grafana_url)
pulumi.export("grafana_admin_password", observability.grafana_admin_password)
pulumi.export("cluster_name", cluster.cluster_name)
pulumi.export("metadata_connection_secret", database.connection_secret_name)
pulumi.export("broker_url_secret", broker.connection_secret_name)
if cluster.kubeconfig is not None:
    pulumi.export("kubeconfig", cluster.kubeconfig)
if settings.is_aws:
    pulumi.export("logs_bucket_name", storage.logs_bucket_name)
    if storage.backups_bucket_name is not None:
        pulumi.export("backups_bucket_name", storage.backups_bucket_name)
    pulumi.export("certificate_arn", security.certificate_arn)
if delivery is not None:
    pulumi.export("github_deploy_role_arn", delivery.deploy_role_arn)
    pulumi.export("github_preview_role_arn", delivery.preview_role_arn)
    pulumi.export("github_runner_project", delivery.runner_project_name)
