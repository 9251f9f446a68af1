"""What every part of the Cluster component builds with: its settings, the options that parent a resource to
the component on the AWS provider, and the AWS partition."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.cluster.settings import ClusterSettings, NodeSettings


@dataclass
class AwsContext:
    # The resource-name prefix (the component's name) and the EKS cluster's name.
    name: str
    cluster_name: str
    # `<project>-<stack>`, the start of the stack's AWS names (its buckets' among them).
    name_prefix: str
    settings: ClusterSettings
    nodes: NodeSettings
    # A stopping worker's grace period (Airflow's settings): a worker node's drain waits for it.
    worker_grace_seconds: int
    # githubRepository is set: its deploy role is a principal that may run `pulumi up`.
    deploys_from_github: bool
    # parent=the Cluster component, provider=the AWS provider: every AWS resource of the cluster has them.
    aws: pulumi.ResourceOptions
    invoke: pulumi.InvokeOptions
    # aws, aws-cn or aws-us-gov: managed policy ARNs are built in it.
    partition: str
    # Who runs `pulumi up` (its ARN, an assumed-role session's) and in which account: looked up once.
    caller_arn: str
    account_id: str
    # The Cluster component, parent of the Kubernetes objects it creates.
    component: pulumi.ComponentResource

