"""What one component hands the next: frozen, typed values, never the component itself. A component's Args take
these handles and its own settings slice, so everything it depends on shows in its signature, and no component
imports another (they share this module and workloads.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class WorkerNodes:
    """Where Celery workers run: the worker nodes' selector and the tolerations of their taints (none locally)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    # Karpenter provisions them: a running worker must not be disrupted to consolidate its node.
    karpenter: bool = False
    # What the workers need before they can be scheduled: Karpenter and its NodePool (else nothing).
    capacity: tuple[pulumi.Resource, ...] = ()


@dataclass(frozen=True)
class ClusterHandle:
    """The cluster, its network and its providers: what every other component builds in or on."""
    # `<project>-<stack>`: what the stack's AWS names start with.
    name_prefix: str
    region: str
    k8s_provider: k8s.Provider
    # For operators that need neither a volume nor a load balancer: it waits for the nodes and DNS only.
    operators_provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    # The `kubernetes` Service's ClusterIP (first address of the service CIDR).
    kubernetes_service_ip: str
    # How many zones and nodes the system nodes span (1 and 1 locally): replicas spread over them.
    system_zones: int
    system_nodes: int
    workers: WorkerNodes
    # None locally: the cluster's own default class.
    storage_class_name: Optional[str] = None
    # target=aws only, all None or empty locally.
    aws_provider: Optional[aws.Provider] = None
    # The AWS partition (aws, aws-cn, aws-us-gov) ARNs are built in, and the account the stack deploys into.
    partition: Optional[str] = None
    account_id: Optional[str] = None
    vpc_id: Optional[pulumi.Output[str]] = None
    vpc_cidr: Optional[str] = None
    # The zones and their private subnets, in the same order. Nodes, pods, internal load balancers, the EKS
    # endpoint's network interfaces and the managed stores live in the private subnets.
    zones: tuple[str, ...] = ()
    private_subnet_ids: tuple[pulumi.Output[str], ...] = ()
    private_subnet_cidrs: tuple[str, ...] = ()
    # Where internet-facing load balancers get their addresses.
    public_subnet_cidrs: tuple[str, ...] = ()
    # S3's addresses in the region, for NetworkPolicies that must not rely on `except`.
    s3_cidrs: tuple[str, ...] = ()
    # The Secrets Manager interface endpoint (secretsBackend aws-secrets-manager) and its addresses.
    secrets_manager_endpoint: Optional[aws.ec2.VpcEndpoint] = None
    secrets_manager_cidrs: tuple[str, ...] = ()
    # EKS's cluster security group, which the control plane's interfaces and every managed node carry.
    cluster_security_group_id: Optional[pulumi.Output[str]] = None
    # The AWS Load Balancer Controller: it turns Ingresses into ALBs.
    load_balancer_controller: Optional[pulumi.Resource] = None

    @property
    def is_aws(self) -> bool:
        return self.aws_provider is not None


@dataclass(frozen=True)
class Namespaces:
    """The namespaces Security creates under Pod Security Admission (an output: using it waits for the namespace)."""
    airflow: pulumi.Output[str]
    monitoring: pulumi.Output[str]


@dataclass(frozen=True)
class CertificateAuthority:
    """cert-manager and the platform's in-cluster CA: what issues in-cluster TLS certificates."""
    cert_manager: pulumi.Resource
    issuer_name: pulumi.Output[str]


@dataclass(frozen=True)
class Ingress:
    """The way in on AWS: the shared ALB's settings (the same on every Ingress of its group) and its certificate."""
    certificate_arn: pulumi.Output[str]
    scheme: str
    allowed_cidrs: tuple[str, ...]
    route53_zone_id: str
    region: str
    aws_provider: aws.Provider
    # The AWS Load Balancer Controller: only it gives an Ingress its ALB (and the address Pulumi waits for).
    load_balancer_controller: Optional[pulumi.Resource]


@dataclass(frozen=True)
class DatabaseCredentials:
    """The database roles' Secrets and generated passwords (Security's). The KEDA and worker roles' Secrets are
    None with a managed engine: its bootstrap Job creates those roles."""
    app_user_secret_name: pulumi.Output[str]
    app_password: pulumi.Output[str]
    keda_password: pulumi.Output[str]
    worker_password: pulumi.Output[str]
    keda_user_secret_name: Optional[pulumi.Output[str]] = None
    worker_user_secret_name: Optional[pulumi.Output[str]] = None


@dataclass(frozen=True)
class BrokerCredentials:
    """The broker's password, its Secret (redis-ha's `auth`) and its generation (brokerPasswordGeneration)."""
    auth_secret_name: pulumi.Output[str]
    password: pulumi.Output[str]
    generation: int


@dataclass(frozen=True)
class AirflowSecrets:
    """The Secrets of Airflow's own keys and its admin user, and the digest the pods roll on."""
    fernet_key_secret_name: pulumi.Output[str]
    api_secret_key_secret_name: pulumi.Output[str]
    jwt_secret_name: pulumi.Output[str]
    admin_user_secret_name: pulumi.Output[str]
    keys_checksum: pulumi.Output[str]
    # Who may reach the API server, as NetworkPolicy peers: the chart's own policy gets the same list.
    api_server_sources: tuple[dict, ...]
    # Security itself: Airflow waits for all of it (namespaces, policies, RBAC, Secrets, cert-manager).
    ready: pulumi.Resource


@dataclass(frozen=True)
class StorageHandle:
    """Buckets, volumes and the access to them."""
    dags_claim_name: pulumi.Output[str]
    # Locally only: on AWS task logs go to the logs bucket.
    logs_claim_name: Optional[pulumi.Output[str]]
    logs_bucket_name: Optional[pulumi.Output[str]]
    # CloudNativePG's backups (None locally and with a managed engine, which keeps its own), and how long the
    # bucket keeps a replaced object (the backups' retention follows it).
    backups_bucket_name: Optional[pulumi.Output[str]]
    backup_retention_days: int
    # The stack's KMS key: buckets, EFS, and the managed database and broker (None locally).
    kms_key_arn: Optional[pulumi.Output[str]]
    # What must exist before a workload can use its bucket (role policies and Pod Identity associations).
    airflow_access: tuple[pulumi.Resource, ...]
    database_access: tuple[pulumi.Resource, ...]
    # Storage itself: Airflow waits for all of it (its claims above all).
    ready: pulumi.Resource


@dataclass(frozen=True)
class DatabaseHandle:
    """The metadata database, as its clients see it: the Secret of its URLs and what Airflow's chart adds."""
    connection_secret_name: pulumi.Output[str]
    # Digest of the published URLs: the pods that read them roll when a password is rotated.
    connection_checksum: pulumi.Output[str]
    # Values the Airflow chart gets from the database side: its PgBouncer, with a managed engine ({} otherwise).
    airflow_chart_values: dict
    # Where CloudNativePG's operator runs (its dashboard's namespace), None with a managed engine.
    operator_namespace: Optional[pulumi.Output[str]]
    # Database itself: Airflow waits for all of it (the cluster, the pooler, the Secret).
    ready: pulumi.Resource


@dataclass(frozen=True)
class BrokerHandle:
    """The Celery broker, as its clients see it."""
    connection_secret_name: pulumi.Output[str]
    connection_checksum: pulumi.Output[str]
    # Broker itself: Airflow waits for all of it.
    ready: pulumi.Resource
