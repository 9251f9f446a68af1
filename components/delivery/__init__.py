"""Delivery: what the repository's GitHub workflows need to preview and deploy this stack (githubRepository).

- The roles they assume through GitHub's OIDC provider: a deploy role (cluster-admin) trusted only by jobs in the
  stack's GitHub environment, and a preview role (read-only in AWS and in the cluster) trusted only by jobs in
  `preview-<stack>`. The subjects follow GitHub's default format for a job with an environment,
  `repo:<owner>/<name>:environment:<environment>`; tests/test_delivery.py derives them from the workflows.
- CodeBuild-hosted GitHub Actions runners in the stack's private subnets, so that the jobs reach a private EKS
  endpoint: a project the workflows name in `runs-on`, a webhook for queued jobs, a security group the cluster's
  admits on 443.

Their access entries are made here, after the cluster: the running `pulumi up` never depends on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.delivery.settings import DeliverySettings
from components.handles import ClusterHandle
from components.iam import managed_policy_arn
from components.platform import github_role_name

GITHUB_OIDC_URL = "https://token.actions.githubusercontent.com"
GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
# The audience aws-actions/configure-aws-credentials asks GitHub for.
STS_AUDIENCE = "sts.amazonaws.com"
# A cold `up` of prod takes about 30 minutes; configure-aws-credentials asks for the same (role-duration-seconds).
SESSION_SECONDS = 7200
# CodeBuild's Ubuntu 22.04 image (actions/setup-python has Python builds for it); 4 vCPUs and 7 GiB.
RUNNER_IMAGE = "aws/codebuild/standard:7.0"
RUNNER_COMPUTE_TYPE = "BUILD_GENERAL1_MEDIUM"
# Minutes: the deploy jobs' own timeout (120) and a margin.
RUNNER_BUILD_TIMEOUT = 150
RUNNER_LOG_RETENTION_DAYS = 90
# Reads `pulumi preview` never needs and that would hand a pull request's code the platform's data.
PREVIEW_DENIED_READS = [
    "s3:GetObject", "s3:GetObjectVersion", "secretsmanager:GetSecretValue", "ssm:GetParameter",
    "ssm:GetParameters", "ssm:GetParametersByPath", "kms:Decrypt", "logs:GetLogEvents", "logs:FilterLogEvents",
    "logs:StartQuery", "rds:DownloadDBLogFilePortion", "elasticache:DescribeUsers",
]


@dataclass
class DeliveryArgs:
    settings: DeliverySettings
    # target=aws: the roles trust the cluster's account, the runners run in its private subnets.
    cluster: ClusterHandle
    # The GitHub environments whose jobs may assume each role.
    deploy_environment: str
    preview_environment: str


def github_subject(repository: str, environment: str) -> str:
    """The `sub` claim GitHub issues to a job that references an environment, whatever its event (GitHub's OIDC
    reference); `repository` in the form the repository's tokens use (githubRepository)."""
    return f"repo:{repository}:environment:{environment}"


def github_trust_policy(provider_arn: pulumi.Input[str], subject: str) -> pulumi.Output[str]:
    """Only GitHub's tokens for this one subject, and for STS."""
    return pulumi.Output.json_dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{GITHUB_OIDC_HOST}:aud": STS_AUDIENCE,
                                           f"{GITHUB_OIDC_HOST}:sub": subject}},
        }],
    })


def repository_url(repository: str) -> str:
    """`owner/name`, or the immutable form `owner@<id>/name@<id>`, as the repository's address."""
    owner, name = (part.split("@")[0] for part in repository.split("/"))
    return f"https://github.com/{owner}/{name}"


def runner_project_name(name_prefix: str) -> str:
    """What the workflows name in `runs-on: codebuild-<project>-${{ github.run_id }}-${{ github.run_attempt }}`."""
    return f"{name_prefix}-github-runner"


