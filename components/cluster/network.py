"""The cluster's network: a VPC over N zones, subnets whose CIDRs depend on their zone's letter only."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components import workloads as w
from components.cluster.context import AwsContext
from components.zones import zone_index

# Karpenter finds the subnets (and the security group) of its nodes by this tag.
DISCOVERY_TAG = "karpenter.sh/discovery"


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
    # secretsBackend aws-secrets-manager: the interface endpoint Airflow reads its connections through, and
    # its fixed addresses (one per private subnet), which the NetworkPolicies admit.
    secrets_manager_endpoint: Optional[aws.ec2.VpcEndpoint] = None
    secrets_manager_cidrs: tuple[str, ...] = ()


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


# What the nodes fetch from AWS-owned buckets of the region, through the gateway endpoint (read-only): image layers
# from ECR (Amazon ECR's "minimum Amazon S3 bucket permissions" for its endpoints), Amazon Linux 2023's package
# repositories (dnf), SSM Agent's own buckets (the nodes carry AmazonSSMManagedInstanceCore; Systems Manager's "SSM
# Agent communications with AWS managed S3 buckets"), and the layers registry.k8s.io redirects a pull from the
# region to (kube-state-metrics, git-sync): its bucket per region is registry.k8s.io's
# cmd/archeio/internal/app/buckets.go, where eu-west-2 alone has another name.
NODE_BUCKETS = ("prod-{region}-starport-layer-bucket", "al2023-repos-{region}-de612dc2", "amazon-ssm-{region}",
                "amazon-ssm-packages-{region}", "{region}-birdwatcher-prod", "aws-ssm-distributor-file-{region}",
                "aws-ssm-document-attachments-{region}", "patch-baseline-snapshot-{region}")
REGISTRY_K8S_IO_BUCKETS = {"eu-west-2": "767373bbdcb8270361b96548387bf2a9ad0d48758c35-eu-west-2"}


def node_buckets(region: str) -> list[str]:
    registry = REGISTRY_K8S_IO_BUCKETS.get(region, f"prod-registry-k8s-io-{region}")
    return [*(bucket.format(region=region) for bucket in NODE_BUCKETS), registry]


def s3_endpoint_policy(partition: str, region: str, account_id: str, name_prefix: str,
                       extra_buckets: list[str]) -> dict:
    """The S3 gateway endpoint's policy. Every S3 request from the VPC to the region goes through the endpoint,
    so this is the list of buckets anything in it may reach: the stack's own (Storage names them
    `<project>-<stack>-<purpose>-<random>`, and only this account's such buckets count), the nodes' (AWS-owned,
    read-only) and the ones the settings add for tasks."""
    def arns(bucket: str) -> list[str]:
        return [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"]
    statements = [
        {"Sid": "StackBuckets", "Effect": "Allow", "Principal": "*", "Action": "s3:*",
         "Resource": [arn for purpose in w.BUCKET_PURPOSES for arn in arns(f"{name_prefix}-{purpose}-*")],
         "Condition": {"StringEquals": {"aws:ResourceAccount": account_id}}},
        {"Sid": "NodeImagesAndPackages", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
         "Resource": [f"arn:{partition}:s3:::{bucket}/*" for bucket in node_buckets(region)]},
    ]
    if extra_buckets:
        statements.append({"Sid": "TaskBuckets", "Effect": "Allow", "Principal": "*", "Action": "s3:*",
                           "Resource": [arn for bucket in extra_buckets for arn in arns(bucket)]})
    return {"Version": "2012-10-17", "Statement": statements}


def build_network(ctx: AwsContext) -> Network:
    """The VPC over the zones: public and private subnets per zone, NAT, routes, the S3 gateway endpoint."""
    settings, name, cluster_name = ctx.settings, ctx.name, ctx.cluster_name
    if settings.availability_zones:
        # Pinned: whatever their state today (a zone event must not move subnets or node groups), but they
        # must be zones of the region.
        known = aws.get_availability_zones(all_availability_zones=True, opts=ctx.invoke).names
        unknown = sorted(set(settings.availability_zones) - set(known))
        if unknown:
            raise ValueError(f"airflow:availabilityZones: {unknown} are not zones of {settings.region} "
                             f"({', '.join(sorted(known))})")
        zones: list[str] = list(settings.availability_zones)
    else:
        zones = list(aws.get_availability_zones(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
            opts=ctx.invoke,
        ).names)
        if len(zones) < settings.availability_zone_count:
            raise ValueError(
                f"airflow:availabilityZoneCount: {settings.region} offers {len(zones)} zones, "
                f"{settings.availability_zone_count} were asked for")
        zones = sorted(zones)[: settings.availability_zone_count]
    private_cidrs, public_cidrs = subnet_plan(settings.vpc_cidr, zones)
    cluster_tag = {f"kubernetes.io/cluster/{cluster_name}": "shared"}

    # A kept Aurora/RDS or ElastiCache keeps its network interfaces in the private subnets: AWS will not delete
    # those subnets, nor the VPC, while it exists, so a `destroy` after `teardown` leaves them with it (the rest
    # goes), without the tags by which a cluster of the same name (its Karpenter, its load balancers) would pick
    # them up again.
    kept_with_stores = pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
        retain_on_delete=settings.keeps_managed_stores))
    cluster_tags = {} if settings.keeps_managed_stores else {
        "kubernetes.io/role/internal-elb": "1", f"kubernetes.io/cluster/{cluster_name}": "shared",
        **({DISCOVERY_TAG: cluster_name} if ctx.nodes.uses_karpenter else {})}
    vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=str(settings.vpc_cidr), enable_dns_hostnames=True,
                      enable_dns_support=True, tags={"Name": cluster_name}, opts=kept_with_stores)
    gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": cluster_name},
                                      opts=ctx.aws)
    public_routes = aws.ec2.RouteTable(
        f"{name}-public", vpc_id=vpc.id,
        routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
        tags={"Name": f"{cluster_name}-public"}, opts=ctx.aws)

    public_subnets, private_subnets, private_route_tables, nat_gateways = [], [], [], []
    for index, zone in enumerate(zones):
        public = aws.ec2.Subnet(
            f"{name}-public-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=public_cidrs[index],
            tags={"Name": f"{cluster_name}-public-{zone}", "kubernetes.io/role/elb": "1", **cluster_tag},
            opts=ctx.aws)
        aws.ec2.RouteTableAssociation(f"{name}-public-{zone}", subnet_id=public.id,
                                      route_table_id=public_routes.id, opts=ctx.aws)
        public_subnets.append(public)
        if settings.nat_gateways == "perAz" or index == 0:
            eip = aws.ec2.Eip(f"{name}-nat-{zone}", domain="vpc", tags={"Name": f"{cluster_name}-nat-{zone}"},
                              opts=ctx.aws)
            nat_gateways.append(aws.ec2.NatGateway(
                f"{name}-nat-{zone}", subnet_id=public.id, allocation_id=eip.id,
                tags={"Name": f"{cluster_name}-{zone}"},
                opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=[gateway]))))
        private = aws.ec2.Subnet(
            f"{name}-private-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=private_cidrs[index],
            tags={"Name": f"{cluster_name}-private-{zone}", **cluster_tags}, opts=kept_with_stores)
        routes = aws.ec2.RouteTable(
            f"{name}-private-{zone}", vpc_id=vpc.id,
            # With one NAT gateway every zone egresses through it; with one per zone, through its own.
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat_gateways[-1].id}],
            tags={"Name": f"{cluster_name}-private-{zone}"}, opts=ctx.aws)
        aws.ec2.RouteTableAssociation(f"{name}-private-{zone}", subnet_id=private.id,
                                      route_table_id=routes.id, opts=ctx.aws)
        private_subnets.append(private)
        private_route_tables.append(routes)

    # S3 traffic (logs, backups, images layers) stays off the NAT gateways. The gateway endpoint service
    # is looked up (the provider names it for the region and checks that it exists) rather than spelled out.
    s3_service = aws.ec2.get_vpc_endpoint_service(service="s3", service_type="Gateway",
                                                  opts=ctx.invoke).service_name
    aws.ec2.VpcEndpoint(
        f"{name}-s3", vpc_id=vpc.id, service_name=s3_service,
        vpc_endpoint_type="Gateway", route_table_ids=[table.id for table in private_route_tables],
        policy=json.dumps(s3_endpoint_policy(ctx.partition, settings.region, ctx.account_id, ctx.name_prefix,
                                             settings.s3_endpoint_buckets)),
        tags={"Name": f"{cluster_name}-s3"}, opts=ctx.aws)
    s3_prefix_list = aws.ec2.get_prefix_list(name=s3_service, opts=ctx.invoke)
    secrets_manager_endpoint: Optional[aws.ec2.VpcEndpoint] = None
    secrets_manager_cidrs: tuple[str, ...] = ()
    if settings.secrets_backend == "aws-secrets-manager":
        addresses = secrets_manager_addresses(private_cidrs)
        secrets_manager_cidrs = tuple(f"{address}/32" for address in addresses)
        # Airflow's connections and variables stay inside the VPC: an interface endpoint in every private
        # subnet, with private DNS, so the SDK's usual host name resolves to it.
        endpoint_group = aws.ec2.SecurityGroup(
            f"{name}-secretsmanager", vpc_id=vpc.id, description="HTTPS to the Secrets Manager endpoint, from the VPC",
            ingress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": [str(settings.vpc_cidr)],
                      "description": "HTTPS from the VPC"}],
            egress=[], opts=ctx.aws)
        # Reserved first, so that no node or pod is given them later. On a running stack an address of the range
        # may already be in use: then the endpoint fails naming it (docs/managed-backends.md).
        reservations = [aws.ec2.SubnetCidrReservation(
            f"{name}-secretsmanager-{zone}", subnet_id=subnet.id, cidr_block=block, reservation_type="explicit",
            description="Secrets Manager endpoint", opts=ctx.aws)
            for zone, subnet, block in zip(zones, private_subnets, secrets_manager_reservations(private_cidrs),
                                           strict=True)]
        # Looked up as the S3 one: the provider names the service for the region and checks that it exists.
        secrets_manager_service = aws.ec2.get_vpc_endpoint_service(
            service="secretsmanager", service_type="Interface", opts=ctx.invoke).service_name
        secrets_manager_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-secretsmanager", vpc_id=vpc.id, service_name=secrets_manager_service,
            vpc_endpoint_type="Interface", private_dns_enabled=True,
            subnet_ids=[subnet.id for subnet in private_subnets], security_group_ids=[endpoint_group.id],
            # Fixed addresses, so the pods' egress admits the endpoint only (not the EKS API's interfaces or
            # any other HTTPS server in the private subnets).
            subnet_configurations=[{"subnet_id": subnet.id, "ipv4": address}
                                   for subnet, address in zip(private_subnets, addresses, strict=True)],
            opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(depends_on=reservations)),
            tags={"Name": f"{cluster_name}-secretsmanager"})
    return Network(
        vpc_id=vpc.id,
        zones=list(zones),
        private_subnet_ids=[subnet.id for subnet in private_subnets],
        private_subnet_cidrs=private_cidrs,
        public_subnet_cidrs=public_cidrs,
        s3_cidrs=sorted(s3_prefix_list.cidr_blocks),
        secrets_manager_endpoint=secrets_manager_endpoint,
        secrets_manager_cidrs=secrets_manager_cidrs,
    )


def secrets_manager_reservations(private_cidrs: list[str]) -> list[str]:
    """In each private subnet, the /28 below its top one, reserved for addresses given explicitly: EC2 never
    hands them to a node or a pod."""
    return [str(list(ipaddress.ip_network(cidr).subnets(new_prefix=28))[-2]) for cidr in private_cidrs]


def secrets_manager_addresses(private_cidrs: list[str]) -> list[str]:
    """The Secrets Manager endpoint's address in each private subnet, inside that subnet's reservation."""
    return [str(ipaddress.ip_network(block).network_address + 4) for block in secrets_manager_reservations(private_cidrs)]
