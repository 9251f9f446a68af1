"""The stack's settings: one typed, validated model read from `pulumi config`.

Every key lives in the project's config namespace (`airflow:<key>`), has a one-line description,
a default (the `local` stack's file changes a few for a laptop), and bounds. `load_settings` refuses a
stack whose config has an unknown key (a typo), a wrong type, an out-of-range value or a missing required
value, and it does so before the program registers any resource, with one message that lists every problem.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import re
import urllib.parse
from typing import Annotated, Any, Literal, Optional

import pulumi
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from components.pods import memory_bytes, millicores
from components.workloads import GIT_SYNC_REQUESTS, NODE_ROLE_LABEL, POSTGRES_KEDA_CONNECTION_LIMIT, SYSTEM_NODES

PROJECT_NAMESPACE = "airflow"

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)

# EKS add-ons the Cluster installs; a version override may name only these.
EKS_ADDONS = ("vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent", "aws-ebs-csi-driver",
              "aws-efs-csi-driver", "metrics-server")

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
IAM_PRINCIPAL_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
_CPU = r"^[0-9]+(\.[0-9]+)?m?$"
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

# When each Kubernetes version leaves EKS's standard support (AWS's Kubernetes release calendar, "Understand the
# Kubernetes version lifecycle on EKS"): with the STANDARD upgrade policy EKS then upgrades the control plane.
EKS_STANDARD_SUPPORT_ENDS = {
    "1.30": datetime.date(2025, 7, 23), "1.31": datetime.date(2025, 11, 26), "1.32": datetime.date(2026, 3, 23),
    "1.33": datetime.date(2026, 7, 29), "1.34": datetime.date(2026, 12, 2), "1.35": datetime.date(2027, 3, 27),
}


def today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def principal_name(arn: str) -> str:
    """A resource name's part for an IAM principal: `role-<path-and-name>` or `user-…`, slashes as dashes."""
    return arn.split(":", 5)[5].replace("/", "-")


class SettingsError(ValueError):
    """The stack's config is not acceptable; the message names every offending key."""


