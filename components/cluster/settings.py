"""Cluster's settings: where the cluster runs (the local context, or the AWS network, control plane and add-ons),
and its nodes (the system node group, the worker node group and Karpenter's worker NodePool)."""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from components.platform import (
    INSTANCE_TYPE,
    LABEL_KEY,
    PlatformSettings,
    principal_arns_problem,
)
from components.workloads import NODE_ROLE_LABEL

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)

# EKS add-ons the Cluster installs; a version override may name only these.
EKS_ADDONS = ("vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent", "aws-ebs-csi-driver",
              "aws-efs-csi-driver", "metrics-server")

# When each Kubernetes version leaves EKS's standard support (AWS's Kubernetes release calendar, "Understand the
# Kubernetes version lifecycle on EKS"): with the STANDARD upgrade policy EKS then upgrades the control plane.
EKS_STANDARD_SUPPORT_ENDS = {
    "1.30": datetime.date(2025, 7, 23), "1.31": datetime.date(2025, 11, 26), "1.32": datetime.date(2026, 3, 23),
    "1.33": datetime.date(2026, 7, 29), "1.34": datetime.date(2026, 12, 2), "1.35": datetime.date(2027, 3, 27),
}


def today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


CapacityType = Literal["on-demand", "spot"]
Architecture = Literal["amd64", "arm64"]


class NodeTaint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=LABEL_KEY.pattern, description="Taint key.")
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


class ClusterSettings(PlatformSettings):
    """Where the cluster runs: the local context, or the AWS network, control plane and add-ons."""

    kube_context: str = Field(
        default="kind-airflow", min_length=1, max_length=253,
        description="Kubeconfig context of the local cluster (target=local). Named explicitly so a "
                    "`pulumi up --stack local` never lands on whatever context happens to be current.")
    kubeconfig_path: str = Field(
        default="", max_length=4096,
        description="Kubeconfig file for target=local; empty means the usual lookup ($KUBECONFIG, ~/.kube/config).")
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
    s3_endpoint_buckets: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9*][a-z0-9.*-]{1,62}$")]] = Field(
        default_factory=list, max_length=50,
        description="S3 buckets (names, `*` wildcards allowed) tasks may use besides the platform's own: every S3 "
                    "request from the VPC to the region goes through its endpoint, whose policy admits only those.")
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

    @field_validator("control_plane_log_retention_days")

    @classmethod
    def _log_retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch accepts only {', '.join(map(str, LOG_RETENTION_DAYS))}")
        return value

    @field_validator("addon_versions")

    @classmethod
    def _addon_names(cls, values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if name not in EKS_ADDONS:
                raise ValueError(f"{name!r} is not an add-on this stack installs ({', '.join(EKS_ADDONS)})")
        return values

    @property
    def zone_count(self) -> int:
        return len(self.availability_zones) or self.availability_zone_count

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

    @field_validator("admin_principal_arns")

    @classmethod
    def _admin_principal_arns(cls, values: list[str]) -> list[str]:
        principal_arns_problem(values)
        return values


class NodeSettings(PlatformSettings):
    """The nodes: the system node group, the worker node group and Karpenter's worker NodePool."""

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
    karpenter_capacity_types: list[CapacityType] = Field(
        default_factory=lambda: list[CapacityType](["on-demand"]), min_length=1, max_length=2,
        description="Capacity types Karpenter may launch worker nodes as (with both it prefers spot).")
    karpenter_instance_families: list[str] = Field(
        default_factory=lambda: ["m7i", "m6i", "m7a", "m6a"], min_length=1, max_length=20,
        description="EC2 instance families for worker nodes (several keep spot capacity available).")
    karpenter_instance_sizes: list[str] = Field(
        default_factory=lambda: ["xlarge", "2xlarge", "4xlarge"], min_length=1, max_length=20,
        description="EC2 instance sizes for worker nodes.")
    karpenter_architectures: list[Architecture] = Field(
        default_factory=lambda: list[Architecture](["amd64"]), min_length=1, max_length=2,
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

    @field_validator("worker_node_taints")

    @classmethod
    def _distinct_worker_taints(cls, value: list[NodeTaint]) -> list[NodeTaint]:
        pairs = [(taint.key, taint.effect) for taint in value]
        if len(set(pairs)) != len(pairs):
            raise ValueError("two taints with the same key and effect; a node holds one of each")
        if any(taint.key == NODE_ROLE_LABEL for taint in value):
            raise ValueError(f"the key {NODE_ROLE_LABEL} is the platform's own (its worker taint); choose another")
        return value

    @field_validator("system_node_instance_types", "worker_node_instance_types")

    @classmethod
    def _instance_types(cls, values: list[str]) -> list[str]:
        for value in values:
            if not INSTANCE_TYPE.match(value):
                raise ValueError(f"{value!r} is not an EC2 instance type such as m6i.large")
        return values

    @field_validator("worker_node_labels")

    @classmethod
    def _labels(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            if not LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid Kubernetes label key")
        return values

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
    def system_nodes(self) -> int:
        return self.system_node_count if self.is_aws else 1
