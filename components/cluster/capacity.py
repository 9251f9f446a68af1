"""Node capacity: the managed node groups, and Karpenter, which adds worker nodes when Celery workers are
pending and removes them when they are empty or underused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import workloads as w
from components.cluster.context import AwsContext
from components.cluster.network import DISCOVERY_TAG, Network
from components.cluster.settings import NodeSettings
from components.helm import chart_release
from components.iam import POD_IDENTITY_TRUST_POLICY, managed_policy_arn, service_trust_policy
from components.pods import resources

# renovate: datasource=docker depName=public.ecr.aws/karpenter/karpenter
KARPENTER_VERSION = "1.14.1"
KARPENTER_NAMESPACE = "kube-system"   # where its API priority FlowSchemas apply (Karpenter's docs)
KARPENTER_SERVICE_ACCOUNT = "karpenter"
# The controller's policies as Karpenter publishes them for this version (its getting-started
# cloudformation.yaml), placeholders kept; the zonal-shift policy is left out (zonal shift is off).
KARPENTER_POLICY_FILE = Path(__file__).parent / "policies" / f"karpenter-controller-v{KARPENTER_VERSION}.json"
# What Karpenter's interruption queue hears, as its cloudformation.yaml routes it (rule name -> event pattern).
INTERRUPTION_EVENTS = {
    "scheduled-change": ("aws.health", "AWS Health Event"),
    "spot-interruption": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "instance-state-change": ("aws.ec2", "EC2 Instance State-change Notification"),
    "capacity-reservation-interruption": ("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"),
}
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryPullOnly",
                 "AmazonSSMManagedInstanceCore")
WORKER_NODE_POOL = "airflow-workers"
# A worker node's drain (expiry, drift, interruption) lasts as long as a worker may take to stop: Karpenter
# deletes do-not-disrupt pods at (node grace - pod grace) into the drain, so with the two equal a worker gets
# SIGTERM, and its whole grace period, the moment the drain starts.
NODE_DRAIN_MARGIN_SECONDS = 0


@dataclass
class KarpenterAws:
    """What the controller needs from AWS: its role (through Pod Identity), the nodes' role, the queue."""
    node_role: aws.iam.Role
    queue: aws.sqs.Queue
    association: aws.eks.PodIdentityAssociation
    ready: list[pulumi.Resource]


def karpenter_controller_policies(partition: str, region: str, account_id: str, cluster_name: str,
                                  node_role_arn: str, queue_arn: str) -> dict[str, dict]:
    """The published policies with their placeholders filled: each scoped to this cluster, region and
    account, to its node role and its interruption queue."""
    text = KARPENTER_POLICY_FILE.read_text()
    for placeholder, value in {"${AWS::Partition}": partition, "${AWS::Region}": region,
                               "${AWS::AccountId}": account_id, "${ClusterName}": cluster_name,
                               "${KarpenterNodeRole.Arn}": node_role_arn,
                               "${KarpenterInterruptionQueue.Arn}": queue_arn}.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def build_node_groups(ctx: AwsContext, eks_cluster: aws.eks.Cluster, network: Network,
                      early_addons: list[aws.eks.Addon]) -> list[aws.eks.NodeGroup]:
    """The managed node groups: system (on demand, a fixed size) and workers (their size left to an autoscaler),
    on one launch template (IMDSv2, encrypted gp3)."""
    settings, name = ctx.nodes, ctx.name
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
    if not settings.has_worker_node_group:
        return [system]
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