class Delivery(pulumi.ComponentResource):
    """GitHub Actions' way into the stack: OIDC roles and runners inside the VPC."""

    deploy_role_arn: pulumi.Output[str]
    preview_role_arn: pulumi.Output[str]
    runner_project_name: pulumi.Output[str]

    def __init__(self, name: str, args: DeliveryArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Delivery", name, None, opts)
        self._args = args
        if args.cluster.partition is None:
            raise ValueError("Delivery needs an AWS stack (githubRepository with target=aws)")
        self._partition = args.cluster.partition
        self._opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider)
        provider_arn = args.settings.github_oidc_provider_arn or self._oidc_provider(name).arn
        deploy_role = self._role(name, "deploy", provider_arn, args.deploy_environment)
        preview_role = self._role(name, "preview", provider_arn, args.preview_environment)
        # It creates IAM roles, so it is an administrator in effect whatever it holds: what guards it is its trust
        # (jobs of one GitHub environment, which should admit only `main` and need a reviewer for prod).
        # PowerUserAccess leaves out Organizations and the account's own settings.
        self._attach(f"{name}-deploy-power-user", deploy_role, "PowerUserAccess")
        self._attach(f"{name}-deploy-iam", deploy_role, "IAMFullAccess")
        self._attach(f"{name}-preview-read-only", preview_role, "ReadOnlyAccess")
        aws.iam.RolePolicy(f"{name}-preview-no-data", role=preview_role.name,
                           policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                               "Effect": "Deny", "Action": PREVIEW_DENIED_READS, "Resource": "*"}]}),
                           opts=self._opts)
        self._access_entry(f"{name}-deploy", deploy_role, "AmazonEKSClusterAdminPolicy")
        self._access_entry(f"{name}-preview", preview_role, "AmazonEKSViewPolicy")
        project = self._runners(name)

        self.deploy_role_arn = deploy_role.arn
        self.preview_role_arn = preview_role.arn
        self.runner_project_name = project.name
        self.register_outputs({
            "deploy_role_arn": self.deploy_role_arn,
            "preview_role_arn": self.preview_role_arn,
            "runner_project_name": self.runner_project_name,
        })

    def _oidc_provider(self, name: str) -> aws.iam.OpenIdConnectProvider:
        # One per account and URL: another stack of the account names it (githubOidcProviderArn), so destroying
        # this one must not take it from them.
        return aws.iam.OpenIdConnectProvider(
            f"{name}-github-oidc", url=GITHUB_OIDC_URL, client_id_lists=[STS_AUDIENCE],
            opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(retain_on_delete=True)))

    def _role(self, name: str, purpose: str, provider_arn: pulumi.Input[str], environment: str) -> aws.iam.Role:
        args = self._args
        cluster = args.cluster
        return aws.iam.Role(
            f"{name}-{purpose}", name=github_role_name(cluster.name_prefix, purpose),  # type: ignore[arg-type]
            description=f"GitHub Actions jobs of {args.settings.github_repository} in environment {environment}",
            assume_role_policy=github_trust_policy(provider_arn, github_subject(args.settings.github_repository, environment)),
            max_session_duration=SESSION_SECONDS, opts=self._opts)

    def _attach(self, resource_name: str, role: aws.iam.Role, policy: str) -> None:
        aws.iam.RolePolicyAttachment(resource_name, role=role.name,
                                     policy_arn=managed_policy_arn(self._partition, policy), opts=self._opts)

    def _access_entry(self, resource_name: str, role: aws.iam.Role, policy: str) -> None:
        args = self._args
        cluster = args.cluster
        entry = aws.eks.AccessEntry(resource_name, cluster_name=cluster.cluster_name, principal_arn=role.arn,
                                    type="STANDARD", opts=self._opts)
        aws.eks.AccessPolicyAssociation(
            resource_name, cluster_name=cluster.cluster_name, principal_arn=entry.principal_arn,
            policy_arn=f"arn:{cluster.partition}:eks::aws:cluster-access-policy/{policy}",
            access_scope={"type": "cluster"}, opts=self._opts)

    def _runners(self, name: str) -> aws.codebuild.Project:
        args = self._args
        cluster = args.cluster
        project_name = runner_project_name(cluster.name_prefix)
        group = aws.ec2.SecurityGroup(
            # A constant description: a new one replaces the group, which the running build's interface holds.
            f"{name}-runner", vpc_id=cluster.vpc_id, description="CodeBuild-hosted GitHub Actions runners",
            # HTTPS only: GitHub, Pulumi Cloud, the package and chart registries, AWS's APIs and EKS's endpoint.
            # (DNS goes to the VPC's resolver, which security groups do not filter.)
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                     "description": "HTTPS"}],
            opts=self._opts)
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-runner-to-eks", security_group_id=cluster.cluster_security_group_id,
            referenced_security_group_id=group.id, ip_protocol="tcp", from_port=443, to_port=443,
            description="EKS API from the CodeBuild runners", opts=self._opts)
        log_group = aws.cloudwatch.LogGroup(f"{name}-runner", name=f"/aws/codebuild/{project_name}",
                                            retention_in_days=RUNNER_LOG_RETENTION_DAYS, opts=self._opts)
        role, role_policy = self._runner_role(name, log_group)
        project = aws.codebuild.Project(
            f"{name}-runner", name=project_name,
            description=f"GitHub Actions runners of {args.settings.github_repository}, inside the VPC",
            service_role=role.arn,
            source={"type": "GITHUB", "location": repository_url(args.settings.github_repository),
                    "auth": {"type": "CODECONNECTIONS", "resource": args.settings.github_connection_arn}},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={"type": "LINUX_CONTAINER", "compute_type": RUNNER_COMPUTE_TYPE, "image": RUNNER_IMAGE,
                         "image_pull_credentials_type": "CODEBUILD"},
            vpc_config={"vpc_id": cluster.vpc_id, "subnets": list(cluster.private_subnet_ids),
                        "security_group_ids": [group.id]},
            logs_config={"cloudwatch_logs": {"group_name": log_group.name}},
            build_timeout=RUNNER_BUILD_TIMEOUT,
                        # CodeBuild checks the role's network permissions when the project is made.
            opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=[role_policy])))
        aws.codebuild.Webhook(
            f"{name}-runner", project_name=project.name, build_type="BUILD",
            filter_groups=[{"filters": [{"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"}]}],
            # CodeBuild's default for new webhooks asks for a comment's approval of every pull request's build.
            # The workflows give forks no runner job at all; a branch's author can push to the repository.
            pull_request_build_policy={"requires_comment_approval": "FORK_PULL_REQUESTS",
                                       "approver_roles": ["GITHUB_WRITE", "GITHUB_MAINTAIN", "GITHUB_ADMIN"]},
            opts=self._opts)
        return project

    def _runner_role(self, name: str, log_group: aws.cloudwatch.LogGroup) -> tuple[aws.iam.Role, aws.iam.RolePolicy]:
        """The build's own credentials, which every job on the runner can read: logs, its network interfaces in
        the private subnets, the connection. The jobs' AWS access comes from the OIDC roles above."""
        args = self._args
        cluster = args.cluster
        role = aws.iam.Role(
            f"{name}-runner",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": cluster.account_id}}}]}),
            opts=self._opts)
        subnet_arns = [pulumi.Output.concat(f"arn:{cluster.partition}:ec2:{cluster.region}:{cluster.account_id}:subnet/",
                                            subnet_id) for subnet_id in list(cluster.private_subnet_ids)]
        policy = pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": pulumi.Output.concat(log_group.arn, ":*")},
            {"Effect": "Allow", "Action": ["ec2:CreateNetworkInterface", "ec2:DescribeDhcpOptions",
                                           "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
                                           "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs"],
             "Resource": "*"},
            {"Effect": "Allow", "Action": "ec2:CreateNetworkInterfacePermission",
             "Resource": f"arn:{cluster.partition}:ec2:{cluster.region}:{cluster.account_id}:network-interface/*",
             "Condition": {"StringEquals": {"ec2:AuthorizedService": "codebuild.amazonaws.com"},
                           "ArnEquals": {"ec2:Subnet": subnet_arns}}},
            {"Effect": "Allow", "Action": ["codeconnections:GetConnectionToken", "codeconnections:GetConnection",
                                           "codeconnections:UseConnection",
                                           "codestar-connections:GetConnectionToken",
                                           "codestar-connections:GetConnection",
                                           "codestar-connections:UseConnection"],
             "Resource": args.settings.github_connection_arn},
        ]})
        return role, aws.iam.RolePolicy(f"{name}-runner", role=role.name, policy=policy, opts=self._opts)
