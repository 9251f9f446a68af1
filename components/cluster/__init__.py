"""Cluster: the Kubernetes cluster everything else runs on.

target=aws, one module a part: `network` (a VPC over N zones), `control_plane` (EKS with KMS envelope encryption
of Secrets, API-mode access entries, control-plane logs), `capacity` (managed node groups), `addons` (the EKS
add-ons, the default StorageClass, the AWS Load Balancer Controller). This module composes them.
target=local: no AWS resource at all; the Kubernetes provider comes from a kubeconfig context.
Either way the component exposes one `kubernetes.Provider` that every later component uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import workloads as w
from components.cluster.addons import (
    ADDONS_AFTER_NODES,
    ADDONS_BEFORE_NODES,
    ADDONS_WITH_POD_IDENTITY,
    DEFAULT_STORAGE_CLASS,
    build_default_storage_class,
    build_load_balancer_controller,
    eks_addon,
    load_balancer_controller_policy,
    load_balancer_controller_values,
)
from components.cluster.capacity import build_karpenter, build_karpenter_aws, build_node_groups
from components.cluster.context import AwsContext
from components.cluster.control_plane import (
    CONTROL_PLANE_LOG_TYPES,
    build_admin_access,
    build_control_plane,
    check_deployer_access,
    kubeconfig,
)
from components.cluster.network import Network, build_network, subnet_plan
from components.cluster.settings import ClusterSettings, NodeSettings
from components.handles import ClusterHandle, WorkerNodes
from components.platform import aws_default_tags
from components.zones import zone_index

__all__ = ["ADDONS_AFTER_NODES", "ADDONS_BEFORE_NODES", "CONTROL_PLANE_LOG_TYPES", "Cluster", "ClusterArgs", "Network",
           "load_balancer_controller_policy", "load_balancer_controller_values", "subnet_plan", "zone_index"]


@dataclass
class ClusterArgs:
    settings: ClusterSettings
    nodes: NodeSettings
    # `<project>-<stack>`, the start of AWS names (platform.aws_name_prefix).
    name_prefix: str
    # A stopping worker's grace period (AirflowSettings.worker_grace_seconds): a worker node's drain waits for it.
    worker_grace_seconds: int
    # githubRepository is set: its deploy role may run `pulumi up` (the deployer check admits it).
    deploys_from_github: bool = False
    # None in local mode: the component then creates no AWS resource.
    aws_provider: Optional[aws.Provider] = None


class Cluster(pulumi.ComponentResource):
    """The cluster and its Kubernetes providers; `handle` is what the other components build on."""

    handle: ClusterHandle
    # The kubeconfig of an EKS cluster (a stack output), None locally.
    kubeconfig: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: ClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Cluster", name, None, opts)
        self._settings = args.settings
        self._nodes = args.nodes
        self._node_groups: list[aws.eks.NodeGroup] = []
        self._worker_capacity: list[pulumi.Resource] = []
        self._load_balancer_controller: Optional[k8s.helm.v3.Release] = None
        self._partition: Optional[str] = None
        self._account_id: Optional[str] = None
        # The VPC, its subnets and endpoints (None locally).
        self._network: Optional[Network] = None
        self._cluster_security_group_id: Optional[pulumi.Output[str]] = None
        self._default_storage_class_name: Optional[str] = None
        self._provider: k8s.Provider
        self._operators_provider: k8s.Provider
        self._cluster_name: pulumi.Output[str]
        if args.settings.is_aws:
            if args.aws_provider is None:
                raise ValueError("Cluster: target=aws needs an aws_provider")
            self._build_eks(name, args, args.aws_provider)
        else:
            self._build_local(name)
        self.handle = self._handle(args)
        self.register_outputs({
            "cluster_name": self._cluster_name,
            "kubeconfig": self.kubeconfig,
            "vpc_id": self._network.vpc_id if self._network else None,
        })

    # --- local -------------------------------------------------------------------------------------
    def _build_local(self, name: str) -> None:
        settings = self._settings
        self._provider = k8s.Provider(
            f"{name}-k8s",
            context=settings.kube_context,
            kubeconfig=settings.kubeconfig_path or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._operators_provider = self._provider
        self._cluster_name = pulumi.Output.from_input(settings.kube_context)
        self.kubeconfig = None
        # The laptop cluster's own default class (kind's `standard`, k3d's `local-path`): no name.

    # --- AWS ---------------------------------------------------------------------------------------
    def _build_eks(self, name: str, args: ClusterArgs, aws_provider: aws.Provider) -> None:
        settings, name_prefix = self._settings, args.name_prefix
        cluster_name = settings.eks_cluster_name(name_prefix)
        invoke = pulumi.InvokeOptions(provider=aws_provider)
        partition = aws.get_partition(opts=invoke).partition
        caller = aws.get_caller_identity(opts=invoke)
        self._partition, self._account_id = partition, caller.account_id
        ctx = AwsContext(name=name, cluster_name=cluster_name, name_prefix=name_prefix, settings=settings,
                         nodes=args.nodes, worker_grace_seconds=args.worker_grace_seconds,
                         deploys_from_github=args.deploys_from_github,
                         aws=pulumi.ResourceOptions(parent=self, provider=aws_provider), invoke=invoke,
                         partition=partition, caller_arn=caller.arn, account_id=caller.account_id,
                         component=self)
        # Before any resource: an `up` by a principal the stack gives no access entry stops here.
        check_deployer_access(ctx)

        network = build_network(ctx)
        eks_cluster = build_control_plane(ctx, network)
        early_addons = [eks_addon(ctx, eks_cluster, addon_name) for addon_name in ADDONS_BEFORE_NODES]
        self._node_groups = build_node_groups(ctx, eks_cluster, network, early_addons)
        pod_identity_agent = early_addons[ADDONS_BEFORE_NODES.index("eks-pod-identity-agent")]
        late_addons = []
        for addon_name in ADDONS_AFTER_NODES:
            # The CSI controllers get their AWS credentials from the Pod Identity agent.
            uses_pod_identity = addon_name in ADDONS_WITH_POD_IDENTITY
            late_addons.append(eks_addon(
                ctx, eks_cluster, addon_name,
                after=[*self._node_groups, *([pod_identity_agent] if uses_pod_identity else [])]))
        admin_access = build_admin_access(ctx, eks_cluster)

        self._cluster_name = eks_cluster.name
        self._network = network
        self._cluster_security_group_id = eks_cluster.vpc_config.cluster_security_group_id
        self.kubeconfig = pulumi.Output.secret(kubeconfig(eks_cluster, settings.region))
        # Two providers, so that Pulumi orders the Kubernetes objects against the cluster's own services both ways:
        # a resource is created after, and deleted before, whatever its provider depends on. The first serves
        # what the cluster itself needs (the default StorageClass, the load balancer controller); the second,
        # every other object, and waits for those too. On `destroy` every release, Ingress and claim is then gone
        # while CoreDNS, the CSI drivers and the controller still run to clear finalizers and reclaim volumes.
        cluster_services = [*self._node_groups, *admin_access, *late_addons]
        bootstrap = k8s.Provider(
            f"{name}-k8s-bootstrap", kubeconfig=self.kubeconfig, cluster_identifier=eks_cluster.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=cluster_services))
        default_storage_class = build_default_storage_class(ctx, bootstrap)
        self._default_storage_class_name = DEFAULT_STORAGE_CLASS
        self._load_balancer_controller = build_load_balancer_controller(
            ctx, eks_cluster, network, pod_identity_agent, bootstrap)
        # Operators that need no volume, no load balancer and no controller of them (cert-manager, KEDA) install
        # as soon as nodes and DNS are up, while the CSI drivers and the load balancer controller still install;
        # they are deleted before the nodes and DNS, all they rely on.
        coredns = late_addons[ADDONS_AFTER_NODES.index("coredns")]
        self._operators_provider = k8s.Provider(
            f"{name}-k8s-operators", kubeconfig=self.kubeconfig, cluster_identifier=eks_cluster.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*self._node_groups, *admin_access, coredns]))
        self._provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # Without it, a change of endpoint or CA would make Pulumi replace every Kubernetes object.
            cluster_identifier=eks_cluster.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[
                *cluster_services, default_storage_class, self._load_balancer_controller]),
        )
        if self._nodes.uses_karpenter:
            karpenter_aws = build_karpenter_aws(ctx, eks_cluster, pod_identity_agent)
            self._worker_capacity = build_karpenter(
                ctx, eks_cluster, karpenter_aws, self._operators_provider,
                # The stack's tags; Karpenter, not Pulumi, manages those instances and volumes.
                tags={**aws_default_tags(pulumi.get_project(), pulumi.get_stack()), "managed-by": "karpenter"})

    def _handle(self, args: ClusterArgs) -> ClusterHandle:
        settings, nodes = args.settings, args.nodes
        worker_nodes = WorkerNodes()
        if settings.is_aws:
            # The worker nodes' own taints, and Karpenter's (its NodePool taints every node it makes).
            tolerations = [{**taint.as_kubernetes(), "operator": "Equal"} for taint in nodes.worker_node_taints]
            if nodes.uses_karpenter:
                tolerations.append({**w.WORKER_TAINT, "operator": "Equal"})
            worker_nodes = WorkerNodes(node_selector=dict(w.WORKER_NODES), tolerations=tuple(tolerations),
                                       karpenter=nodes.uses_karpenter, capacity=tuple(self._worker_capacity))
        handle = ClusterHandle(
            name_prefix=args.name_prefix, region=settings.region, k8s_provider=self._provider,
            operators_provider=self._operators_provider, cluster_name=self._cluster_name,
            kubernetes_service_ip=settings.kubernetes_service_ip,
            # A managed node group balances its subnets: the system nodes span as many zones as they can.
            system_zones=min(nodes.system_nodes, settings.zone_count), system_nodes=nodes.system_nodes,
            workers=worker_nodes, storage_class_name=self._default_storage_class_name)
        network = self._network
        if network is None:
            return handle
        return dataclasses.replace(
            handle, aws_provider=args.aws_provider, partition=self._partition, account_id=self._account_id,
            vpc_id=network.vpc_id, vpc_cidr=str(settings.vpc_cidr), zones=tuple(network.zones),
            private_subnet_ids=tuple(network.private_subnet_ids),
            private_subnet_cidrs=tuple(network.private_subnet_cidrs),
            public_subnet_cidrs=tuple(network.public_subnet_cidrs), s3_cidrs=tuple(network.s3_cidrs),
            secrets_manager_endpoint=network.secrets_manager_endpoint,
            secrets_manager_cidrs=network.secrets_manager_cidrs,
            cluster_security_group_id=self._cluster_security_group_id,
            load_balancer_controller=self._load_balancer_controller)
