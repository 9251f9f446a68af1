"""The control plane: EKS itself, its KMS key and logs, who may administer it, and how to reach it."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.cluster.context import AwsContext
from components.cluster.network import Network
from components.iam import managed_policy_arn, service_trust_policy
from components.platform import github_role_name, principal_name

CONTROL_PLANE_LOG_TYPES = ["api", "audit", "authenticator", "controllerManager", "scheduler"]


def build_control_plane(ctx: AwsContext, network: Network) -> aws.eks.Cluster:
    """EKS with KMS envelope encryption of Secrets, access entries only, control-plane logs with a retention."""
    settings, name, cluster_name = ctx.settings, ctx.name, ctx.cluster_name
    protect = settings.protect_stateful_resources
    secrets_key = aws.kms.Key(
        f"{name}-secrets",
        description=f"Envelope encryption of Kubernetes Secrets in EKS cluster {cluster_name}",
        enable_key_rotation=True, deletion_window_in_days=30,
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
            protect=protect, retain_on_delete=protect)))
    aws.kms.Alias(f"{name}-secrets", name=f"alias/{cluster_name}-eks-secrets", target_key_id=secrets_key.key_id,
                  opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(retain_on_delete=protect)))
    role = aws.iam.Role(f"{name}-control-plane", assume_role_policy=service_trust_policy("eks.amazonaws.com"),
                        opts=ctx.aws)
    policy = aws.iam.RolePolicyAttachment(
        f"{name}-control-plane", role=role.name,
        policy_arn=managed_policy_arn(ctx.partition, "AmazonEKSClusterPolicy"), opts=ctx.aws)
    # Created ahead of the cluster so the logs get a retention instead of EKS's never-expire default.
    log_group = aws.cloudwatch.LogGroup(
        f"{name}-control-plane", name=f"/aws/eks/{cluster_name}/cluster",
        retention_in_days=settings.control_plane_log_retention_days,
        # The control plane's audit trail is kept like the other data.
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
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
        opts=pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
            depends_on=[policy, log_group],
            # A creation-time choice that forces a new cluster: a cluster created with the creator's
            # implicit entry keeps it (docs/aws.md, clusters created before explicit access entries).
            # EKS takes new control-plane subnets only in the zones it was created in: a zone added
            # later gets subnets and nodes, the control plane stays where it is.
            ignore_changes=["accessConfig.bootstrapClusterCreatorAdminPermissions", "vpcConfig.subnetIds"])),
    )


def check_deployer_access(ctx: AwsContext) -> None:
    """On `pulumi up`, before any resource: the principal running it installs the Helm releases right after EKS, so
    it must be one the stack itself gives cluster-admin (adminPrincipalArns, or the deploy role of githubRepository).
    The entries never follow the caller: a preview, by whatever role, plans the same ones as the deploy."""
    if pulumi.runtime.is_dry_run():
        return
    # An assumed-role session stands for its role: EKS keys access entries on the role ARN.
    deployer = aws.iam.get_session_context(arn=ctx.caller_arn, opts=ctx.invoke).issuer_arn
    settings = ctx.settings
    allowed = list(settings.admin_principal_arns)
    if ctx.deploys_from_github:
        allowed.append(f"arn:{ctx.partition}:iam::{ctx.account_id}:role/"
                       f"{github_role_name(ctx.name_prefix, 'deploy')}")
    if deployer not in allowed:
        raise ValueError(
            f"the principal running `pulumi up` ({deployer}) gets no cluster-admin access entry from this stack, so "
            "it could not install the Helm releases: add it to airflow:adminPrincipalArns (an IAM role or user; not "
            f"the root user or a federated user) or run as one of {', '.join(allowed) or 'them'}")


def build_admin_access(ctx: AwsContext, eks_cluster: aws.eks.Cluster) -> list[aws.eks.AccessPolicyAssociation]:
    """Cluster-admin access entries for adminPrincipalArns, one entry per principal, named after it."""
    name = ctx.name
    admins = ctx.settings.admin_principal_arns
    associations = []
    for index, principal_arn in enumerate(admins):
        resource_name = f"{name}-admin-{principal_name(principal_arn)}"
        # They were once named by their position in the list.
        opts = pulumi.ResourceOptions.merge(ctx.aws, pulumi.ResourceOptions(
            aliases=[pulumi.Alias(name=f"{name}-admin-{index}")]))
        entry = aws.eks.AccessEntry(resource_name, cluster_name=eks_cluster.name,
                                    principal_arn=principal_arn, type="STANDARD", opts=opts)
        associations.append(aws.eks.AccessPolicyAssociation(
            resource_name, cluster_name=eks_cluster.name, principal_arn=entry.principal_arn,
            policy_arn=f"arn:{ctx.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
            access_scope={"type": "cluster"}, opts=opts))
    return associations


def kubeconfig(eks_cluster: aws.eks.Cluster, region: str) -> pulumi.Output[str]:
    """A kubeconfig that authenticates through `aws eks get-token` (no long-lived credential)."""
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
