"""The platform's shape, which every component reads: where it runs, what it keeps, which engines it uses; and
what all settings share (the config namespace, patterns, the error, AWS names). Each area's settings model sits
beside its component and extends PlatformSettings; components/config.py composes them into the one flat
configuration users write."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components.workloads import SYSTEM_NODES

PROJECT_NAMESPACE = "airflow"

INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
IAM_PRINCIPAL_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# An image digest, or empty (the image runs by tag).
DIGEST_PATTERN = r"^$|^sha256:[0-9a-f]{64}$"


class SettingsError(ValueError):
    """The stack's config is not acceptable; the message names every offending key."""


def principal_name(arn: str) -> str:
    """A resource name's part for an IAM principal: `role-<path-and-name>` or `user-…`, slashes as dashes."""
    return arn.split(":", 5)[5].replace("/", "-")


def principal_arns_problem(values: list[str]) -> None:
    """Raise ValueError unless every entry is an IAM role or user ARN, and no two name the same access entry."""
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


def aws_default_tags(project: str, stack: str) -> dict[str, str]:
    """Tags on every AWS resource of the stack (the provider's default tags, and Karpenter's nodes)."""
    return {"project": project, "stack": stack, "managed-by": "pulumi"}


def aws_name_prefix(project: str, stack: str) -> str:
    """What AWS names of a stack start with (`<project>-<stack>`): the EKS cluster (unless clusterName is set),
    S3 bucket prefixes, the backup vault and plan, KMS aliases. Two projects may both have a `prod` stack in
    one account; their names must not collide."""
    return f"{project}-{stack}"


def github_role_name(name_prefix: str, purpose: Literal["deploy", "preview"]) -> str:
    """The IAM role a workflow assumes to deploy or preview the stack (githubRepository). A fixed name: the cluster
    checks the principal running `pulumi up` against it before the role exists in this run."""
    return f"{name_prefix}-github-{purpose}"


class PlatformSettings(BaseModel):
    """What every component's settings carry. Config keys are the camelCase field names (`airflow:workerNodeMax`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

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
    region: str = Field(
        default="", pattern=r"^$|^[a-z]{2}(-[a-z]+)+-\d$",
        description="AWS region, for example `eu-west-1`. Required when target=aws.")
    database_engine: Literal["cloudnative-pg", "aurora", "rds"] = Field(
        default="cloudnative-pg",
        description="Where Airflow's metadata lives: `cloudnative-pg` (PostgreSQL in the cluster), `aurora` (Aurora "
                    "PostgreSQL, a writer and a reader in two zones) or `rds` (RDS PostgreSQL Multi-AZ). The "
                    "managed engines need target=aws.")
    broker_engine: Literal["redis-ha", "elasticache"] = Field(
        default="redis-ha",
        description="Celery's broker: `redis-ha` (Redis with Sentinel in the cluster) or `elasticache` (a "
                    "replication group with Multi-AZ failover; target=aws).")
    secrets_backend: Literal["none", "aws-secrets-manager"] = Field(
        default="none",
        description="Where Airflow looks up connections and variables before its metadata database: "
                    "`aws-secrets-manager` (SecretsManagerBackend, read through EKS Pod Identity; target=aws).")
    secrets_manager_prefix: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9_+=.@-]+(/[A-Za-z0-9_+=.@-]+)*$", max_length=200,
        description="Prefix of the stack's secrets: connections under <prefix>/connections/<conn_id>, variables "
                    "under <prefix>/variables/<key>. Empty means `airflow/<project>-<stack>`.")
    managed_apply_immediately: bool = Field(
        default=False,
        description="Aurora/RDS and ElastiCache make a change at once; false: most changes wait for their weekly "
                    "maintenance window (Sunday 04:00 and 05:00 UTC), which `python -m plan` says.")

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
    def system_node_selector(self) -> dict[str, str]:
        """Where everything but the Celery workers runs: the on-demand system nodes (none locally)."""
        return dict(SYSTEM_NODES) if self.is_aws else {}

    @property
    def system_placement(self) -> dict:
        """Chart or pod-spec values that put a workload on the system nodes (nothing locally)."""
        return {"nodeSelector": self.system_node_selector} if self.system_node_selector else {}