def build_karpenter_aws(ctx: AwsContext, eks_cluster: aws.eks.Cluster,
                        pod_identity_agent: aws.eks.Addon) -> KarpenterAws:
    """Karpenter's AWS side, as its cloudformation.yaml for this version builds it: the nodes' role (with an
    EC2_LINUX access entry), the interruption queue fed by EventBridge, the controller's role and policies
    through EKS Pod Identity, and the discovery tag on the cluster security group its nodes join."""
    name, cluster_name = ctx.name, ctx.cluster_name
    node_role = aws.iam.Role(f"{name}-karpenter-node", assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
                             opts=ctx.aws)
    node_policies = [aws.iam.RolePolicyAttachment(f"{name}-karpenter-node-{policy}", role=node_role.name,
                                                  policy_arn=managed_policy_arn(ctx.partition, policy), opts=ctx.aws)
                     for policy in NODE_POLICIES]
    # Nodes join with this role: EKS maps it to system:nodes (an EC2_LINUX entry takes no access policy).
    node_access = aws.eks.AccessEntry(f"{name}-karpenter-node", cluster_name=eks_cluster.name,
                                      principal_arn=node_role.arn, type="EC2_LINUX", opts=ctx.aws)

    queue = aws.sqs.Queue(f"{name}-karpenter", name=f"{cluster_name}-karpenter", message_retention_seconds=300,
                          sqs_managed_sse_enabled=True, opts=ctx.aws)
    rules = []
    for rule_name, (source, detail_type) in INTERRUPTION_EVENTS.items():
        rule = aws.cloudwatch.EventRule(
            f"{name}-karpenter-{rule_name}", description=f"{detail_type} for Karpenter ({cluster_name})",
            event_pattern=json.dumps({"source": [source], "detail-type": [detail_type]}), opts=ctx.aws)
        aws.cloudwatch.EventTarget(f"{name}-karpenter-{rule_name}", rule=rule.name, arn=queue.arn, opts=ctx.aws)
        rules.append(rule)
    # Only these rules may send to the queue, over TLS only.
    queue_policy = aws.sqs.QueuePolicy(
        f"{name}-karpenter", queue_url=queue.id,
        policy=pulumi.Output.all(queue.arn, *[rule.arn for rule in rules]).apply(lambda arns: json.dumps({
            "Version": "2012-10-17", "Id": "EC2InterruptionPolicy",
            "Statement": [
                {"Sid": "EventBridgeRules", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
                 "Action": "sqs:SendMessage", "Resource": arns[0],
                 "Condition": {"ArnEquals": {"aws:SourceArn": sorted(arns[1:])}}},
                {"Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": arns[0],
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            ]})),
        opts=ctx.aws)

    role = aws.iam.Role(f"{name}-karpenter", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=ctx.aws)
    documents = pulumi.Output.all(node_role.arn, queue.arn).apply(
        lambda arns: karpenter_controller_policies(ctx.partition, ctx.settings.region, ctx.account_id, cluster_name,
                                                   node_role_arn=arns[0], queue_arn=arns[1]))
    attachments = []
    for policy_name in json.loads(KARPENTER_POLICY_FILE.read_text()):
        # Managed policies, as Karpenter publishes them: together they exceed an inline policy's size limit.
        policy = aws.iam.Policy(
            f"{name}-karpenter-{policy_name}", description=f"Karpenter {KARPENTER_VERSION} {policy_name} ({cluster_name})",
            policy=documents.apply(lambda docs, key=policy_name: json.dumps(docs[key])),  # type: ignore[misc]
            opts=ctx.aws)
        attachments.append(aws.iam.RolePolicyAttachment(f"{name}-karpenter-{policy_name}", role=role.name,
                                                        policy_arn=policy.arn, opts=ctx.aws))
    association = aws.eks.PodIdentityAssociation(
        f"{name}-karpenter", cluster_name=eks_cluster.name, namespace=KARPENTER_NAMESPACE,
        service_account=KARPENTER_SERVICE_ACCOUNT, role_arn=role.arn,
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=[pod_identity_agent])))
    # The nodes Karpenter launches join the cluster security group, which EKS creates: tagged here so the
    # EC2NodeClass finds it the way it finds the subnets.
    security_group_tag = aws.ec2.Tag(f"{name}-karpenter-discovery", resource_id=eks_cluster.vpc_config.cluster_security_group_id,
                                     key=DISCOVERY_TAG, value=cluster_name, opts=ctx.aws)
    return KarpenterAws(node_role=node_role, queue=queue, association=association,
                        ready=[*node_policies, node_access, queue_policy, *attachments, association, security_group_tag])


def karpenter_values(settings: NodeSettings, cluster_name: pulumi.Input[str], queue_name: pulumi.Input[str]) -> dict:
    """The chart's values: two controllers on the system nodes (never on nodes they manage: the chart's own
    affinity), the interruption queue, the region given (IMDS is one hop away from pods)."""
    return {
        "settings": {"clusterName": cluster_name, "interruptionQueue": queue_name},
        "replicas": 2,
        "podDisruptionBudget": {"name": "karpenter", "maxUnavailable": 1},
        "nodeSelector": {"kubernetes.io/os": "linux", **w.SYSTEM_NODES},
        "controller": {
            "resources": resources("250m", "512Mi", memory_limit="1Gi", cpu_limit="1"),
            "env": [{"name": "AWS_REGION", "value": settings.region}],
        },
        "logLevel": "info",
    }


