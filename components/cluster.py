"""Cluster: the Kubernetes cluster everything else runs on.

target=aws: a VPC over N zones, EKS with KMS envelope encryption of Secrets, API-mode access entries,
control-plane logs, managed node groups, the EKS add-ons, the AWS Load Balancer Controller.
target=local: no AWS resource at all; the Kubernetes provider comes from a kubeconfig context.
Either way the component exposes one `kubernetes.Provider` that every later component uses.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import workloads as w
from components.helm import NONROOT_UID, chart_release, resources
from components.iam import POD_IDENTITY_TRUST_POLICY, managed_policy_arn, service_trust_policy
from components.settings import IAM_PRINCIPAL_ARN, Settings

LOAD_BALANCER_CONTROLLER_POLICY_DIR = Path(__file__).parent / "policies"
CONTROL_PLANE_LOG_TYPES = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
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


@dataclass
class ClusterArgs:
    settings: Settings
    # `<project>-<stack>`, the start of AWS names (settings.aws_name_prefix).
    name_prefix: str
    # None in local mode: the component then creates no AWS resource.
    aws_provider: Optional[aws.Provider] = None


@dataclass
class Network:
    vpc_id: pulumi.Output[str]
    zones: list[str]
    # One per zone, in the order of `zones`.
    private_subnet_ids: list[pulumi.Output[str]]
    private_subnet_cidrs: list[str]
    public_subnet_cidrs: list[str]
    # The addresses S3 answers on in the region (its managed prefix list): the gateway endpoint routes them.
    s3_cidrs: list[str]


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


# Zone letters a..f index the subnet layout: a zone's subnets depend on its own letter only, never on how many
# zones there are or where the zone sits in the list, so adding, removing or reordering zones never moves the
# subnets of the others (EC2 rejects a replacement subnet that overlaps the one it replaces).
ZONE_LETTERS = "abcdef"


def zone_index(zone: str) -> int:
    """The layout slot of a zone: the position of its letter (eu-west-1a -> 0, eu-west-1c -> 2)."""
    letter = zone[-1]
    if letter not in ZONE_LETTERS:
        raise ValueError(f"zone {zone!r}: the subnet layout has slots for zone letters "
                         f"{ZONE_LETTERS[0]} to {ZONE_LETTERS[-1]}")
    return ZONE_LETTERS.index(letter)


def subnet_plan(vpc_cidr: ipaddress.IPv4Network, zones: list[str]) -> tuple[list[str], list[str]]:
    """Private and public subnet CIDRs, one of each per zone, in the order of `zones`.

    Zones a-c keep the layout stacks were created with: each takes a quarter of the VPC for its private subnet
    (a /18 of a /16: the VPC CNI gives every pod a VPC address), and the first three sixteenths of the last
    quarter hold their public subnets (/22s; load balancers and NAT gateways only). Zones d-f fit in the rest
    of the last quarter: their private subnets are its last three quarters (/20s of a /16), their public
    subnets /24s cut from its fourth sixteenth (a load balancer needs a /27: vpcCidr /19 or larger).
    """
    quarters = list(vpc_cidr.subnets(prefixlen_diff=2))
    sixteenths = list(quarters[3].subnets(prefixlen_diff=4))
    private_blocks = [*quarters[:3], *list(quarters[3].subnets(prefixlen_diff=2))[1:]]
    public_blocks = [*sixteenths[:3], *list(sixteenths[3].subnets(prefixlen_diff=2))[:3]]
    slots = [zone_index(zone) for zone in zones]
    return [str(private_blocks[slot]) for slot in slots], [str(public_blocks[slot]) for slot in slots]


class Cluster(pulumi.ComponentResource):
    """The cluster and its Kubernetes provider."""

    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    kubeconfig: Optional[pulumi.Output[str]]
    vpc_id: Optional[pulumi.Output[str]]
    # The zones and their private subnets, in the same order (empty locally).
    zones: list[str]
    private_subnet_ids: list[pulumi.Output[str]]
    # Nodes, pods, internal load balancers and the EKS endpoint's network interfaces live here.
    private_subnet_cidrs: list[str]
    # Where internet-facing load balancers get their addresses (the NetworkPolicies admit them).
    public_subnet_cidrs: list[str]
    # S3's addresses in the region, for NetworkPolicies that must not rely on `except` (empty locally).
    s3_cidrs: list[str]
    cluster_security_group_id: Optional[pulumi.Output[str]]
    default_storage_class_name: Optional[str]
    node_groups: list[aws.eks.NodeGroup]
    # The AWS partition (aws, aws-cn, aws-us-gov) managed policy ARNs are built in; None locally.
    partition: Optional[str]
    # The AWS Load Balancer Controller (target=aws): it turns Ingresses into ALBs.
    load_balancer_controller: Optional[k8s.helm.v3.Release]

    def __init__(self, name: str, args: ClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Cluster", name, None, opts)
        self._settings = args.settings
        self.node_groups = []
        self.load_balancer_controller = None
        self.partition = None
        self.zones, self.private_subnet_ids = [], []
        self.private_subnet_cidrs = []
        self.public_subnet_cidrs = []
        self.s3_cidrs = []
        if args.settings.is_aws:
            if args.aws_provider is None:
                raise ValueError("Cluster: target=aws needs an aws_provider")
            self._build_eks(name, args.settings.eks_cluster_name(args.name_prefix), args.aws_provider)
        else:
            self._build_local(name)
        self.register_outputs({
            "cluster_name": self.cluster_name,
            "kubeconfig": self.kubeconfig,
            "vpc_id": self.vpc_id,
        })

    # --- local -------------------------------------------------------------------------------------
    def _build_local(self, name: str) -> None:
        settings = self._settings
        self.provider = k8s.Provider(
            f"{name}-k8s",
            context=settings.kube_context,
            kubeconfig=settings.kubeconfig_path or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.cluster_name = pulumi.Output.from_input(settings.kube_context)
        self.kubeconfig = None
        self.vpc_id = None
        self.cluster_security_group_id = None
        # The laptop cluster's own default class (kind's `standard`, k3d's `local-path`).
        self.default_storage_class_name = None

    # --- AWS ---------------------------------------------------------------------------------------
    def _build_eks(self, name: str, cluster_name: str, aws_provider: aws.Provider) -> None:
        settings = self._settings
        self._aws = pulumi.ResourceOptions(parent=self, provider=aws_provider)
        self._invoke = pulumi.InvokeOptions(provider=aws_provider)
        self.partition = aws.get_partition(opts=self._invoke).partition
        # Before any resource: a principal that cannot get an access entry stops the program here.
        deployer_arn = self._deployer_arn()

        network = self._build_network(name, cluster_name)
        eks_cluster = self._build_control_plane(name, cluster_name, network)
        early_addons = [self._addon(name, eks_cluster, addon) for addon in ADDONS_BEFORE_NODES]
        self.node_groups = self._build_node_groups(name, eks_cluster, network, early_addons)
        pod_identity_agent = early_addons[ADDONS_BEFORE_NODES.index("eks-pod-identity-agent")]
        late_addons = []
        for addon in ADDONS_AFTER_NODES:
            # The CSI controllers get their AWS credentials from the Pod Identity agent.
            uses_pod_identity = addon in ADDONS_WITH_POD_IDENTITY
            late_addons.append(self._addon(
                name, eks_cluster, addon,
                after=[*self.node_groups, *([pod_identity_agent] if uses_pod_identity else [])]))
        admin_access = self._build_admin_access(name, eks_cluster, deployer_arn)

        self.cluster_name = eks_cluster.name
        self.vpc_id = network.vpc_id
        self.zones, self.private_subnet_ids = network.zones, network.private_subnet_ids
        self.private_subnet_cidrs = network.private_subnet_cidrs
        self.public_subnet_cidrs = network.public_subnet_cidrs
        self.s3_cidrs = network.s3_cidrs
        self.cluster_security_group_id = eks_cluster.vpc_config.cluster_security_group_id
        self.kubeconfig = pulumi.Output.secret(self._kubeconfig(eks_cluster, settings.region))
        # Two providers, so that Pulumi orders the Kubernetes objects against the cluster's own services both ways:
        # a resource is created after, and deleted before, whatever its provider depends on. The first serves
        # what the cluster itself needs (the default StorageClass, the load balancer controller); the second,
        # every other object, and waits for those too. On `destroy` every release, Ingress and claim is then gone
        # while CoreDNS, the CSI drivers and the controller still run to clear finalizers and reclaim volumes.
        cluster_services = [*self.node_groups, *admin_access, *late_addons]
        bootstrap = k8s.Provider(
            f"{name}-k8s-bootstrap", kubeconfig=self.kubeconfig, cluster_identifier=eks_cluster.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=cluster_services))
        self.default_storage_class_name = self._build_default_storage_class(name, bootstrap)
        self.load_balancer_controller = self._build_load_balancer_controller(
            name, eks_cluster, network, pod_identity_agent, bootstrap)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # Without it, a change of endpoint or CA would make Pulumi replace every Kubernetes object.
            cluster_identifier=eks_cluster.arn,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[
                *cluster_services, self._default_storage_class, self.load_balancer_controller]),
        )

    def _build_network(self, name: str, cluster_name: str) -> Network:
        settings = self._settings
        if settings.availability_zones:
            # Pinned: whatever their state today (a zone event must not move subnets or node groups), but they
            # must be zones of the region.
            known = aws.get_availability_zones(all_availability_zones=True, opts=self._invoke).names
            unknown = sorted(set(settings.availability_zones) - set(known))
            if unknown:
                raise ValueError(f"airflow:availabilityZones: {unknown} are not zones of {settings.region} "
                                 f"({', '.join(sorted(known))})")
            zones = list(settings.availability_zones)
        else:
            zones = aws.get_availability_zones(
                state="available",
                filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
                opts=self._invoke,
            ).names
            if len(zones) < settings.availability_zone_count:
                raise ValueError(
                    f"airflow:availabilityZoneCount: {settings.region} offers {len(zones)} zones, "
                    f"{settings.availability_zone_count} were asked for")
            zones = sorted(zones)[: settings.availability_zone_count]
        private_cidrs, public_cidrs = subnet_plan(settings.vpc_cidr, zones)
        cluster_tag = {f"kubernetes.io/cluster/{cluster_name}": "shared"}

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=str(settings.vpc_cidr), enable_dns_hostnames=True,
                          enable_dns_support=True, tags={"Name": cluster_name}, opts=self._aws)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": cluster_name},
                                          opts=self._aws)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public", vpc_id=vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            tags={"Name": f"{cluster_name}-public"}, opts=self._aws)

        public_subnets, private_subnets, private_route_tables, nat_gateways = [], [], [], []
        for index, zone in enumerate(zones):
            public = aws.ec2.Subnet(
                f"{name}-public-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=public_cidrs[index],
                tags={"Name": f"{cluster_name}-public-{zone}", "kubernetes.io/role/elb": "1", **cluster_tag},
                opts=self._aws)
            aws.ec2.RouteTableAssociation(f"{name}-public-{zone}", subnet_id=public.id,
                                          route_table_id=public_routes.id, opts=self._aws)
            public_subnets.append(public)
            if settings.nat_gateways == "perAz" or index == 0:
                eip = aws.ec2.Eip(f"{name}-nat-{zone}", domain="vpc", tags={"Name": f"{cluster_name}-nat-{zone}"},
                                  opts=self._aws)
                nat_gateways.append(aws.ec2.NatGateway(
                    f"{name}-nat-{zone}", subnet_id=public.id, allocation_id=eip.id,
                    tags={"Name": f"{cluster_name}-{zone}"},
                    opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(depends_on=[gateway]))))
            private = aws.ec2.Subnet(
                f"{name}-private-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=private_cidrs[index],
                tags={"Name": f"{cluster_name}-private-{zone}", "kubernetes.io/role/internal-elb": "1",
                      **cluster_tag},
                opts=self._aws)
            routes = aws.ec2.RouteTable(
                f"{name}-private-{zone}", vpc_id=vpc.id,
                # With one NAT gateway every zone egresses through it; with one per zone, through its own.
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat_gateways[-1].id}],
                tags={"Name": f"{cluster_name}-private-{zone}"}, opts=self._aws)
            aws.ec2.RouteTableAssociation(f"{name}-private-{zone}", subnet_id=private.id,
                                          route_table_id=routes.id, opts=self._aws)
            private_subnets.append(private)
            private_route_tables.append(routes)

        # S3 traffic (logs, backups, images layers) stays off the NAT gateways. The gateway endpoint service
        # is looked up (the provider names it for the region and checks that it exists) rather than spelled out.
        s3_service = aws.ec2.get_vpc_endpoint_service(service="s3", service_type="Gateway",
                                                      opts=self._invoke).service_name
        aws.ec2.VpcEndpoint(
            f"{name}-s3", vpc_id=vpc.id, service_name=s3_service,
            vpc_endpoint_type="Gateway", route_table_ids=[table.id for table in private_route_tables],
            tags={"Name": f"{cluster_name}-s3"}, opts=self._aws)
        s3_prefix_list = aws.ec2.get_prefix_list(name=s3_service, opts=self._invoke)
        return Network(
            vpc_id=vpc.id,
            zones=list(zones),
            private_subnet_ids=[subnet.id for subnet in private_subnets],
            private_subnet_cidrs=private_cidrs,
            public_subnet_cidrs=public_cidrs,
            s3_cidrs=sorted(s3_prefix_list.cidr_blocks),
        )

    def _build_control_plane(self, name: str, cluster_name: str, network: Network) -> aws.eks.Cluster:
        settings = self._settings
        protect = settings.protect_stateful_resources
        secrets_key = aws.kms.Key(
            f"{name}-secrets",
            description=f"Envelope encryption of Kubernetes Secrets in EKS cluster {cluster_name}",
            enable_key_rotation=True, deletion_window_in_days=30,
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                protect=protect, retain_on_delete=protect)))
        aws.kms.Alias(f"{name}-secrets", name=f"alias/{cluster_name}-eks-secrets", target_key_id=secrets_key.key_id,
                      opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(retain_on_delete=protect)))
        role = aws.iam.Role(f"{name}-control-plane", assume_role_policy=service_trust_policy("eks.amazonaws.com"),
                            opts=self._aws)
        policy = aws.iam.RolePolicyAttachment(
            f"{name}-control-plane", role=role.name,
            policy_arn=managed_policy_arn(self.partition, "AmazonEKSClusterPolicy"), opts=self._aws)
        # Created ahead of the cluster so the logs get a retention instead of EKS's never-expire default.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane", name=f"/aws/eks/{cluster_name}/cluster",
            retention_in_days=settings.control_plane_log_retention_days,
            # The control plane's audit trail is kept like the other data.
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                protect=protect, retain_on_delete=protect)))
        public_cidrs = [str(cidr) for cidr in settings.endpoint_public_access_cidrs]
        return aws.eks.Cluster(
            f"{name}-eks",
            name=cluster_name,
            version=settings.kubernetes_version,
            role_arn=role.arn,
            access_config={
                # Creation-time choices: access entries only (no aws-auth ConfigMap), and no entry EKS makes
                # on its own for the creator: every admin, the principal running `pulumi up` included, gets an
                # entry this program owns (an implicit one would collide with an explicit one: 409).
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": False,
            },
            # Explicit, so the NetworkPolicies can name the `kubernetes` Service address.
            kubernetes_network_config={"ip_family": "ipv4",
                                       "service_ipv4_cidr": str(settings.service_cidr)},
            # The add-ons are managed below as EKS add-ons, with our configuration, from the start.
            bootstrap_self_managed_addons=False,
            encryption_config={"provider": {"key_arn": secrets_key.arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=CONTROL_PLANE_LOG_TYPES,
            vpc_config={
                "subnet_ids": network.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": bool(public_cidrs),
                "public_access_cidrs": public_cidrs or None,
            },
            upgrade_policy={"support_type": "STANDARD"},
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                depends_on=[policy, log_group],
                # A creation-time choice that forces a new cluster: a cluster created with the creator's
                # implicit entry keeps it (README: AWS, clusters created before explicit access entries).
                # EKS takes new control-plane subnets only in the zones it was created in: a zone added
                # later gets subnets and nodes, the control plane stays where it is.
                ignore_changes=["accessConfig.bootstrapClusterCreatorAdminPermissions", "vpcConfig.subnetIds"])),
        )

    def _addon_version(self, addon: str, eks_cluster: aws.eks.Cluster) -> pulumi.Input[str]:
        pinned = self._settings.addon_versions.get(addon)
        if pinned:
            return pinned
        # AWS's default version for the pinned Kubernetes version: stable across runs, unlike "latest".
        return aws.eks.get_addon_version_output(
            addon_name=addon, kubernetes_version=eks_cluster.version, most_recent=False,
            opts=pulumi.InvokeOutputOptions(provider=self._invoke.provider)).version

    def _addon(self, name: str, eks_cluster: aws.eks.Cluster, addon: str,
               after: Optional[list[pulumi.Resource]] = None) -> aws.eks.Addon:
        configuration: Optional[str] = None
        pod_identities: list[dict] = []
        if addon == "vpc-cni":
            configuration = json.dumps({"enableNetworkPolicy": "true"})
        elif addon in ADDONS_WITH_POD_IDENTITY:
            pod_identities = [self._pod_identity_role_for_addon(name, *ADDONS_WITH_POD_IDENTITY[addon])]
        return aws.eks.Addon(
            f"{name}-{addon}",
            cluster_name=eks_cluster.name,
            addon_name=addon,
            addon_version=self._addon_version(addon, eks_cluster),
            configuration_values=configuration,
            pod_identity_associations=pod_identities or None,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(depends_on=after or [])),
        )

    def _pod_identity_role_for_addon(self, name: str, short: str, service_account: str, policy: str) -> dict:
        role = aws.iam.Role(f"{name}-{short}", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=self._aws)
        aws.iam.RolePolicyAttachment(f"{name}-{short}", role=role.name,
                                     policy_arn=managed_policy_arn(self.partition, policy), opts=self._aws)
        return {"role_arn": role.arn, "service_account": service_account}

    def _build_node_groups(self, name: str, eks_cluster: aws.eks.Cluster, network: Network,
                           early_addons: list[aws.eks.Addon]) -> list[aws.eks.NodeGroup]:
        settings = self._settings
        role = aws.iam.Role(f"{name}-node", assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
                            opts=self._aws)
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-node-{policy}", role=role.name,
                                         policy_arn=managed_policy_arn(self.partition, policy), opts=self._aws)
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
            opts=self._aws)
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
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(depends_on=depends)),
            **common)
        workers = aws.eks.NodeGroup(
            f"{name}-workers",
            capacity_type=settings.worker_capacity_type,
            instance_types=settings.worker_node_instance_types,
            scaling_config={"min_size": settings.worker_node_min, "desired_size": settings.worker_node_desired,
                            "max_size": settings.worker_node_max},
            labels={**settings.worker_node_labels, **w.WORKER_NODES},
            taints=[taint.model_dump() for taint in settings.worker_node_taints] or None,
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                depends_on=depends,
                # A node autoscaler owns the running size; Pulumi must not reset it on every `up`.
                ignore_changes=["scalingConfig.desiredSize"])),
            **common)
        return [system, workers]

    def _deployer_arn(self) -> str:
        """The IAM role or user running `pulumi up`: an assumed-role session stands for its role, as EKS
        keys access entries on the role ARN."""
        caller_arn = aws.get_caller_identity(opts=self._invoke).arn
        deployer_arn = aws.iam.get_session_context(arn=caller_arn, opts=self._invoke).issuer_arn
        if not IAM_PRINCIPAL_ARN.match(deployer_arn):
            raise ValueError(
                f"the principal running `pulumi up` ({deployer_arn}) cannot be given an EKS access entry (the "
                "root user and federated users cannot); run it as an IAM role or user")
        return deployer_arn

    def _build_admin_access(self, name: str, eks_cluster: aws.eks.Cluster,
                            deployer_arn: str) -> list[aws.eks.AccessPolicyAssociation]:
        """Cluster-admin access entries for adminPrincipalArns and for the principal running `pulumi up`
        (it installs the Helm releases right after), one entry per principal. Named after the principal, so
        the same principal moving between the list and "the one running up" keeps the same entry."""
        admins = self._settings.admin_principal_arns
        principals = list(dict.fromkeys([*admins, deployer_arn]))
        associations = []
        for principal_arn in principals:
            resource_name = f"{name}-admin-{principal_arn.split(':', 5)[5].replace('/', '-')}"
            # Entries of adminPrincipalArns were once named by their position in the list.
            aliases = [pulumi.Alias(name=f"{name}-admin-{admins.index(principal_arn)}")] \
                if principal_arn in admins else []
            opts = pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(aliases=aliases))
            entry = aws.eks.AccessEntry(resource_name, cluster_name=eks_cluster.name,
                                        principal_arn=principal_arn, type="STANDARD", opts=opts)
            associations.append(aws.eks.AccessPolicyAssociation(
                resource_name, cluster_name=eks_cluster.name, principal_arn=entry.principal_arn,
                policy_arn=f"arn:{self.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                access_scope={"type": "cluster"}, opts=opts))
        return associations

    @staticmethod
    def _kubeconfig(eks_cluster: aws.eks.Cluster, region: str) -> pulumi.Output[str]:
        return pulumi.Output.json_dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": eks_cluster.name, "cluster": {
                "server": eks_cluster.endpoint,
                "certificate-authority-data": eks_cluster.certificate_authority.data}}],
            "contexts": [{"name": eks_cluster.name, "context": {"cluster": eks_cluster.name, "user": eks_cluster.name}}],
            "current-context": eks_cluster.name,
            "users": [{"name": eks_cluster.name, "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "aws",
                "args": ["eks", "get-token", "--cluster-name", eks_cluster.name, "--region", region,
                         "--output", "json"],
                "interactiveMode": "Never",
            }}}],
        })

    def _build_default_storage_class(self, name: str, provider: k8s.Provider) -> str:
        protect = self._settings.protect_stateful_resources
        class_name = "gp3-encrypted"
        self._default_storage_class = k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata={"name": class_name,
                      "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            # Volumes outlive their claims unless the stack is declared throwaway.
            reclaim_policy="Retain" if protect else "Delete",
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        return class_name

    def _build_load_balancer_controller(self, name: str, eks_cluster: aws.eks.Cluster, network: Network,
                                        pod_identity_agent: aws.eks.Addon,
                                        provider: k8s.Provider) -> k8s.helm.v3.Release:
        settings = self._settings
        version = settings.aws_load_balancer_controller_chart_version
        role = aws.iam.Role(f"{name}-lb-controller", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=self._aws)
        policy = aws.iam.RolePolicy(
            f"{name}-lb-controller", role=role.id,
            policy=load_balancer_controller_policy(version, self.partition or "aws"), opts=self._aws)
        service_account = "aws-load-balancer-controller"
        association = aws.eks.PodIdentityAssociation(
            f"{name}-lb-controller", cluster_name=eks_cluster.name, namespace="kube-system",
            service_account=service_account, role_arn=role.arn,
            opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(depends_on=[pod_identity_agent])))
        return chart_release(
            f"{name}-lb-controller", chart="aws-load-balancer-controller", version=version,
            repo="https://aws.github.io/eks-charts", namespace="kube-system",
            values=load_balancer_controller_values(eks_cluster.name, settings.region, network.vpc_id, service_account),
            # Its credentials must exist before its first pod starts, or it crash-loops until they do.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[association, policy]),
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
        "podSecurityContext": {"fsGroup": 65534, "runAsNonRoot": True, "runAsUser": NONROOT_UID,
                               "runAsGroup": NONROOT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        # The controller's Service webhook (failurePolicy Fail, every Service create) would refuse the Services
        # of every release installed while the controller has no ready endpoint; no Service here is of type
        # LoadBalancer, so it has nothing to do.
        "enableServiceMutatorWebhook": False,
    }
