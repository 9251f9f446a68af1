"""Cluster add-ons: the EKS add-ons, the default StorageClass and the AWS Load Balancer Controller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import workloads as w
from components.cluster.context import AwsContext
from components.cluster.network import Network
from components.helm import chart_release
from components.iam import POD_IDENTITY_TRUST_POLICY, managed_policy_arn
from components.pods import NOBODY, NONROOT_UID, container_security_context, pod_security_context, resources

LOAD_BALANCER_CONTROLLER_POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_STORAGE_CLASS = "gp3-encrypted"
# Installed before the nodes join: a node is not Ready without the CNI, and the CNI must come up with
# NetworkPolicy enforcement on, not be reconfigured under running pods.
ADDONS_BEFORE_NODES = ("vpc-cni", "kube-proxy", "eks-pod-identity-agent")
# Installed once nodes exist: they run Deployments that cannot schedule (and report degraded) without nodes.
ADDONS_AFTER_NODES = ("coredns", "aws-ebs-csi-driver", "aws-efs-csi-driver", "metrics-server")
# Add-on -> (short name, service account, AWS managed policy) of the role it gets through Pod Identity.
ADDONS_WITH_POD_IDENTITY = {
    "aws-ebs-csi-driver": ("ebs-csi", "ebs-csi-controller-sa", "service-role/AmazonEBSCSIDriverPolicy"),
    "aws-efs-csi-driver": ("efs-csi", "efs-csi-controller-sa", "service-role/AmazonEFSCSIDriverPolicy"),
}


def load_balancer_controller_policy(version: str, partition: str) -> str:
    """The IAM policy the controller publishes for `version`, for the partition the cluster runs in.

    Upstream publishes one file per partition (iam_policy.json, iam_policy_cn.json, iam_policy_us-gov.json);
    they differ only in the partition of their resource ARNs, so the standard file is pinned and its
    `arn:aws:` ARNs are rewritten for aws-cn and aws-us-gov."""
    policy_file = LOAD_BALANCER_CONTROLLER_POLICY_DIR / f"aws-load-balancer-controller-v{version}.json"
    if not policy_file.exists():
        raise ValueError(
            f"airflow:awsLoadBalancerControllerChartVersion: no IAM policy is pinned for {version}; add the "
            f"policy the controller publishes for that version as {policy_file.name}")
    if partition not in ("aws", "aws-cn", "aws-us-gov"):
        raise ValueError(f"AWS partition {partition!r}: the load balancer controller policy is pinned for aws, "
                         "aws-cn and aws-us-gov")
    return policy_file.read_text().replace('"arn:aws:', f'"arn:{partition}:')


def addon_version(ctx: AwsContext, addon: str, eks_cluster: aws.eks.Cluster) -> pulumi.Input[str]:
    pinned = ctx.settings.addon_versions.get(addon)
    if pinned:
        return pinned
    # AWS's default version for the pinned Kubernetes version: stable across runs, unlike "latest".
    return aws.eks.get_addon_version_output(
        addon_name=addon, kubernetes_version=eks_cluster.version, most_recent=False,
        opts=pulumi.InvokeOutputOptions(provider=ctx.invoke.provider)).version


def eks_addon(ctx: AwsContext, eks_cluster: aws.eks.Cluster, addon: str,
          after: Optional[list[pulumi.Resource]] = None) -> aws.eks.Addon:
    """An EKS add-on at AWS's default version for the cluster's Kubernetes (or the pinned one)."""
    name = ctx.name
    configuration: Optional[str] = None
    pod_identities: list[aws.eks.AddonPodIdentityAssociationArgsDict] = []
    if addon == "vpc-cni":
        configuration = json.dumps({"enableNetworkPolicy": "true"})
    elif addon in ADDONS_WITH_POD_IDENTITY:
        pod_identities = [pod_identity_role_for_addon(ctx, *ADDONS_WITH_POD_IDENTITY[addon])]
    return aws.eks.Addon(
        f"{name}-{addon}",
        cluster_name=eks_cluster.name,
        addon_name=addon,
        addon_version=addon_version(ctx, addon, eks_cluster),
        configuration_values=configuration,
        pod_identity_associations=pod_identities or None,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=after or [])),
    )


def pod_identity_role_for_addon(ctx: AwsContext, short: str, service_account: str,
                                policy: str) -> aws.eks.AddonPodIdentityAssociationArgsDict:
    name = ctx.name
    role = aws.iam.Role(f"{name}-{short}", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=ctx.aws)
    aws.iam.RolePolicyAttachment(f"{name}-{short}", role=role.name,
                                 policy_arn=managed_policy_arn(ctx.partition, policy), opts=ctx.aws)
    return {"role_arn": role.arn, "service_account": service_account}


def build_default_storage_class(ctx: AwsContext, provider: k8s.Provider) -> k8s.storage.v1.StorageClass:
    """The default StorageClass: encrypted gp3 through the EBS CSI driver, volumes kept unless throwaway."""
    protect = ctx.settings.protect_stateful_resources
    return k8s.storage.v1.StorageClass(
        f"{ctx.name}-gp3",
        metadata={"name": DEFAULT_STORAGE_CLASS,
                  "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        provisioner="ebs.csi.aws.com",
        parameters={"type": "gp3", "encrypted": "true"},
        volume_binding_mode="WaitForFirstConsumer",
        allow_volume_expansion=True,
        # Volumes outlive their claims unless the stack is declared throwaway.
        reclaim_policy="Retain" if protect else "Delete",
        opts=pulumi.ResourceOptions(parent=ctx.component, provider=provider),
    )


def build_load_balancer_controller(ctx: AwsContext, eks_cluster: aws.eks.Cluster, network: Network,
                                   pod_identity_agent: aws.eks.Addon, provider: k8s.Provider) -> k8s.helm.v3.Release:
    """The AWS Load Balancer Controller, with its published IAM policy through EKS Pod Identity."""
    settings, name = ctx.settings, ctx.name
    version = settings.aws_load_balancer_controller_chart_version
    role = aws.iam.Role(f"{name}-lb-controller", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=ctx.aws)
    policy = aws.iam.RolePolicy(
        f"{name}-lb-controller", role=role.id,
        policy=load_balancer_controller_policy(version, ctx.partition or "aws"), opts=ctx.aws)
    service_account = "aws-load-balancer-controller"
    association = aws.eks.PodIdentityAssociation(
        f"{name}-lb-controller", cluster_name=eks_cluster.name, namespace="kube-system",
        service_account=service_account, role_arn=role.arn,
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=[pod_identity_agent])))
    return chart_release(
        f"{name}-lb-controller", chart="aws-load-balancer-controller", version=version,
        repo="https://aws.github.io/eks-charts", namespace="kube-system",
        values=load_balancer_controller_values(eks_cluster.name, settings.region, network.vpc_id, service_account),
        # Its credentials must exist before its first pod starts, or it crash-loops until they do.
        opts=pulumi.ResourceOptions(parent=ctx.component, provider=provider, depends_on=[association, policy]),
    )


def load_balancer_controller_values(cluster_name: pulumi.Input[str], region: str, vpc_id: pulumi.Input[str],
                                    service_account: str) -> dict:
    return {
        "clusterName": cluster_name,
        # Given explicitly: with IMDS limited to one hop the controller cannot discover them.
        "region": region,
        "vpcId": vpc_id,
        "replicaCount": 2,
        "serviceAccount": {"create": True, "name": service_account},
        "podDisruptionBudget": {"maxUnavailable": 1},
        "resources": resources("100m", "128Mi", memory_limit="512Mi"),
        "nodeSelector": dict(w.SYSTEM_NODES),
        # kube-system enforces no Pod Security level; the controller meets `restricted` all the same. Its
        # image is a static binary on a distroless base whose user is 65532 (NONROOT_UID).
        "podSecurityContext": pod_security_context(NONROOT_UID, gid=NONROOT_UID, fs_group=NOBODY),
        "securityContext": container_security_context(read_only_root=True),
        # The controller's Service webhook (failurePolicy Fail, every Service create) would refuse the Services
        # of every release installed while the controller has no ready endpoint; no Service here is of type
        # LoadBalancer, so it has nothing to do.
        "enableServiceMutatorWebhook": False,
    }
