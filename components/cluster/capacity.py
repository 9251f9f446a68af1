"""Node capacity: the managed node groups the cluster's pods run on."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components import workloads as w
from components.cluster.context import AwsContext
from components.cluster.network import Network
from components.iam import managed_policy_arn, service_trust_policy


def build_node_groups(ctx: AwsContext, eks_cluster: aws.eks.Cluster, network: Network,
                      early_addons: list[aws.eks.Addon]) -> list[aws.eks.NodeGroup]:
    """The managed node groups: system (on demand, a fixed size) and workers (their size left to an autoscaler),
    on one launch template (IMDSv2, encrypted gp3)."""
    settings, name = ctx.settings, ctx.name
    role = aws.iam.Role(f"{name}-node", assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
                        opts=ctx.aws)
    attachments = [
        aws.iam.RolePolicyAttachment(f"{name}-node-{policy}", role=role.name,
                                     policy_arn=managed_policy_arn(ctx.partition, policy), opts=ctx.aws)
        for policy in ("AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly", "AmazonEKS_CNI_Policy")
    ]
    launch_template = aws.ec2.LaunchTemplate(
        f"{name}-node",
        # IMDSv2 only, one hop: pods cannot borrow the node's role; they get their own via Pod Identity.
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                          "http_put_response_hop_limit": 1},
        block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
            "volume_size": settings.node_disk_size_gib, "volume_type": "gp3", "encrypted": "true",
            "delete_on_termination": "true"}}],
        update_default_version=True,
        opts=ctx.aws)
    common = dict(
        cluster_name=eks_cluster.name,
        node_role_arn=role.arn,
        subnet_ids=network.private_subnet_ids,
        ami_type="AL2023_x86_64_STANDARD",
        launch_template={"id": launch_template.id, "version": launch_template.latest_version.apply(str)},
        # Nodes follow the control plane: upgrading kubernetesVersion rolls them onto the new version.
        version=eks_cluster.version,
        update_config={"max_unavailable": 1},
        node_repair_config={"enabled": True},
    )
    depends = [*attachments, *early_addons]
    system = aws.eks.NodeGroup(
        f"{name}-system",
        capacity_type="ON_DEMAND",
        instance_types=settings.system_node_instance_types,
        scaling_config={"min_size": settings.system_node_count, "desired_size": settings.system_node_count,
                        "max_size": settings.system_node_count},
        labels=dict(w.SYSTEM_NODES),
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=depends)),
        **common)
    workers = aws.eks.NodeGroup(
        f"{name}-workers",
        capacity_type=settings.worker_capacity_type,
        instance_types=settings.worker_node_instance_types,
        scaling_config={"min_size": settings.worker_node_min, "desired_size": settings.worker_node_desired,
                        "max_size": settings.worker_node_max},
        labels={**settings.worker_node_labels, **w.WORKER_NODES},
        taints=[taint.model_dump() for taint in settings.worker_node_taints] or None,
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
            depends_on=depends,
            # A node autoscaler owns the running size; Pulumi must not reset it on every `up`.
            ignore_changes=["scalingConfig.desiredSize"])),
        **common)
    return [system, workers]