class NodeTaint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=_LABEL_KEY.pattern, description="Taint key.")
    # A label value, as Kubernetes and Karpenter's NodePool validate it.
    value: str = Field(default="", max_length=63, pattern=r"^$|^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                       description="Taint value (may be empty).")
    effect: Literal["NO_SCHEDULE", "NO_EXECUTE", "PREFER_NO_SCHEDULE"] = Field(
        description="Taint effect, as the EKS API spells it.")

    def as_kubernetes(self) -> dict[str, str]:
        """The taint as a Kubernetes Node (and a Karpenter NodePool) spells it."""
        effect = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
        # Karpenter's NodePool refuses an empty value: a taint without one leaves it out.
        return {"key": self.key, **({"value": self.value} if self.value else {}), "effect": effect[self.effect]}


# An image digest, or empty (the image runs by tag).
DIGEST_PATTERN = r"^$|^sha256:[0-9a-f]{64}$"


class Settings(BaseModel):
    """Everything a stack can set. Config keys are the camelCase field names (`airflow:workerNodeMax`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    # --- where the platform runs -------------------------------------------------------------------
    target: Literal["aws", "local"] = Field(
        default="local",
        description="Where to deploy: `aws` builds a VPC and an EKS cluster; `local` uses an existing "
                    "kubeconfig context (kind, k3d, minikube) and creates no AWS resource.")
    protect_stateful_resources: bool = Field(
        default=True,
        description="Protect KMS keys, buckets, file systems and volumes from deletion and keep them on "
                    "`pulumi destroy`. Set false only for throwaway stacks.")
    teardown: bool = Field(
        default=False,
        description="Prepare a protected stack with Aurora/RDS or ElastiCache for `pulumi destroy`: the next `up` "
                    "marks what the kept stores need (their subnet, security and parameter groups, the private "
                    "subnets, the VPC) to stay with them, and takes the cluster's tags off those subnets. Only on a "
                    "stack about to be destroyed: kept, a subnet or group would also outlive a zone's removal or an "
                    "upgrade.")

    # --- local -------------------------------------------------------------------------------------
    kube_context: str = Field(
        default="kind-airflow", min_length=1, max_length=253,
        description="Kubeconfig context of the local cluster (target=local). Named explicitly so a "
                    "`pulumi up --stack local` never lands on whatever context happens to be current.")
    kubeconfig_path: str = Field(
        default="", max_length=4096,
        description="Kubeconfig file for target=local; empty means the usual lookup ($KUBECONFIG, ~/.kube/config).")

    local_ingress_namespace: str = Field(
        default="kube-system", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace of the local cluster's ingress controller (k3d's Traefik lives in kube-system), "
                    "admitted to the Airflow API server by the NetworkPolicies (target=local).")

    # --- AWS: account, network ---------------------------------------------------------------------
    region: str = Field(
        default="", pattern=r"^$|^[a-z]{2}(-[a-z]+)+-\d$",
        description="AWS region, for example `eu-west-1`. Required when target=aws.")
    cluster_name: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$",
        description="EKS cluster name; empty means `<project>-<stack>` (`airflow-prod`).")
    kubernetes_version: str = Field(
        default="1.35", pattern=r"^1\.\d{2}$",
        description="EKS Kubernetes version (the Airflow chart needs 1.30 or newer; one in EKS's standard support).")
    vpc_cidr: ipaddress.IPv4Network = Field(
        default=ipaddress.IPv4Network("10.0.0.0/16"),
        description="IPv4 CIDR of the VPC, a /16 to /20 (pods take VPC addresses through the VPC CNI).")
    kubernetes_service_cidr: str = Field(
        default="", max_length=18,
        description="Service CIDR of the cluster; the NetworkPolicies admit the `kubernetes` Service address in "
                    "it. EKS is created with it (a private /12 to /24 outside vpcCidr; empty: what EKS itself picks, "
                    "172.20.0.0/16 for a VPC in 10.0.0.0/8, 10.100.0.0/16 otherwise). On a local cluster it must be the cluster's own (empty: "
                    "10.96.0.0/16, kind's; k3d uses 10.43.0.0/16).")
    availability_zones: list[str] = Field(
        default_factory=list, max_length=6,
        description="Zone names the VPC and node groups use, pinned (e.g. [eu-west-1a, eu-west-1b, eu-west-1c]); "
                    "their number replaces availabilityZoneCount. Empty looks zones up on every run, which a zone "
                    "event can change: pin them.")
    availability_zone_count: int = Field(
        default=3, ge=2, le=6,
        description="How many availability zones the VPC and node groups span.")
    nat_gateways: Literal["perAz", "single"] = Field(
        default="perAz",
        description="`perAz` keeps egress up when a zone fails (prod); `single` saves cost (staging).")
    endpoint_public_access_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=40,
        description="CIDRs allowed to reach the EKS API endpoint from the internet. Empty keeps the "
                    "endpoint private: `pulumi up` must then run from inside the VPC.")
    admin_principal_arns: list[str] = Field(
        default_factory=list, max_length=50,
        description="IAM role or user ARNs given cluster-admin through EKS access entries.")
    control_plane_log_retention_days: int = Field(
        default=90,
        description="Retention of the EKS control-plane logs in CloudWatch, in days.")

    # --- Delivery: GitHub Actions --------------------------------------------------------------------
    github_repository: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$|"
                            r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}@[0-9]+/[A-Za-z0-9._-]{1,100}@[0-9]+$",
        description="The GitHub repository whose workflows preview and deploy this stack (target=aws), as its OIDC "
                    "tokens name it: `owner/name`, or `owner@<owner id>/name@<repository id>` for a repository on "
                    "GitHub's immutable subject claims (created, renamed or transferred from 15 July 2026, or opted "
                    "in). The stack then "
                    "creates the roles the workflows assume and CodeBuild-hosted runners in its private subnets. "
                    "Empty: neither.")
    github_connection_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:(codeconnections|codestar-connections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]+$",
        description="An AWS CodeConnections connection to GitHub in the stack's region, its GitHub App installed on "
                    "githubRepository: the runners register through it. Required with githubRepository.")
    github_oidc_provider_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/token\.actions\.githubusercontent\.com$",
        description="The account's IAM OIDC provider for GitHub Actions, when another stack or tool made it (an "
                    "account has one per URL); empty: this stack creates it, and keeps it on destroy.")

    # --- AWS: nodes --------------------------------------------------------------------------------
    system_node_instance_types: list[str] = Field(
        default_factory=lambda: ["m6i.large"], min_length=1, max_length=10,
        description="Instance types of the on-demand system node group (add-ons, controllers, schedulers).")
    system_node_count: int = Field(
        default=3, ge=2, le=20,
        description="Size of the system node group, spread over the zones.")
    worker_node_instance_types: list[str] = Field(
        default_factory=lambda: ["m6i.xlarge"], min_length=1, max_length=10,
        description="Instance types of the worker node group (Airflow task pods); list several for spot.")
    worker_capacity_type: Literal["ON_DEMAND", "SPOT"] = Field(
        default="ON_DEMAND", description="Capacity type of the worker node group.")
    worker_node_min: int = Field(default=1, ge=0, le=1000, description="Minimum size of the worker node group.")
    worker_node_desired: int = Field(default=2, ge=0, le=1000, description="Initial size of the worker node group.")
    worker_node_max: int = Field(default=6, ge=1, le=1000, description="Maximum size of the worker node group.")
    worker_node_labels: dict[str, str] = Field(
        default_factory=dict, max_length=20,
        description="Extra Kubernetes labels on worker nodes (the label `airflow.apache.org/node-role: worker` is always set).")
    worker_node_taints: list[NodeTaint] = Field(
        default_factory=list, max_length=10,
        description="Taints on worker nodes, as objects with key, value and effect.")
    node_disk_size_gib: int = Field(
        default=50, ge=20, le=2000, description="Encrypted gp3 root volume of every node, in GiB.")
    karpenter: bool = Field(
        default=True,
        description="Karpenter (target=aws) adds worker nodes when Celery workers are pending and removes them "
                    "when they are empty or underused; the system nodes stay a managed node group.")
    worker_node_group: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="The worker managed node group: `auto` has one only when Karpenter is off; `on` keeps it next "
                    "to Karpenter (for a steady base of workers), `off` drops it.")
    karpenter_capacity_types: list[Literal["on-demand", "spot"]] = Field(
        default_factory=lambda: ["on-demand"], min_length=1, max_length=2,
        description="Capacity types Karpenter may launch worker nodes as (with both it prefers spot).")
    karpenter_instance_families: list[str] = Field(
        default_factory=lambda: ["m7i", "m6i", "m7a", "m6a"], min_length=1, max_length=20,
        description="EC2 instance families for worker nodes (several keep spot capacity available).")
    karpenter_instance_sizes: list[str] = Field(
        default_factory=lambda: ["xlarge", "2xlarge", "4xlarge"], min_length=1, max_length=20,
        description="EC2 instance sizes for worker nodes.")
    karpenter_architectures: list[Literal["amd64", "arm64"]] = Field(
        default_factory=lambda: ["amd64"], min_length=1, max_length=2,
        description="CPU architectures of worker nodes (arm64 only if every image the tasks use has it).")
    karpenter_cpu_limit: int = Field(
        default=64, ge=1, le=100000,
        description="Most vCPUs all Karpenter worker nodes together may have: the cost ceiling.")
    karpenter_memory_limit_gib: int = Field(
        default=256, ge=1, le=1000000,
        description="Most memory all Karpenter worker nodes together may have, in GiB.")
    karpenter_expire_after_hours: int = Field(
        default=720, ge=1, le=8760,
        description="Hours after which a worker node is replaced (a new node, from the pinned AMI: move "
                    "karpenterAmiAlias to a current release to get patches); its workers get "
                    "longestTaskSeconds and a minute to finish their tasks.")
    karpenter_consolidate_after_minutes: int = Field(
        default=5, ge=0, le=1440,
        description="Minutes a worker node must be empty or underused before Karpenter removes or replaces it.")
    karpenter_disruption_budget: str = Field(
        default="10%", pattern=r"^(100|[1-9]?[0-9])%$|^[0-9]+$",
        description="How many worker nodes Karpenter may disrupt at once (a count or a percentage).")
    karpenter_ami_alias: str = Field(
        default="al2023@latest", pattern=r"^al2023@(latest|v[0-9]{8})$", max_length=30,
        description="AMI of worker nodes, as an EC2NodeClass alias `al2023@<version>`: pin a release (e.g. "
                    "al2023@v20260520) so a new AMI is a reviewed change; `latest` follows every release.")

    # --- Security -----------------------------------------------------------------------------------
    ingress_host: str = Field(
        default="", pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        description="Public host name of the Airflow UI/API, for example airflow.example.com. Required when target=aws.")
    route53_zone_id: str = Field(
        default="", pattern=r"^$|^Z[A-Z0-9]{1,31}$",
        description="Route53 hosted zone of ingressHost: holds its alias record and validates the ACM certificate. Required when target=aws.")
    certificate_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$",
        description="An existing ACM certificate for ingressHost; empty means one is issued and DNS-validated in route53ZoneId.")
    operator_principal_arns: list[str] = Field(
        default_factory=list, max_length=50,
        description="IAM role or user ARNs given the read-only `airflow-operators` group in the Airflow namespace.")
    worker_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks Airflow workers may reach beyond the platform (your data sources); egress is "
                    "otherwise denied. `0.0.0.0/0` opens everything. Tasks' KubernetesPodOperator pods get the same.")
    s3_endpoint_buckets: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9*][a-z0-9.*-]{1,62}$")]] = Field(
        default_factory=list, max_length=50,
        description="S3 buckets (names, `*` wildcards allowed) tasks may use besides the platform's own: every S3 "
                    "request from the VPC to the region goes through its endpoint, whose policy admits only those.")
    triggerer_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks the triggerer may reach beyond the platform: what deferred tasks' triggers poll (HTTP "
                    "APIs, AWS services other than S3); usually the same as workerEgressCidrs.")
    dag_processor_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks the DAG processor may reach beyond the platform: Airflow 3 runs DAG callbacks "
                    "(on_failure_callback, on_success_callback) and their e-mail there.")
    # renovate: datasource=helm depName=cert-manager registryUrl=https://charts.jetstack.io
    cert_manager_chart_version: str = Field(
        default="v1.21.1", pattern=r"^v\d+\.\d+\.\d+$", description="Chart version of cert-manager.")

    # --- Storage ------------------------------------------------------------------------------------
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

    # --- Database engine -----------------------------------------------------------------------------
    database_engine: Literal["cloudnative-pg", "aurora", "rds"] = Field(
        default="cloudnative-pg",
        description="Where Airflow's metadata lives: `cloudnative-pg` (PostgreSQL in the cluster), `aurora` (Aurora "
                    "PostgreSQL, a writer and a reader in two zones) or `rds` (RDS PostgreSQL Multi-AZ). The "
                    "managed engines need target=aws.")
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
    managed_apply_immediately: bool = Field(
        default=False,
        description="Aurora/RDS and ElastiCache make a change at once; false: most changes wait for their weekly "
                    "maintenance window (Sunday 04:00 and 05:00 UTC), which plan.py says.")

    # --- Broker engine -------------------------------------------------------------------------------
    broker_engine: Literal["redis-ha", "elasticache"] = Field(
        default="redis-ha",
        description="Celery's broker: `redis-ha` (Redis with Sentinel in the cluster) or `elasticache` (a "
                    "replication group with Multi-AZ failover; target=aws).")
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

    # --- Secrets backend ------------------------------------------------------------------------------
    secrets_backend: Literal["none", "aws-secrets-manager"] = Field(
        default="none",
        description="Where Airflow looks up connections and variables before its metadata database: "
                    "`aws-secrets-manager` (SecretsManagerBackend, read through EKS Pod Identity; target=aws).")
    secrets_manager_prefix: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9_+=.@-]+(/[A-Za-z0-9_+=.@-]+)*$", max_length=200,
        description="Prefix of the stack's secrets: connections under <prefix>/connections/<conn_id>, variables "
                    "under <prefix>/variables/<key>. Empty means `airflow/<project>-<stack>`.")

    # --- Database (CloudNativePG) --------------------------------------------------------------------
    postgres_instances: int = Field(
        default=1, ge=1, le=9,
        description="PostgreSQL instances (1 primary + standbys), spread over zones; 3 or more enable "
                    "synchronous replication to a quorum of one standby.")
    postgres_storage_gib: int = Field(default=10, ge=1, le=16384, description="Volume size of each PostgreSQL instance, in GiB.")
    postgres_cpu: str = Field(default="500m", pattern=_QUANTITY,
                              description="CPU request of each PostgreSQL instance (a Kubernetes quantity).")
    postgres_memory: str = Field(default="1Gi", pattern=_QUANTITY,
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

    # --- Broker (redis-ha) -------------------------------------------------------------------------
    redis_replicas: int = Field(
        default=1, ge=1, le=7,
        description="Redis servers (each with a Sentinel); 3 or more survive the loss of one node or zone.")
    redis_storage_gib: int = Field(default=8, ge=1, le=1000, description="Volume size of each Redis server, in GiB.")
    redis_memory: str = Field(default="512Mi", pattern=_QUANTITY, description="Memory request and limit of each Redis server.")
    # renovate: datasource=helm depName=redis-ha registryUrl=https://dandydeveloper.github.io/charts
    redis_ha_chart_version: str = Field(
        default="4.39.0", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of redis-ha.")

    # --- Airflow -----------------------------------------------------------------------------------
    # renovate: datasource=helm depName=airflow registryUrl=https://airflow.apache.org
    airflow_chart_version: str = Field(
        default="1.19.0", pattern=r"^\d+\.\d+\.\d+$", description="Version of the official Apache Airflow chart.")
    # renovate: datasource=docker depName=apache/airflow
    airflow_version: str = Field(
        default="3.1.8", pattern=r"^3\.\d+\.\d+$",
        description="Airflow version (the chart's airflowVersion and the image tag); Airflow 3 only. The "
                    "end-to-end tests run the same version (requirements/e2e.in).")
    airflow_image_repository: str = Field(
        default="apache/airflow", min_length=1, max_length=300,
        description="Image repository, e.g. your own image with your DAGs' Python dependencies.")
    airflow_image_tag: str = Field(
        default="", max_length=128, description="Image tag; empty means airflowVersion.")
    scheduler_replicas: int = Field(default=1, ge=1, le=10, description="Scheduler replicas (2 or more for HA).")
    api_server_replicas: int = Field(default=1, ge=1, le=20, description="API server replicas (UI, REST and execution API).")
    triggerer_replicas: int = Field(default=1, ge=1, le=10, description="Triggerer replicas.")
    dag_processor_replicas: int = Field(default=1, ge=1, le=10, description="DAG processor replicas.")
    worker_min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest Celery workers KEDA keeps.")
    worker_max_replicas: int = Field(default=4, ge=1, le=1000, description="Most Celery workers KEDA may run.")
    worker_concurrency: int = Field(
        default=8, ge=1, le=256,
        description="Tasks one Celery worker runs at once (celery.worker_concurrency; KEDA divides the queue by it).")
    task_queued_timeout_seconds: int = Field(
        default=600, ge=120, le=7200,
        description="How long a queued task may wait for a worker (while KEDA and Karpenter add one) before the "
                    "scheduler queues it again (twice, then fails it); the execution API token outlives it.")
    database_cleanup_retention_days: int = Field(
        default=90, ge=0, le=3650,
        description="Days of history (task instances, DAG runs, jobs, the audit log, XComs) the metadata database "
                    "keeps: each night older rows are deleted, and the previous night's deletions, kept in "
                    "`_airflow_deleted__*` tables until then, dropped. 0 turns the cleanup off.")
    longest_task_seconds: int = Field(
        default=540, ge=30, le=86340,
        description="The longest a task runs. A worker told to stop (scale-in, a node replaced, an upgrade) takes no "
                    "new task and gets this plus a minute to finish the ones it runs.")
    worker_scale_in_window_seconds: int = Field(
        default=600, ge=60, le=3600,
        description="How long the queue must stay low before KEDA removes workers (one a minute): longer than the "
                    "usual gap between your tasks, so workers are not removed between two bursts.")
    worker_scale_in_idle_first: bool = Field(
        default=True,
        description="Scale-in (and a rollout) stops idle workers before busy ones: each worker reports its running "
                    "tasks as its pod's deletion cost, through a token and a Role that may patch pods, fenced by an "
                    "admission policy to that one annotation of its own pod. Off, the ReplicaSet picks by age and a "
                    "busy worker may be the one stopped (it still finishes its tasks within its grace period).")
    worker_cpu: str = Field(default="1", pattern=_CPU, description="CPU request of each Celery worker (cores, or millicores with m).")
    worker_cpu_limit: str = Field(
        default="", pattern=rf"^$|{_CPU}",
        description="CPU limit of each Celery worker; empty: twice workerCpu, at least 1. Raise it for CPU-heavy "
                    "tasks: a worker runs workerConcurrency of them at once.")
    worker_memory: str = Field(default="2Gi", pattern=_QUANTITY, description="Memory request and limit of each Celery worker.")
    # renovate: datasource=helm depName=keda registryUrl=https://kedacore.github.io/charts
    keda_chart_version: str = Field(
        default="2.20.2", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of KEDA.")
    git_sync_repository: str = Field(
        default="", pattern=r"^$|^https://\S+$",
        description="HTTPS URL of the DAG repository for git-sync; empty means DAGs come from the DAGs volume.")
    git_sync_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Where git-sync may fetch the repository from, on 443: your git host's IPv4 networks (GitHub "
                    "publishes its `git` ranges). Empty means the whole public internet. Inside private addresses or "
                    "the VPC, name the host's own addresses (/28 or narrower). The rule is the pods' (the DAG "
                    "processor, triggerer and workers): their own code reaches these networks too.")
    git_sync_branch: str = Field(default="main", min_length=1, max_length=255, description="Branch git-sync follows.")
    git_sync_sub_path: str = Field(default="", max_length=1024, description="Folder of the DAGs inside the repository.")
    git_sync_credentials_secret: str = Field(
        default="", pattern=r"^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Existing Secret in the Airflow namespace with GITSYNC_USERNAME and GITSYNC_PASSWORD "
                    "(and GIT_SYNC_USERNAME/GIT_SYNC_PASSWORD); empty for a public repository.")
    ingress_scheme: Literal["internet-facing", "internal"] = Field(
        default="internet-facing", description="Whether the ALB is reachable from the internet or only inside the VPC.")
    ingress_allowed_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="CIDRs allowed to reach the ALB; empty allows everyone the scheme allows.")
    flower_enabled: bool = Field(default=True, description="Run Celery Flower (reach it with a port-forward; it gets no ingress).")
    kubernetes_pod_operator: bool = Field(
        default=False,
        description="Let tasks launch pods (KubernetesPodOperator): gives the workers back their service-account "
                    "token and the chart's pod-launching Role. Off, no Airflow pod can call the Kubernetes API.")

    # --- Image digests: `sha256:<64 hex>`; set, the image runs as `tag@digest` -----------------------
    airflow_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN,
        description="Digest of the Airflow image (airflowImageRepository, airflowImageTag), e.g. from "
                    "`crane digest apache/airflow:3.1.8`.")
    statsd_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of the chart's statsd exporter image.")
    git_sync_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of the chart's git-sync image.")
    redis_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's Redis image (Redis and Sentinel).")
    haproxy_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's HAProxy image.")
    redis_exporter_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of redis-ha's Redis exporter image.")

    # --- Observability -----------------------------------------------------------------------------
    # renovate: datasource=helm depName=kube-prometheus-stack registryUrl=https://prometheus-community.github.io/helm-charts
    kube_prometheus_stack_chart_version: str = Field(
        default="88.5.3", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of kube-prometheus-stack.")
    prometheus_retention_days: int = Field(
        default=15, ge=1, le=365, description="Days Prometheus keeps its samples.")
    prometheus_storage_gib: int = Field(
        default=20, ge=5, le=4096,
        description="Volume of each Prometheus replica, in GiB; samples are also dropped at 90 % of it.")
    grafana_host: str = Field(
        default="", pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        description="Host name of Grafana, served by the Airflow ALB (an ingress group) with the same certificate; "
                    "required when target=aws, in the zone route53ZoneId.")
    broker_password_generation: int = Field(
        default=1, ge=1, le=1000,
        description="Generation of the broker's password (Redis's, or ElastiCache's AUTH token): raising it "
                    "generates a new one in the next `pulumi up` (README, Rotate secrets).")
    fernet_key_rotation: int = Field(
        default=1, ge=1, le=1000,
        description="Generation of the Fernet key: raising it generates a new key in the next `pulumi up` (a "
                    "rotation as a reviewed change; set previousFernetKey in the same change, README, Rotate secrets).")
    previous_fernet_key: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9_-]{43}=$", repr=False,
        json_schema_extra={"secret": True, "stand_in": "A" * 43 + "="},
        description="The Fernet key being rotated out (set with `pulumi config set --secret` while rotating): "
                    "Airflow then decrypts with both keys and encrypts with the new one, until "
                    "`airflow rotate-fernet-key` has re-encrypted everything (README, Rotate secrets).")
    alert_slack_webhook_url: str = Field(
        default="", pattern=r"^$|^https://\S+$", repr=False,
        json_schema_extra={"secret": True, "stand_in": "https://hooks.slack.invalid/stand-in"},
        description="Slack incoming-webhook URL alerts are sent to (set with `pulumi config set --secret`).")
    alert_slack_channel: str = Field(
        default="", pattern=r"^$|^[#@]?[a-z0-9._-]{1,80}$",
        description="Slack channel for alerts; empty uses the webhook's own channel.")
    alert_email_to: str = Field(
        default="", pattern=r"^$|^[^@\s]+@[^@\s]+$", description="E-mail address alerts are sent to.")
    alert_email_from: str = Field(
        default="", pattern=r"^$|^[^@\s]+@[^@\s]+$", description="Sender address of alert e-mails.")
    alert_smtp_smarthost: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9.-]+:\d{1,5}$",
        description="SMTP server of alert e-mails, host:port (TLS required).")
    alert_smtp_username: str = Field(default="", max_length=256, description="SMTP user of alert e-mails.")
    alert_smtp_password: str = Field(
        default="", max_length=256, repr=False, json_schema_extra={"secret": True, "stand_in": "stand-in"},
        description="SMTP password of alert e-mails (set with `pulumi config set --secret`).")
    alert_runbook_base_url: str = Field(
        default="https://github.com/example/airflow-platform/blob/main/README.md", pattern=r"^https?://\S+$",
        description="Where the README is published: every alert's runbook_url is this plus the alert's anchor.")
    postgres_replication_lag_alert_seconds: int = Field(
        default=300, ge=10, le=86400, description="Replication lag of a standby that raises an alert, in seconds.")
    airflow_queued_alert_minutes: int = Field(
        default=15, ge=1, le=1440,
        description="Minutes tasks may sit queued while none run before an alert is raised.")

    # --- AWS: pinned versions ----------------------------------------------------------------------
    # renovate: datasource=helm depName=aws-load-balancer-controller registryUrl=https://aws.github.io/eks-charts
    aws_load_balancer_controller_chart_version: str = Field(
        default="3.5.0", pattern=r"^\d+\.\d+\.\d+$",
        description="Chart version of the AWS Load Balancer Controller (its IAM policy is pinned alongside).")
    addon_versions: dict[str, str] = Field(
        default_factory=dict,
        description="Pinned EKS add-on versions by add-on name; an add-on not listed gets the default "
                    "version AWS publishes for `kubernetesVersion`.")

    @field_validator("s3_endpoint_buckets")
    @classmethod
    def _buckets_named(cls, buckets: list[str]) -> list[str]:
        for bucket in buckets:
            if len(bucket.replace("*", "")) < 3:
                raise ValueError(f"'{bucket}' names too little of a bucket: at least 3 characters besides `*` "
                                 "(a pattern that matches every bucket would undo the endpoint's policy)")
        return buckets

    @field_validator("worker_node_taints")
    @classmethod
    def _distinct_worker_taints(cls, value: list[NodeTaint]) -> list[NodeTaint]:
        pairs = [(taint.key, taint.effect) for taint in value]
        if len(set(pairs)) != len(pairs):
            raise ValueError("two taints with the same key and effect; a node holds one of each")
        if any(taint.key == NODE_ROLE_LABEL for taint in value):
            raise ValueError(f"the key {NODE_ROLE_LABEL} is the platform's own (its worker taint); choose another")
        return value

    @field_validator("kubernetes_version")
    @classmethod
    def _supported_kubernetes(cls, value: str) -> str:
        if int(value.split(".")[1]) < 30:
            raise ValueError("the Airflow chart needs Kubernetes 1.30 or newer")
        return value

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc_size(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if not 16 <= value.prefixlen <= 20:
            raise ValueError(f"must be a /16 to /20 network, got /{value.prefixlen}")
        return value

    @field_validator("kubernetes_service_cidr")
    @classmethod
    def _service_cidr(cls, value: str) -> str:
        if not value:
            return value
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 network: {exc}") from None
        if not network.is_private or not 12 <= network.prefixlen <= 24:
            raise ValueError("must be a private (RFC 1918) network of /12 to /24")
        return str(network)

    @field_validator("availability_zones")
    @classmethod
    def _zone_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d[a-f]", value):
                raise ValueError(f"{value!r} is not an availability zone name with a letter a to f, such as "
                                 "eu-west-1a (the subnet layout has a slot per zone letter; Local Zones are not "
                                 "supported)")
        if len(set(values)) != len(values):
            raise ValueError("lists a zone twice")
        if values and len(values) < 2:
            raise ValueError("needs at least 2 zones")
        return values

    @field_validator("admin_principal_arns", "operator_principal_arns")
    @classmethod
    def _principal_arns(cls, values: list[str]) -> list[str]:
        for arn in values:
            if not IAM_PRINCIPAL_ARN.match(arn):
                raise ValueError(f"{arn!r} is not an IAM role or user ARN (arn:aws:iam::<account>:role/<name>)")
        # Each principal's access entry is named after it: two that read the same (a path's slash and a dash,
        # or the same name in two accounts) would be one resource.
        named: dict[str, str] = {}
        for arn in values:
            name = principal_name(arn)
            if name in named:
                raise ValueError(f"lists {arn!r} twice" if named[name] == arn else
                                 f"{named[name]!r} and {arn!r} would name the same access entry ({name!r})")
            named[name] = arn
        return values

    @field_validator("database_monitoring_interval_seconds")
    @classmethod
    def _monitoring_interval(cls, value: int) -> int:
        if value not in (1, 5, 10, 15, 30, 60):
            raise ValueError("must be one of 1, 5, 10, 15, 30, 60")
        return value

    @field_validator("control_plane_log_retention_days")
    @classmethod
    def _log_retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch accepts only {', '.join(map(str, LOG_RETENTION_DAYS))}")
        return value

    @field_validator("system_node_instance_types", "worker_node_instance_types")
    @classmethod
    def _instance_types(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _INSTANCE_TYPE.match(value):
                raise ValueError(f"{value!r} is not an EC2 instance type such as m6i.large")
        return values

    @field_validator("worker_node_labels")
    @classmethod
    def _labels(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid Kubernetes label key")
        return values

    @field_validator("addon_versions")
    @classmethod
    def _addon_names(cls, values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if name not in EKS_ADDONS:
                raise ValueError(f"{name!r} is not an add-on this stack installs ({', '.join(EKS_ADDONS)})")
        return values

    # --- derived -----------------------------------------------------------------------------------
    @property
    def worker_grace_seconds(self) -> int:
        """A stopping worker's terminationGracePeriodSeconds: its longest task and a minute for Celery's warm
        shutdown (the task's log upload, the acknowledgement)."""
        return self.longest_task_seconds + 60

    @property
    def is_aws(self) -> bool:
        return self.target == "aws"

    @property
    def managed_database(self) -> bool:
        return self.database_engine in ("aurora", "rds")

    @property
    def managed_broker(self) -> bool:
        return self.broker_engine == "elasticache"

    @property
    def keeps_managed_stores(self) -> bool:
        """A protected stack about to be destroyed (teardown) keeps Aurora/RDS or ElastiCache: so must it keep
        what AWS will not delete while they use it — their subnet, security and parameter groups, the private
        subnets and the VPC. Only then: `retain_on_delete` also acts on every `up`'s deletes and replacements."""
        return self.teardown and self.protect_stateful_resources and (self.managed_database or self.managed_broker)

    def secrets_prefix(self, name_prefix: str) -> str:
        """Where the stack's connections and variables live in Secrets Manager."""
        return self.secrets_manager_prefix or f"airflow/{name_prefix}"

    @property
    def uses_karpenter(self) -> bool:
        return self.is_aws and self.karpenter

    @property
    def has_worker_node_group(self) -> bool:
        """The worker managed node group: kept when asked, by default only without Karpenter."""
        if self.worker_node_group == "auto":
            return self.is_aws and not self.karpenter
        return self.is_aws and self.worker_node_group == "on"

    @property
    def system_node_selector(self) -> dict[str, str]:
        """Where everything but the Celery workers runs: the on-demand system nodes (none locally)."""
        return dict(SYSTEM_NODES) if self.is_aws else {}

    @property
    def system_placement(self) -> dict:
        """Chart or pod-spec values that put a workload on the system nodes (nothing locally)."""
        return {"nodeSelector": self.system_node_selector} if self.system_node_selector else {}

    @property
    def system_zones(self) -> int:
        """How many zones the system nodes are spread over (a managed node group balances its subnets)."""
        return min(self.system_node_count, self.zone_count) if self.is_aws else 1

    @property
    def zone_count(self) -> int:
        return len(self.availability_zones) or self.availability_zone_count

    @property
    def system_nodes(self) -> int:
        return self.system_node_count if self.is_aws else 1

    @property
    def service_cidr(self) -> ipaddress.IPv4Network:
        if self.kubernetes_service_cidr:
            return ipaddress.IPv4Network(self.kubernetes_service_cidr)
        if not self.is_aws:
            return ipaddress.IPv4Network("10.96.0.0/16")
        # What EKS itself picks when none is given, so a cluster created without one keeps it.
        in_ten = self.vpc_cidr.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
        return ipaddress.IPv4Network("172.20.0.0/16" if in_ten else "10.100.0.0/16")

    @property
    def kubernetes_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP: the first address of the service CIDR."""
        return str(next(self.service_cidr.hosts()))

    def eks_cluster_name(self, name_prefix: str) -> str:
        return self.cluster_name or name_prefix


# PgBouncer pools per user: the owner's (every Airflow component) and the workers' role (Celery's results) may each
# fill pgbouncerPoolSize server connections in every PgBouncer pod. KEDA's is held to its connection limit.
POOLED_ROLES = 2


def postgres_reserved_connections(settings: Settings) -> int:
    """Connections of max_connections the poolers cannot have for Airflow: PostgreSQL's superuser_reserved_connections
    (3, which CloudNativePG's instance manager and metrics exporter use as postgres), each PgBouncer's auth_query
    login, KEDA's role (its own pool in every PgBouncer, held to its connection limit on the server), and a few for a
    person's psql and the operator's checks."""
    return 3 + settings.pgbouncer_instances + POSTGRES_KEDA_CONNECTION_LIMIT + 5


def aws_default_tags(project: str, stack: str) -> dict[str, str]:
    """Tags on every AWS resource of the stack (the provider's default tags, and Karpenter's nodes)."""
    return {"project": project, "stack": stack, "managed-by": "pulumi"}


def config_key(field_name: str) -> str:
    """The `pulumi config` key of a settings field."""
    return f"{PROJECT_NAMESPACE}:{Settings.model_fields[field_name].alias}"


# Instance sizes Karpenter may pick for workers: vCPUs, and max pods (the VPC CNI's, without prefix delegation);
# memory follows the family's class (m: 4 GiB a vCPU, c: 2, r: 8). Other families are not modelled.
_SIZE_VCPUS_PODS = {"large": (2, 29), "xlarge": (4, 58), "2xlarge": (8, 58), "4xlarge": (16, 234),
                    "8xlarge": (32, 234), "12xlarge": (48, 234), "16xlarge": (64, 737), "24xlarge": (96, 737)}
_GIB_PER_VCPU = {"m": 4, "c": 2, "r": 8}
# What a node keeps from its workers, as Karpenter plans it: the VM's memory overhead (its
# vmMemoryOverheadPercent), EKS's kube-reserved (CPU by its tiers; memory 255Mi + 11Mi a pod), the kubelet's
# eviction threshold, and the DaemonSets every node runs (EKS add-ons, node-exporter), rounded up.
_VM_MEMORY_OVERHEAD = 0.075
_DAEMONSETS_CPU_M, _DAEMONSETS_MEMORY_MI, _EVICTION_MI = 350, 450, 100


def _kube_reserved_cpu_m(vcpus: int) -> int:
    """EKS's kube-reserved CPU: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above."""
    return int(60 + 10 * (vcpus > 1) + 5 * min(max(vcpus - 2, 0), 2) + 2.5 * max(vcpus - 4, 0))


def workers_per_node(settings: Settings, family: str, size: str) -> Optional[int]:
    """How many Celery workers (by their requests) one node of this type holds, or None when not modelled."""
    if size not in _SIZE_VCPUS_PODS or family[:1] not in _GIB_PER_VCPU:
        return None
    vcpus, pods = _SIZE_VCPUS_PODS[size]
    cpu_m = vcpus * 1000 - _kube_reserved_cpu_m(vcpus) - _DAEMONSETS_CPU_M
    memory_mi = (vcpus * _GIB_PER_VCPU[family[:1]] * 1024 * (1 - _VM_MEMORY_OVERHEAD) - (255 + 11 * pods)
                 - _EVICTION_MI - _DAEMONSETS_MEMORY_MI)
    worker_cpu_m, worker_memory = worker_pod_requests(settings)
    return max(0, min(cpu_m // worker_cpu_m, int(memory_mi * 2**20 // worker_memory)))


def worker_pod_requests(settings: Settings) -> tuple[int, int]:
    """A Celery worker pod's requests, millicores and bytes: the worker and, when DAGs come from git, git-sync."""
    cpu, memory = millicores(settings.worker_cpu), memory_bytes(settings.worker_memory)
    if settings.git_sync_repository:
        cpu, memory = cpu + millicores(GIT_SYNC_REQUESTS[0]), memory + memory_bytes(GIT_SYNC_REQUESTS[1])
    return cpu, memory


def _worker_capacity_problems(settings: Settings) -> list[tuple[str, str]]:
    """KEDA's maximum against the NodePool. Karpenter picks whichever allowed type is cheapest for the workers
    pending at that moment, and never repacks workers (do-not-disrupt), so the limits must hold the maximum
    even if every node is of the allowed type that packs the fewest within them. Types the model does not
    know get the totals check only."""
    worst: Optional[tuple[int, str]] = None
    fitting, unknown = False, False
    for family in settings.karpenter_instance_families:
        for size in settings.karpenter_instance_sizes:
            per_node = workers_per_node(settings, family, size)
            if per_node is None:
                unknown = True
                continue
            if per_node == 0:
                continue   # Karpenter never picks a type a worker does not fit
            fitting = True
            vcpus = _SIZE_VCPUS_PODS[size][0]
            nodes = min(settings.karpenter_cpu_limit // vcpus,
                        settings.karpenter_memory_limit_gib // (vcpus * _GIB_PER_VCPU[family[:1]]))
            if worst is None or nodes * per_node < worst[0]:
                worst = (nodes * per_node, f"{family}.{size}")
    problems = _worker_totals_problems(settings) if unknown else []
    if not fitting and not unknown:
        return [("workerCpu", f"a worker of workerCpu {settings.worker_cpu} and workerMemory "
                              f"{settings.worker_memory} fits on none of the karpenterInstanceFamilies x "
                              "karpenterInstanceSizes: allow larger sizes or ask less")]
    if worst is not None and worst[0] < settings.worker_max_replicas:
        problems.append(("workerMaxReplicas", f"{settings.worker_max_replicas} workers of {settings.worker_cpu} vCPU "
                         f"and {settings.worker_memory} may not fit the worker NodePool: karpenterCpuLimit / "
                         f"karpenterMemoryLimitGib ({settings.karpenter_cpu_limit} vCPUs, "
                         f"{settings.karpenter_memory_limit_gib} GiB) hold {worst[0]} on {worst[1]} nodes, the "
                         "allowed type that packs the fewest; raise karpenterCpuLimit and karpenterMemoryLimitGib, "
                         "narrow the types or lower workerMaxReplicas"))
    return problems


def _worker_totals_problems(settings: Settings) -> list[tuple[str, str]]:
    """Without a model of the instance types: at least the workers' requests must be within the limits."""
    cpu_m, memory_each = worker_pod_requests(settings)
    cpu, memory = settings.worker_max_replicas * cpu_m, settings.worker_max_replicas * memory_each
    if cpu > settings.karpenter_cpu_limit * 1000 or memory > settings.karpenter_memory_limit_gib * 2**30:
        return [("workerMaxReplicas", f"{settings.worker_max_replicas} workers need {cpu / 1000:g} vCPUs and "
                 f"{memory / 2**30:g} GiB; karpenterCpuLimit ({settings.karpenter_cpu_limit}) / "
                 f"karpenterMemoryLimitGib ({settings.karpenter_memory_limit_gib}) allow less")]
    return []


def _standard_support_problems(settings: Settings) -> list[tuple[str, str]]:
    """EKS upgrades a control plane whose version left standard support by itself (upgrade policy STANDARD); the
    stack's version is then a downgrade it refuses. A version the calendar does not list yet passes."""
    ends, day = EKS_STANDARD_SUPPORT_ENDS.get(settings.kubernetes_version), today()
    if not settings.is_aws or ends is None or day <= ends:
        return []
    newer = [version for version, end in EKS_STANDARD_SUPPORT_ENDS.items() if end >= day]
    supported = ", ".join(newer) if newer else "none listed: add the next version's date to EKS_STANDARD_SUPPORT_ENDS"
    return [("kubernetesVersion", f"{settings.kubernetes_version} left EKS's standard support on {ends.isoformat()}: "
             "with the cluster's upgrade policy (STANDARD) EKS upgrades the control plane by itself, after which "
             f"{settings.kubernetes_version} is a downgrade it refuses. Run `pulumi refresh` to read the version "
             "the cluster runs now, set kubernetesVersion to it, then raise it one minor version per `up` to one "
             f"in standard support ({supported})")]


# What is never an internet host's address (IANA special-purpose ranges: private, shared, loopback, link-local,
# "this network", multicast and reserved): components/security.py opens git-sync's way out to every address but
# these (and the VPC) unless gitSyncEgressCidrs says where.
NON_PUBLIC_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                     "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/3")
# Of those, where no git host can be: loopback, link-local (the instance metadata service), "this network",
# multicast and reserved.
NEVER_A_GIT_HOST = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/3")
# How wide an entry of gitSyncEgressCidrs may be where it reaches into private addresses or the VPC: the git host's
# own addresses, not the network around it (which holds the EKS API's and the stores' interfaces).
GIT_SYNC_PRIVATE_PREFIX = 28


def _git_sync_problems(settings: Settings) -> list[tuple[str, str]]:
    """The policies let git-sync out on 443 only, to gitSyncEgressCidrs or else the public internet (IPv4): a URL
    they would cut off fails here rather than as pods stuck in Init, and the setting cannot reopen the VPC."""
    if not settings.git_sync_repository:
        return [("gitSyncEgressCidrs", "is used only with gitSyncRepository: set both, or neither")] \
            if settings.git_sync_egress_cidrs else []
    problems = _git_sync_cidr_problems(settings)
    url = urllib.parse.urlsplit(settings.git_sync_repository)
    try:
        port = url.port
    except ValueError:
        port = -1
    if not url.hostname:
        return problems + [("gitSyncRepository", f"{settings.git_sync_repository!r} names no host: give "
                                                 "https://<host>/<path>")]
    if port not in (None, 443):
        return problems + [("gitSyncRepository", f"{settings.git_sync_repository!r}: git-sync may use HTTPS on port "
                                                 "443 only (the NetworkPolicies admit no other port)")]
    try:
        address = ipaddress.ip_address(url.hostname)
    except ValueError:
        return problems
    if address.version == 6:
        return problems + [("gitSyncRepository", f"{address} is IPv6: the cluster's policies are IPv4 only; give an "
                                                 "IPv4 address or a host name")]
    allowed = settings.git_sync_egress_cidrs or None
    if allowed is not None and not any(address in network for network in allowed):
        problems.append(("gitSyncRepository", f"{address} is outside gitSyncEgressCidrs ({', '.join(map(str, allowed))})"))
    elif allowed is None and any(address in ipaddress.IPv4Network(cidr) for cidr in NON_PUBLIC_RANGES):
        problems.append(("gitSyncRepository", f"{address} is not a public address, and git-sync may reach only the "
                                              "public internet: set gitSyncEgressCidrs to the git host's address"))
    return problems


def _git_sync_cidr_problems(settings: Settings) -> list[tuple[str, str]]:
    inside = [ipaddress.IPv4Network(cidr) for cidr in NON_PUBLIC_RANGES if cidr not in NEVER_A_GIT_HOST]
    if settings.is_aws:
        inside.append(settings.vpc_cidr)
    problems = []
    for network in settings.git_sync_egress_cidrs:
        if any(network.overlaps(ipaddress.IPv4Network(cidr)) for cidr in NEVER_A_GIT_HOST):
            problems.append(("gitSyncEgressCidrs", f"{network} reaches loopback, link-local (the metadata service), "
                                                   "multicast or reserved addresses: name the git host's network"))
        elif network.prefixlen < GIT_SYNC_PRIVATE_PREFIX and any(network.overlaps(cidr) for cidr in inside):
            problems.append(("gitSyncEgressCidrs", f"{network} reaches into private addresses or the VPC "
                                                   f"({settings.vpc_cidr}) wider than /{GIT_SYNC_PRIVATE_PREFIX}: "
                                                   "there name the git host's own addresses (/28 or narrower), "
                                                   "not the network that holds the cluster's API and stores"))
    return problems


def _github_problems(settings: Settings) -> list[tuple[str, str]]:
    if not settings.github_repository:
        return [("githubConnectionArn", "is used only with githubRepository: set both, or neither")] \
            if settings.github_connection_arn else []
    if not settings.is_aws:
        return [("githubRepository", "needs target 'aws': its roles and runners are AWS resources")]
    if not settings.github_connection_arn:
        return [("githubConnectionArn", "is required with githubRepository: create a connection to GitHub in "
                                        f"region {settings.region or '<region>'} (README: Delivery) and set its ARN")]
    region = settings.github_connection_arn.split(":")[3]
    if region != settings.region:
        return [("githubConnectionArn", f"is in {region}, the stack in {settings.region}: CodeBuild uses a "
                                        "connection of its own region")]
    return []


def _cross_field_problems(settings: Settings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = [*_standard_support_problems(settings)]
    if settings.is_aws and not settings.region:
        problems.append(("region", "is required when target is 'aws' (for example eu-west-1)"))
    if settings.is_aws and not settings.ingress_host:
        problems.append(("ingressHost", "is required when target is 'aws' (the host name users open, e.g. airflow.example.com)"))
    if settings.is_aws and not settings.route53_zone_id:
        problems.append(("route53ZoneId", "is required when target is 'aws' (the zone of ingressHost: it holds the "
                                          "alias record and validates the certificate unless certificateArn is set)"))
    if settings.postgres_restore_target_time:
        if not settings.is_aws:
            problems.append(("postgresRestoreTargetTime", "needs target 'aws': only AWS stacks keep backups"))
        if settings.postgres_restore_from_server_name == settings.postgres_backup_server_name:
            problems.append((
                "postgresBackupServerName",
                f"must differ from postgresRestoreFromServerName ('{settings.postgres_restore_from_server_name}') "
                "while restoring: a restored cluster starts a new timeline and may not archive over the "
                "backups it came from (for example 'airflow-db-r1')"))
    if settings.is_aws and settings.service_cidr.overlaps(settings.vpc_cidr):
        problems.append(("kubernetesServiceCidr", f"must not overlap vpcCidr ({settings.vpc_cidr}), got "
                                                  f"{settings.service_cidr} (for example 10.100.0.0/16)"))
    for zone in settings.availability_zones:
        if settings.region and not zone.startswith(settings.region):
            problems.append(("availabilityZones", f"{zone!r} is not a zone of region {settings.region}"))
    beyond_c = [zone for zone in settings.availability_zones if zone[-1] > "c"] or \
        ([f"{settings.zone_count} zones"] if not settings.availability_zones and settings.zone_count > 3 else [])
    if settings.is_aws and beyond_c and settings.vpc_cidr.prefixlen > 19:
        problems.append(("vpcCidr", f"must be a /19 or larger for {', '.join(beyond_c)}: zones d-f get the small "
                                    f"subnets of the layout and a load balancer needs a /27; got {settings.vpc_cidr}"))
    if settings.is_aws and not settings.grafana_host:
        problems.append(("grafanaHost", "is required when target is 'aws' (the host name of Grafana, in "
                                        "route53ZoneId, e.g. grafana.example.com)"))
    if settings.grafana_host and settings.grafana_host == settings.ingress_host:
        problems.append(("grafanaHost", f"must differ from ingressHost ({settings.ingress_host}): both are "
                                        "served by the same load balancer, by host name"))
    email = [settings.alert_email_to, settings.alert_email_from, settings.alert_smtp_smarthost]
    if any(email) and not all(email):
        problems.append(("alertEmailTo", "alertEmailTo, alertEmailFrom and alertSmtpSmarthost go together: set "
                                         "all three for e-mail alerts, or none"))
    for key, engine, managed in (("databaseEngine", settings.database_engine, settings.managed_database),
                                 ("brokerEngine", settings.broker_engine, settings.managed_broker),
                                 ("secretsBackend", settings.secrets_backend,
                                  settings.secrets_backend == "aws-secrets-manager")):
        if managed and not settings.is_aws:
            problems.append((key, f"'{engine}' needs target 'aws'; a local stack runs the in-cluster engines "
                                  "(cloudnative-pg, redis-ha) and keeps connections in the metadata database"))
    if settings.database_engine == "rds" and settings.database_max_storage_gib < settings.database_storage_gib:
        problems.append(("databaseMaxStorageGib", f"must be at least databaseStorageGib "
                                                  f"({settings.database_storage_gib}), got {settings.database_max_storage_gib}"))
    retention = settings.database_performance_insights_retention_days
    if retention != 7 and retention % 31:
        problems.append(("databasePerformanceInsightsRetentionDays",
                         f"must be 7 or a multiple of 31 (31, 62, ... 731), got {retention}"))
    if settings.managed_broker:
        oldest = {"valkey": (7, 2), "redis": (7, 0)}[settings.elasticache_engine]
        if tuple(int(part) for part in settings.elasticache_engine_version.split(".")) < oldest:
            problems.append(("elasticacheEngineVersion",
                             f"{settings.elasticache_engine} {settings.elasticache_engine_version} is too old: valkey "
                             "7.2 or newer, redis 7.0 or newer (AUTH with in-transit encryption, Multi-AZ failover)"))
    if settings.database_engine == "cloudnative-pg":
        pooled = settings.pgbouncer_instances * settings.pgbouncer_pool_size * POOLED_ROLES
        left = settings.postgres_max_connections - postgres_reserved_connections(settings)
        if pooled > left:
            problems.append(("pgbouncerPoolSize", f"pgbouncerInstances ({settings.pgbouncer_instances}) × pgbouncerPoolSize "
                                                  f"({settings.pgbouncer_pool_size}) × {POOLED_ROLES} roles = {pooled} "
                                                  "server connections (each PgBouncer pod pools its own, one pool per "
                                                  f"role: Airflow's and its workers') exceed the {left} that "
                                                  f"postgresMaxConnections ({settings.postgres_max_connections}) leaves "
                                                  "beside superusers, the operator, KEDA and the poolers' auth_query: lower "
                                                  "one, or raise postgresMaxConnections"))
    problems.extend(_github_problems(settings))
    problems.extend(_git_sync_problems(settings))
    if settings.elasticache_auth_token_set_generation == 1:
        problems.append(("elasticacheAuthTokenSetGeneration", "1 names the token the group was created with: there "
                                                              "is no older one to drop (0, or a raised generation)"))
    if settings.managed_broker and settings.broker_password_generation > \
            max(settings.elasticache_auth_token_set_generation, 1) + 1:
        problems.append(("brokerPasswordGeneration",
                         f"{settings.broker_password_generation} is more than one past the token ElastiCache uses "
                         f"alone (elasticacheAuthTokenSetGeneration {settings.elasticache_auth_token_set_generation}): "
                         "ElastiCache holds two tokens at most; complete the rotation first (set "
                         "elasticacheAuthTokenSetGeneration to the previous generation)"))
    if settings.elasticache_auth_token_set_generation > settings.broker_password_generation:
        problems.append(("elasticacheAuthTokenSetGeneration",
                         f"must not exceed brokerPasswordGeneration ({settings.broker_password_generation}), got "
                         f"{settings.elasticache_auth_token_set_generation}: it names a token that exists"))
    if settings.worker_min_replicas > settings.worker_max_replicas:
        problems.append(("workerMinReplicas", f"must not exceed workerMaxReplicas ({settings.worker_max_replicas}), "
                                              f"got {settings.worker_min_replicas}"))
    if settings.is_aws and not settings.karpenter and not settings.has_worker_node_group:
        problems.append(("workerNodeGroup", "is off and so is karpenter: Celery workers would have no node to run "
                                            "on; turn one of them on"))
    if settings.uses_karpenter:
        problems.extend(_worker_capacity_problems(settings))
        if settings.cluster_name and len(settings.cluster_name) > 70:
            problems.append(("clusterName", "must be at most 70 characters with Karpenter (its interruption queue "
                                            "is named <clusterName>-karpenter, and SQS allows 80)"))
    if not settings.worker_node_min <= settings.worker_node_desired <= settings.worker_node_max:
        problems.append((
            "workerNodeDesired",
            f"must lie between workerNodeMin ({settings.worker_node_min}) and workerNodeMax "
            f"({settings.worker_node_max}), got {settings.worker_node_desired}"))
    return problems


SECRET_SETTINGS = tuple(field.alias for field in Settings.model_fields.values()
                        if (field.json_schema_extra or {}).get("secret"))


def _plain_text_secrets(raw: dict[str, str]) -> list[str]:
    """Secret settings given without `--secret`: they would sit in plain text in the stack file."""
    return [f"{PROJECT_NAMESPACE}:{key}: must be set with `pulumi config set --secret {PROJECT_NAMESPACE}:{key}`, "
            "not in plain text" for key in SECRET_SETTINGS
            if raw.get(key) and not pulumi.runtime.is_config_secret(f"{PROJECT_NAMESPACE}:{key}")]


def _project_config() -> dict[str, str]:
    """Every config value of the project's namespace, keyed without the namespace.

    The language host hands config to the program either explicitly (`set_all_config`) or through the
    PULUMI_CONFIG environment variable; both are read so an unknown key cannot hide in either.
    """
    merged = {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    prefix = f"{PROJECT_NAMESPACE}:"
    return {key[len(prefix):]: value for key, value in merged.items() if key.startswith(prefix)}


def _parse_value(raw: Any) -> Any:
    # Pulumi hands structured values (lists, objects) to the program as JSON text.
    if isinstance(raw, str) and raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _describe_error(error: dict[str, Any]) -> tuple[str, str]:
    loc = error["loc"]
    key = str(loc[0])
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    allowed = ""
    field = next((f for f in Settings.model_fields.values() if f.alias == key), None)
    if field is not None and field.description:
        allowed = f" ({field.description})"
    return key, f"{where}: {message}; got {error.get('input')!r}{allowed}" if where else \
        f": {message}; got {error.get('input')!r}{allowed}"


def aws_name_prefix(project: str, stack: str) -> str:
    """What AWS names of a stack start with (`<project>-<stack>`): the EKS cluster (unless clusterName is set),
    S3 bucket prefixes, the backup vault and plan, KMS aliases. Two projects may both have a `prod` stack in
    one account; their names must not collide."""
    return f"{project}-{stack}"


def github_role_name(name_prefix: str, purpose: Literal["deploy", "preview"]) -> str:
    """The IAM role a workflow assumes to deploy or preview the stack (githubRepository). A fixed name: the cluster
    checks the principal running `pulumi up` against it before the role exists in this run."""
    return f"{name_prefix}-github-{purpose}"


# S3 bucket prefixes (`<prefix>-backups-`) may have 37 characters at most, lower case.
_AWS_NAME_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,27}$")


def _name_prefix_problems(settings: Settings, project: str, stack: str) -> list[str]:
    prefix = aws_name_prefix(project, stack)
    if settings.is_aws and not _AWS_NAME_PREFIX.match(prefix):
        return [f"project {project!r} and stack {stack!r}: target 'aws' names buckets, the backup vault and plan "
                f"and KMS aliases '{prefix}': use lower-case letters, digits and '-', at most 28 characters for "
                "both with the '-' between them (for example project 'airflow' and stack 'prod-eu')"]
    return []


def load_settings(raw_config: Optional[dict[str, str]] = None, stack: Optional[str] = None,
                  project: str = PROJECT_NAMESPACE) -> Settings:
    """Read and validate the stack's settings; raise SettingsError naming every bad key. `stack` and `project`
    default to the running stack's when the config is the running stack's."""
    raw = _project_config() if raw_config is None else raw_config
    known = {field.alias for field in Settings.model_fields.values()}
    problems: list[str] = _plain_text_secrets(raw) if raw_config is None else []
    for key in sorted(set(raw) - known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean '{PROJECT_NAMESPACE}:{close[0]}'?" if close else ""
        problems.append(f"{PROJECT_NAMESPACE}:{key}: unknown setting{hint}")
    settings: Optional[Settings] = None
    try:
        settings = Settings.model_validate({k: _parse_value(v) for k, v in raw.items() if k in known})
    except ValidationError as exc:
        for error in exc.errors():
            key, text = _describe_error(error)
            problems.append(f"{PROJECT_NAMESPACE}:{key}{text}")
    if settings is not None:
        problems.extend(f"{PROJECT_NAMESPACE}:{key}: {text}" for key, text in _cross_field_problems(settings))
        if raw_config is None:
            stack, project = stack or pulumi.get_stack(), pulumi.get_project()
        if stack is not None:
            problems.extend(_name_prefix_problems(settings, project, stack))
    if problems:
        raise SettingsError("invalid stack settings:\n  - " + "\n  - ".join(problems))
    assert settings is not None
    return settings


def settings_reference_markdown() -> str:
    """The settings table the README carries (`python -m components.settings`)."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for field in Settings.model_fields.values():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, ipaddress.IPv4Network):
            default = str(default)
        rows.append(f"| `{PROJECT_NAMESPACE}:{field.alias}` | `{json.dumps(default)}` | {field.description} |")
    return "\n".join(rows)


# Project config in Pulumi.yaml can declare only these types; map-valued settings are documented in the README.
_PULUMI_YAML_TYPES = {bool: "boolean", int: "integer", str: "string", list: "array"}


def pulumi_yaml_config() -> dict[str, dict]:
    """The `config:` block of Pulumi.yaml: every setting Pulumi can declare, with its type, default and
    description (`python -m components.settings --pulumi-yaml`)."""
    block: dict[str, dict] = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, ipaddress.IPv4Network):
            default = str(default)
        if isinstance(default, dict) or name == "worker_node_taints" or field.alias in SECRET_SETTINGS:
            continue
        entry: dict = {"type": _PULUMI_YAML_TYPES[type(default)]}
        if isinstance(default, list):
            entry["items"] = {"type": "string"}
        entry.update(default=default, description=field.description)
        block[field.alias] = entry
    return block


if __name__ == "__main__":
    import sys

    if "--pulumi-yaml" in sys.argv:
        print(json.dumps(pulumi_yaml_config(), indent=2))
    else:
        print(settings_reference_markdown())
