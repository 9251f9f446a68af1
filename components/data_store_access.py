"""Who may reach a managed data store (Aurora, RDS, ElastiCache): one port, from the cluster's security group."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.handles import ClusterHandle


def cluster_only_security_group(resource_name: str, *, cluster: ClusterHandle, port: int, what: str, keep: bool,
                                opts: pulumi.ResourceOptions) -> tuple[aws.ec2.SecurityGroup,
                                                                       aws.vpc.SecurityGroupIngressRule]:
    """A security group admitting `port` from EKS's nodes and pods only (the VPC CNI gives pods the nodes' groups,
    which carry the cluster security group), and nothing out. The rule is its own resource: the group, and the
    data store in it, are created while EKS is; only the rule waits for the cluster's group. `keep`: the group
    stays on `destroy` with the store that uses it (AWS refuses to delete it before); the rule goes, as it names
    the cluster's group, which EKS deletes with the cluster."""
    if cluster.vpc_id is None or cluster.cluster_security_group_id is None:
        raise ValueError(f"{what}: a managed store needs the EKS cluster's VPC and security group (target=aws)")
    vpc_id, node_security_group_id = cluster.vpc_id, cluster.cluster_security_group_id
    group = aws.ec2.SecurityGroup(resource_name, vpc_id=vpc_id, description=f"{what}, from EKS only", egress=[],
                                  opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=keep)))
    rule = aws.vpc.SecurityGroupIngressRule(
        f"{resource_name}-from-eks", security_group_id=group.id, referenced_security_group_id=node_security_group_id,
        ip_protocol="tcp", from_port=port, to_port=port, description=f"{what} from EKS nodes and pods", opts=opts)
    return group, rule