def node_class_spec(settings: NodeSettings, cluster_name: str, node_role_name: pulumi.Input[str], tags: dict[str, str]) -> dict:
    return {
        "role": node_role_name,
        "amiSelectorTerms": [{"alias": settings.karpenter_ami_alias}],
        "subnetSelectorTerms": [{"tags": {DISCOVERY_TAG: cluster_name}}],
        "securityGroupSelectorTerms": [{"tags": {DISCOVERY_TAG: cluster_name}}],
        # IMDSv2 only, one hop, as on the managed node groups: pods use Pod Identity, not the node's role.
        "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled", "httpPutResponseHopLimit": 1,
                            "httpTokens": "required"},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "rootVolume": True, "ebs": {
            "volumeSize": f"{settings.node_disk_size_gib}Gi", "volumeType": "gp3", "encrypted": True,
            "deleteOnTermination": True}}],
        "tags": tags,
    }


def node_pool_spec(settings: NodeSettings, worker_grace_seconds: int) -> dict:
    requirements = [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(settings.karpenter_capacity_types)},
        {"key": "karpenter.k8s.aws/instance-family", "operator": "In",
         "values": list(settings.karpenter_instance_families)},
        {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": list(settings.karpenter_instance_sizes)},
        {"key": "kubernetes.io/arch", "operator": "In", "values": list(settings.karpenter_architectures)},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
    ]
    budget = settings.karpenter_disruption_budget
    return {
        "template": {
            "metadata": {"labels": {**settings.worker_node_labels, **w.WORKER_NODES}},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": WORKER_NODE_POOL},
                "requirements": requirements,
                # The user's worker taints too: the workers tolerate them wherever they run.
                "taints": [w.WORKER_TAINT, *(taint.as_kubernetes() for taint in settings.worker_node_taints)],
                "expireAfter": f"{settings.karpenter_expire_after_hours}h",
                # A node being replaced (expiry, drift, interruption) gives its workers their own grace period.
                "terminationGracePeriod": f"{worker_grace_seconds + NODE_DRAIN_MARGIN_SECONDS}s",
            },
        },
        "limits": {"cpu": str(settings.karpenter_cpu_limit), "memory": f"{settings.karpenter_memory_limit_gib}Gi"},
        "disruption": {
            "consolidationPolicy": "WhenEmptyOrUnderutilized",
            "consolidateAfter": f"{settings.karpenter_consolidate_after_minutes}m",
            "budgets": [{"nodes": budget}],
        },
    }


def build_karpenter(ctx: AwsContext, eks_cluster: aws.eks.Cluster, karpenter_aws: KarpenterAws,
                    provider: k8s.Provider, tags: dict[str, str]) -> list[pulumi.Resource]:
    """The controller (its chart installs its CRDs on first install), then the worker EC2NodeClass and
    NodePool. Returns what Celery workers need before they can be scheduled."""
    settings, name = ctx.nodes, ctx.name
    release = chart_release(
        f"{name}-karpenter", chart="karpenter", version=KARPENTER_VERSION, repo="oci://public.ecr.aws/karpenter",
        namespace=KARPENTER_NAMESPACE,
        values=karpenter_values(settings, eks_cluster.name, karpenter_aws.queue.name),
        # Its credentials, its queue and its nodes' role exist before its first pod starts.
        opts=pulumi.ResourceOptions(parent=ctx.component, provider=provider, depends_on=karpenter_aws.ready))
    in_cluster = pulumi.ResourceOptions(parent=ctx.component, provider=provider, depends_on=[release])
    node_class = k8s.apiextensions.CustomResource(
        f"{name}-karpenter-node-class", api_version="karpenter.k8s.aws/v1", kind="EC2NodeClass",
        metadata={"name": WORKER_NODE_POOL},
        spec=node_class_spec(settings, ctx.cluster_name, karpenter_aws.node_role.name, tags), opts=in_cluster)
    node_pool = k8s.apiextensions.CustomResource(
        f"{name}-karpenter-node-pool", api_version="karpenter.sh/v1", kind="NodePool",
        metadata={"name": WORKER_NODE_POOL}, spec=node_pool_spec(settings, ctx.worker_grace_seconds),
        opts=pulumi.ResourceOptions(parent=ctx.component, provider=provider, depends_on=[release, node_class]))
    return [release, node_class, node_pool]
