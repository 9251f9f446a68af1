"""What a stack deploys, and what a change does to it, without credentials or network.

    python plan.py --stack prod                        components, resources, Helm releases, policy
    python plan.py --stack prod --format json          the same, machine-readable
    python plan.py --stack prod --format mermaid       the component graph as a Mermaid flowchart
    python plan.py --stack prod --against origin/main  what changes from that git ref to the working tree

The program runs under the mock engine of the tests (tests/harness.py): every resource the stack file
registers is recorded with its inputs, options and dependencies; secrets print as `[secret]`. Exit codes:
0 = no change (or no `--against`), 2 = changes, 1 = error or a mandatory policy violation.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "policy"))

import rules as policy_rules  # noqa: E402

REDACTED = "[secret]"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
COMPONENT_PREFIX = "airflow:platform:"
PROGRESS_AFTER_SECONDS = 2.0

# Inputs a provider cannot change in place: a change to any of them (or below them) replaces the resource.
# From the providers' schemas (ForceNew in terraform-provider-aws 6.x / terraform-provider-random, the
# forced-replacement tables of pulumi-kubernetes 4.x); README, "Plan a change", lists what is covered.
REPLACED_ON_CHANGE: dict[str, tuple[str, ...]] = {
    "pulumi:providers:aws": ("region",),
    "aws:eks/cluster:Cluster": ("name", "roleArn", "bootstrapSelfManagedAddons",
                                "accessConfig.bootstrapClusterCreatorAdminPermissions",
                                "kubernetesNetworkConfig.ipFamily", "kubernetesNetworkConfig.serviceIpv4Cidr",
                                "outpostConfig"),
    "aws:eks/nodeGroup:NodeGroup": ("clusterName", "nodeGroupName", "nodeGroupNamePrefix", "nodeRoleArn",
                                    "subnetIds", "amiType", "capacityType", "diskSize", "instanceTypes",
                                    "remoteAccess", "launchTemplate.name", "launchTemplate.id"),
    "aws:eks/addon:Addon": ("clusterName", "addonName", "namespaceConfig"),
    "aws:eks/accessEntry:AccessEntry": ("clusterName", "principalArn", "type"),
    "aws:eks/accessPolicyAssociation:AccessPolicyAssociation": ("clusterName", "principalArn", "policyArn",
                                                                "accessScope"),
    "aws:eks/podIdentityAssociation:PodIdentityAssociation": ("clusterName", "namespace", "serviceAccount"),
    "aws:ec2/vpc:Vpc": ("cidrBlock", "instanceTenancy", "ipv4IpamPoolId", "ipv4NetmaskLength"),
    "aws:ec2/subnet:Subnet": ("vpcId", "cidrBlock", "availabilityZone", "availabilityZoneId", "outpostArn",
                              "ipv4IpamPoolId", "ipv4NetmaskLength", "ipv6IpamPoolId", "ipv6Native",
                              "ipv6NetmaskLength"),
    "aws:ec2/natGateway:NatGateway": ("subnetId", "allocationId", "availabilityMode", "connectivityType",
                                      "privateIp", "vpcId"),
    "aws:ec2/eip:Eip": ("address", "domain", "ipamPoolId", "networkBorderGroup", "publicIpv4Pool"),
    "aws:ec2/routeTable:RouteTable": ("vpcId",),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": ("subnetId", "gatewayId"),
    "aws:ec2/securityGroup:SecurityGroup": ("name", "namePrefix", "description", "vpcId"),
    # internal/service/ec2/vpc_security_group_ingress_rule.go (framework: RequiresReplace); a switch of the
    # source's kind is in REPLACED_WHEN.
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ("securityGroupId",),
    # terraform-provider-aws internal/service/ec2/vpc_subnet_cidr_reservation.go: every argument is ForceNew.
    "aws:ec2/subnetCidrReservation:SubnetCidrReservation": ("subnetId", "cidrBlock", "reservationType", "description"),
    "aws:ec2/vpcEndpoint:VpcEndpoint": ("vpcId", "serviceName", "serviceRegion", "vpcEndpointType",
                                        "resourceConfigurationArn", "serviceNetworkArn",
                                        "dnsOptions.privateDnsPreference", "dnsOptions.privateDnsSpecifiedDomains"),
    "aws:ec2/launchTemplate:LaunchTemplate": ("name", "namePrefix"),
    "aws:efs/fileSystem:FileSystem": ("creationToken", "encrypted", "kmsKeyId", "performanceMode",
                                      "availabilityZoneName"),
    "aws:efs/mountTarget:MountTarget": ("fileSystemId", "subnetId", "ipAddress"),
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId", "xksKeyId"),
    "aws:kms/alias:Alias": ("name", "namePrefix"),
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled",
                             "objectLockConfiguration.objectLockEnabled"),
    "aws:s3/bucketPolicy:BucketPolicy": ("bucket",),
    "aws:s3/bucketVersioning:BucketVersioning": ("bucket", "expectedBucketOwner"),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": (
        "bucket", "expectedBucketOwner"),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": ("bucket",),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": ("bucket", "expectedBucketOwner"),
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": ("bucket",),
    "aws:iam/role:Role": ("name", "namePrefix", "path"),
    # internal/service/iam/policy.go (6.x): the Karpenter controller's policies carry its version in `description`.
    "aws:iam/policy:Policy": ("name", "namePrefix", "path", "description"),
    # Karpenter's interruption queue and its events: internal/service/sqs/queue.go @00a35305, queue_policy.go,
    # internal/service/events/rule.go @0cdab4ae, target.go @0762c41e; ec2/tag (v3's resource_aws_ec2_tag.go
    # @299594d1: value updates in place); acm/certificate_validation.go @004eea7f (no Update at all).
    "aws:sqs/queue:Queue": ("fifoQueue", "name", "namePrefix"),
    "aws:sqs/queuePolicy:QueuePolicy": ("queueUrl",),
    "aws:cloudwatch/eventRule:EventRule": ("name", "namePrefix", "eventBusName"),
    "aws:cloudwatch/eventTarget:EventTarget": ("rule", "eventBusName", "targetId"),
    "aws:ec2/tag:Tag": ("resourceId", "key"),
    "aws:acm/certificateValidation:CertificateValidation": ("certificateArn", "validationRecordFqdns"),
    "aws:iam/rolePolicy:RolePolicy": ("role", "name", "namePrefix"),
    # Delivery (githubRepository): internal/service/iam/openid_connect_provider.go @01606926 (client IDs and
    # thumbprints update in place), codebuild/project.go (5.x), codebuild/webhook.go @01c08000; the webhook's
    # manualCreation (newer than the files read; the program does not set it) is taken as ForceNew, since
    # CodeBuild's UpdateWebhook has no field for it.
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": ("url",),
    "aws:codebuild/project:Project": ("name",),
    "aws:codebuild/webhook:Webhook": ("projectName", "manualCreation"),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ("role", "policyArn"),
    "aws:cloudwatch/logGroup:LogGroup": ("name", "namePrefix", "logGroupClass"),
    "aws:backup/vault:Vault": ("name", "kmsKeyArn"),
    "aws:backup/plan:Plan": ("name",),
    "aws:backup/selection:Selection": ("name", "planId", "iamRoleArn", "resources", "notResources",
                                       "selectionTags", "conditions"),
    # The managed backends: ForceNew in terraform-provider-aws's internal/service/rds/cluster.go @0168cf68,
    # cluster_instance.go @01606926, subnet_group.go @01c08000, cluster_parameter_group.go @01e5fd8f,
    # parameter_group.go @01606926, instance.go (SchemaVersion 2 of the 5.x line, checked against
    # website/docs/r/db_instance.html.markdown @ad45c91c of 6.x), internal/service/elasticache/
    # replication_group.go @001b6364, subnet_group.go @01c08000, parameter_group.go @0593466d; cases in
    # REPLACED_WHEN. None of these is the exact upstream commit of pulumi-aws 7.51.1: inputs it has and they
    # lack (a cluster's publiclyAccessible and warningEventCategories, a replication group's authTokenWo and
    # durability) are not covered; the program sets none of them.
    "aws:rds/cluster:Cluster": ("clusterIdentifier", "clusterIdentifierPrefix", "availabilityZones",
                                "clusterScalabilityType", "databaseName", "dbSubnetGroupName", "dbSystemId",
                                "engine", "engineMode", "kmsKeyId", "masterUsername", "restoreToPointInTime",
                                "s3Import", "sourceRegion", "storageEncrypted"),
    "aws:rds/clusterInstance:ClusterInstance": ("identifier", "identifierPrefix", "clusterIdentifier",
                                                "availabilityZone", "customIamInstanceProfile",
                                                "dbSubnetGroupName", "engine"),
    # (identifier renames in place since the 5.x line: RDS's ModifyDBInstance NewDBInstanceIdentifier.)
    "aws:rds/instance:Instance": ("availabilityZone", "backupTarget", "characterSetName",
                                  "customIamInstanceProfile", "dbName", "engine", "kmsKeyId",
                                  "ncharCharacterSetName", "restoreToPointInTime", "s3Import",
                                  "snapshotIdentifier", "storageEncrypted", "timezone", "username"),
    "aws:rds/subnetGroup:SubnetGroup": ("name", "namePrefix"),
    "aws:rds/clusterParameterGroup:ClusterParameterGroup": ("name", "namePrefix", "family", "description"),
    "aws:rds/parameterGroup:ParameterGroup": ("name", "namePrefix", "family", "description"),
    "aws:elasticache/replicationGroup:ReplicationGroup": ("replicationGroupId", "atRestEncryptionEnabled",
                                                          "dataTieringEnabled", "globalReplicationGroupId",
                                                          "kmsKeyId", "networkType", "securityGroupNames",
                                                          "snapshotArns", "snapshotName", "subnetGroupName"),
    "aws:elasticache/subnetGroup:SubnetGroup": ("name",),
    "aws:elasticache/parameterGroup:ParameterGroup": ("name", "family", "description"),
    "aws:acm/certificate:Certificate": ("domainName", "subjectAlternativeNames", "validationMethod",
                                        "keyAlgorithm", "certificateAuthorityArn", "validationOptions"),
    "aws:route53/record:Record": ("zoneId", "name"),
    "random:index/randomPassword:RandomPassword": ("length", "lower", "minLower", "minNumeric", "minSpecial",
                                                   "minUpper", "number", "numeric", "overrideSpecial", "special",
                                                   "upper", "keepers"),
    "random:index/randomBytes:RandomBytes": ("length", "keepers"),
    # terraform-provider-random internal/provider/resource_id.go: every argument requires replacement.
    "random:index/randomId:RandomId": ("byteLength", "keepers", "prefix"),
    HELM_RELEASE: ("name", "namespace"),
    "kubernetes:core/v1:PersistentVolumeClaim": ("spec.accessModes", "spec.selector", "spec.storageClassName",
                                                 "spec.volumeName"),
    "kubernetes:core/v1:Service": ("spec.clusterIP",),
    # Secrets and ConfigMaps are immutable to pulumi-kubernetes by default: new data is a new object.
    "kubernetes:core/v1:Secret": ("type", "data", "stringData"),
    "kubernetes:core/v1:ConfigMap": ("data", "binaryData"),
    "kubernetes:storage.k8s.io/v1:StorageClass": ("provisioner", "parameters"),
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": ("roleRef",),
    "kubernetes:apps/v1:Deployment": ("spec.selector",),
    "kubernetes:apps/v1:StatefulSet": ("spec.selector", "spec.serviceName", "spec.volumeClaimTemplates",
                                       "spec.podManagementPolicy", "spec.revisionHistoryLimit"),
    "kubernetes:batch/v1:Job": ("spec.completions", "spec.parallelism", "spec.selector", "spec.template"),
}
# AWS types of the stacks with no input that forces a replacement (they update in place whatever changes).
UPDATED_IN_PLACE: dict[str, str] = {
    "aws:ec2/internetGateway:InternetGateway": "internal/service/ec2/vpc_internet_gateway.go: no ForceNew; a new "
                                               "vpcId detaches and attaches it in Update",
}
# Inputs that are sets to the provider: their order means nothing, so they are compared sorted.
SET_INPUTS: dict[str, tuple[str, ...]] = {
    "aws:eks/cluster:Cluster": ("vpcConfig.subnetIds", "vpcConfig.securityGroupIds", "vpcConfig.publicAccessCidrs",
                                "enabledClusterLogTypes"),
    "aws:eks/nodeGroup:NodeGroup": ("subnetIds",),
    "aws:ec2/vpcEndpoint:VpcEndpoint": ("routeTableIds", "subnetIds", "securityGroupIds", "subnetConfigurations"),
    "aws:rds/cluster:Cluster": ("availabilityZones", "vpcSecurityGroupIds", "enabledCloudwatchLogsExports",
                                "iamRoles"),
    "aws:rds/instance:Instance": ("vpcSecurityGroupIds", "enabledCloudwatchLogsExports"),
    "aws:rds/subnetGroup:SubnetGroup": ("subnetIds",),
    "aws:rds/clusterParameterGroup:ClusterParameterGroup": ("parameters",),
    "aws:rds/parameterGroup:ParameterGroup": ("parameters",),
    "aws:elasticache/replicationGroup:ReplicationGroup": ("securityGroupIds", "securityGroupNames", "snapshotArns",
                                                          "userGroupIds", "logDeliveryConfigurations",
                                                          "nodeGroupConfigurations"),
    "aws:elasticache/subnetGroup:SubnetGroup": ("subnetIds",),
    "aws:elasticache/parameterGroup:ParameterGroup": ("parameters",),
    "aws:acm/certificate:Certificate": ("subjectAlternativeNames",),
    "aws:acm/certificateValidation:CertificateValidation": ("validationRecordFqdns",),
    "aws:backup/selection:Selection": ("resources", "notResources"),
    "aws:ec2/securityGroup:SecurityGroup": ("ingress", "egress"),
    "aws:iam/role:Role": ("managedPolicyArns",),
}
# Every Kubernetes object is replaced when its name or namespace changes.
KUBERNETES_REPLACED_ON_CHANGE = ("metadata.name", "metadata.namespace")


def _engine_version(version: Any) -> tuple:
    """An ElastiCache engine version as numbers (`7.0.5` -> (7, 0, 5); `6.x` sorts above every 6.n); () when
    there is none."""
    try:
        return tuple(10**6 if part == "x" else int(part) for part in str(version).split(".")) if version else ()
    except ValueError:
        return ()


def _node_group_change(entry: dict, path: str, old: Any, new: Any) -> bool:
    """hasSignificantNodeGroupConfigChanges: a group added or removed, its id, replica count or slots, or a zone
    that was set; Outposts ARNs change in place, and so does a zone set where none was."""
    leaf = path.rsplit(".", 1)[-1].split("[")[0]
    if leaf in ("primaryOutpostArn", "replicaOutpostArns"):
        return False
    if leaf in ("primaryAvailabilityZone", "replicaAvailabilityZones"):
        return old is not None
    return True


SECURITY_GROUP_RULE_SOURCES = ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId")

# Inputs a provider replaces only in some cases (a CustomizeDiff or ModifyPlan, or a DiffSuppressFunc that
# spares one change): per type, (input, when(resource, path, old, new), why). The case is decided on the
# changed value (old -> new) and the resource's new inputs; a value only passed on from a replaced resource
# comes as (None, None). Sources: the files named at REPLACED_ON_CHANGE; for EKS, encryption_config's
# ForceNewIfChange (internal/service/eks/cluster.go); for the VPC endpoint, its CustomizeDiff in
# internal/service/ec2/vpc_endpoint.go @008db85a; for the ingress rule, its ModifyPlan.
REPLACED_WHEN: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "aws:eks/cluster:Cluster": (
        ("encryptionConfig", lambda entry, path, old, new: new is None,
         "EKS cannot remove Secrets encryption in place"),
    ),
    "aws:rds/cluster:Cluster": (
        # ForceNewIf: only Aurora changes its storage type in place.
        ("storageType", lambda entry, path, old, new: not str(entry["inputs"].get("engine", "")).startswith("aurora"),
         "only Aurora changes a cluster's storage type in place"),
        # ForceNew, but removing snapshot_identifier is no change (its DiffSuppressFunc).
        ("snapshotIdentifier", lambda entry, path, old, new: new not in (None, ""),
         "snapshotIdentifier cannot change in place"),
    ),
    "aws:elasticache/replicationGroup:ReplicationGroup": (
        # customizeDiffEngineForceNewOnDowngrade: every engine change but redis -> valkey (the state says redis
        # when no engine was set), unless the group belongs to a global datastore.
        ("engine", lambda entry, path, old, new: new is not None
         and not entry["inputs"].get("globalReplicationGroupId") and (old or "redis") != new
         and ((old or "redis"), new) != ("redis", "valkey"),
         "ElastiCache changes the engine in place only from redis to valkey"),
        # customizeDiffEngineVersionForceNewOnDowngrade.
        ("engineVersion", lambda entry, path, old, new: () < _engine_version(new) < _engine_version(old),
         "ElastiCache cannot downgrade an engine in place"),
        # ForceNewIf engine_version_actual < 7.0.5 (the inputs hold no patch level: `7.0` counts as before it).
        ("transitEncryptionEnabled",
         lambda entry, path, old, new: _engine_version(entry["inputs"].get("engineVersion")) < (7, 0, 5),
         "ElastiCache changes in-transit encryption in place only from Redis 7.0.5"),
        # ForceNewIf hasSignificantNodeGroupConfigChanges.
        ("nodeGroupConfigurations", _node_group_change, "ElastiCache cannot reshape a node group in place"),
        # ForceNew, but an unset port where the state says 6379 is no change (its DiffSuppressFunc).
        ("port", lambda entry, path, old, new: not (new is None and old == 6379), "port cannot change in place"),
    ),
    "aws:ec2/vpcEndpoint:VpcEndpoint": (
        ("privateDnsEnabled",
         lambda entry, path, old, new: entry["inputs"].get("vpcEndpointType", "Gateway") != "Interface",
         "only an interface endpoint changes private DNS in place"),
    ),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": tuple(
        (source, lambda entry, path, old, new: (old is None) != (new is None),
         "a rule's kind of source (CIDR, prefix list, security group) cannot change in place")
        for source in SECURITY_GROUP_RULE_SOURCES),
}


class PlanError(Exception):
    pass


class Progress:
    """Says on stderr what is running once it has taken longer than a moment, and how long it took."""

    def __init__(self, what: str):
        self.what = what
        self.started = time.perf_counter()
        self.spoke = False
        self.timer = threading.Timer(PROGRESS_AFTER_SECONDS, self._speak)
        self.timer.daemon = True

    def _speak(self):
        self.spoke = True
        print(f"plan: {self.what}…", file=sys.stderr, flush=True)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        if self.spoke:
            print(f"plan: {self.what}: {time.perf_counter() - self.started:.1f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# One stack as a document

def redact(value: Any) -> Any:
    """Inputs as plain data: secrets as `[secret]`, string assets as their text."""
    import pulumi

    import harness

    if harness.is_secret(value):
        return REDACTED
    if isinstance(value, pulumi.StringAsset):
        return {"stringAsset": value.text}
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def short(urn: str) -> str:
    """`name (type)` of a URN, for people."""
    type_, name = urn.split("::")[-2].split("$")[-1], urn.split("::")[-1]
    return f"{name} ({type_})"


def steps(resources: dict[str, dict]) -> dict[str, int]:
    """For each resource, its place in the longest chain of waits that leads to it (1 = waits for nothing)."""
    memo: dict[str, int] = {}

    def step(urn: str) -> int:
        if urn not in memo:
            memo[urn] = 0  # a cycle cannot happen in a Pulumi graph; guard anyway
            waits = [u for u in resources[urn]["waitsFor"] if u in resources]
            memo[urn] = 1 + max((step(u) for u in waits), default=0)
        return memo[urn]

    return {urn: step(urn) for urn in resources}


# A cold `up`, modelled: typical minutes to create one resource (a Helm release: of its chart, until its pods are
# ready, as `atomic` waits; a CloudNativePG Cluster: until Ready, as its `pulumi.com/waitFor` says). Estimates to
# compare the graph's shapes, not a forecast; anything not listed is an API call (MODELLED_DEFAULT_MINUTES).
MODELLED_CREATE_MINUTES: dict[str, float] = {
    "aws:eks/cluster:Cluster": 10, "aws:eks/nodeGroup:NodeGroup": 4, "aws:eks/addon:Addon": 1.5,
    "aws:ec2/natGateway:NatGateway": 2, "aws:efs/mountTarget:MountTarget": 1.5, "aws:efs/fileSystem:FileSystem": 0.5,
    "aws:rds/cluster:Cluster": 8, "aws:rds/clusterInstance:ClusterInstance": 10, "aws:rds/instance:Instance": 15,
    "aws:elasticache/replicationGroup:ReplicationGroup": 15, "aws:acm/certificateValidation:CertificateValidation": 3,
    "aws:route53/record:Record": 1, "aws:ec2/vpcEndpoint:VpcEndpoint": 1.5,
    "kubernetes:postgresql.cnpg.io/v1:Cluster": 4,
}
MODELLED_CHART_MINUTES: dict[str, float] = {
    "airflow": 6, "kube-prometheus-stack": 3, "redis-ha": 3, "cert-manager": 1.5, "cloudnative-pg": 1,
    "plugin-barman-cloud": 1, "keda": 1, "aws-load-balancer-controller": 1.5, "karpenter": 1.5,
}
MODELLED_DEFAULT_MINUTES = 0.1


def modelled_minutes(resource: dict) -> float:
    if resource["type"] == HELM_RELEASE:
        chart = str(resource["inputs"].get("chart", "")).rsplit("/", 1)[-1]
        return MODELLED_CHART_MINUTES.get(chart, 1)
    if not resource["custom"] or resource["type"].startswith("pulumi:providers:"):
        return 0
    return MODELLED_CREATE_MINUTES.get(resource["type"], MODELLED_DEFAULT_MINUTES)


def longest_chain(resources: dict[str, dict]) -> tuple[float, list[str]]:
    """The chain of waits that paces a cold `up` (each resource starts when all it waits for are done), with its
    modelled minutes: (minutes, URNs from first to last)."""
    memo: dict[str, tuple[float, list[str]]] = {}

    def finish(urn: str) -> tuple[float, list[str]]:
        if urn not in memo:
            waits = [finish(u) for u in resources[urn]["waitsFor"] if u in resources]
            before = max(waits, key=lambda chain: chain[0], default=(0.0, []))
            memo[urn] = (before[0] + modelled_minutes(resources[urn]), [*before[1], urn])
        return memo[urn]

    return max((finish(urn) for urn in sorted(resources)), key=lambda chain: chain[0], default=(0.0, []))


def stack_document(stack: str, root: Path = ROOT, overrides: Optional[dict[str, Any]] = None) -> dict:
    """Run the stack file of the program at `root` under the mocks (with config `overrides`, as the tests
    give them); everything a reader or a diff needs."""
    import harness

    if not (root / f"Pulumi.{stack}.yaml").exists():
        raise PlanError(f"no stack file Pulumi.{stack}.yaml in {root}")
    # A fixed seed: generated values (and what is derived from them) are equal between two runs.
    try:
        # An encrypted value of the stack file runs as its setting's stand-in: plan.py never has the secrets.
        run = harness.run_program(stack, overrides, root=root, password_seed=0)
    except harness.ProgramFailed as failed:
        raise PlanError(f"the program failed for stack {stack}: {failed.cause}") from failed
    stack_urn = f"urn:pulumi:{stack}::{harness.PROJECT}::pulumi:pulumi:Stack::{harness.PROJECT}-{stack}"
    by_urn = {r.urn: r for r in run.registrations}
    resources: dict[str, dict] = {}
    for r in run.registrations:
        waits = set(r.dependencies) | {u for deps in r.property_dependencies.values() for u in deps}
        if r.provider:
            waits.add(r.provider.rsplit("::", 1)[0])
        waits.discard(r.parent)
        resources[r.urn] = {
            "urn": r.urn, "type": r.type, "name": r.name,
            "parent": None if r.parent in ("", stack_urn) else r.parent,
            "custom": r.custom, "provider": r.provider.rsplit("::", 1)[0] if r.provider else None,
            "waitsFor": sorted(u for u in waits if u in by_urn),
            "inputsFrom": {key: sorted(deps) for key, deps in sorted(r.property_dependencies.items()) if deps},
            # What other resources hold of this one (a replacement changes it): its ID, ARN and name.
            "identity": sorted({f"{r.name}-id", *(str(v) for v in (
                r.state.get("arn"), r.state.get("name"), r.state.get("bucket"),
                (r.state.get("metadata") or {}).get("name")) if isinstance(v, str))}),
            "protect": r.protect, "retainOnDelete": r.retain_on_delete,
            "ignoreChanges": sorted(r.ignore_changes), "replaceOnChanges": sorted(r.replace_on_changes),
            "deleteBeforeReplace": r.delete_before_replace, "aliases": sorted(set(r.alias_urns)),
            "inputs": redact(r.inputs),
        }
    for urn, step in steps(resources).items():
        resources[urn]["step"] = step
    chain_minutes, chain = longest_chain(resources)

    def component_of(urn: str) -> Optional[str]:
        while urn:
            entry = resources.get(urn)
            if entry is None:
                return None
            if entry["type"].startswith(COMPONENT_PREFIX):
                return urn
            urn = entry["parent"]
        return None

    components = {u: r for u, r in resources.items() if r["type"].startswith(COMPONENT_PREFIX)}
    component_waits: dict[str, set[str]] = {u: set() for u in components}
    members: dict[str, int] = {u: 0 for u in components}
    for urn, entry in resources.items():
        owner = component_of(urn)
        if owner is None:
            continue
        members[owner] += urn != owner
        for dependency in entry["waitsFor"]:
            other = component_of(dependency)
            if other is not None and other != owner:
                component_waits[owner].add(other)

    releases = []
    for urn, entry in resources.items():
        if entry["type"] != HELM_RELEASE:
            continue
        inputs = entry["inputs"]
        releases.append({
            "urn": urn, "resource": entry["name"], "component": resources[component_of(urn)]["name"],
            "release": inputs.get("name"), "version": inputs.get("version"), "namespace": inputs.get("namespace"),
            # An OCI chart names its registry in the chart reference (`oci://…/<chart>`).
            **dict(zip(("repository", "chart"), inputs["chart"].rsplit("/", 1) if inputs.get("chart", "").startswith(
                "oci://") else ((inputs.get("repositoryOpts") or {}).get("repo"), inputs.get("chart")), strict=True)),
            "values": inputs.get("values") or {},
            "valueYamlFiles": [f.get("stringAsset", f) if isinstance(f, dict) else f
                               for f in inputs.get("valueYamlFiles") or []],
        })
    # Components in the order they can complete: each after every component it waits for.
    component_order: list[str] = []
    pending = sorted(components, key=lambda u: components[u]["name"])
    while pending:
        ready = [u for u in pending if component_waits[u] <= set(component_order)] or pending[:1]
        component_order.append(ready[0])
        pending.remove(ready[0])
    stack_file = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {
        "stack": stack,
        "project": harness.PROJECT,
        "settings": sorted((stack_file.get("config") or {})),    # the keys the stack file sets (no values)
        "resources": [resources[u] for u in sorted(resources, key=lambda u: (resources[u]["step"], u))],
        "components": [{"urn": u, "type": c["type"], "name": c["name"], "resources": members[u],
                        "waitsFor": sorted(resources[o]["name"] for o in component_waits[u]),
                        "helmReleases": sorted(r["resource"] for r in releases if r["component"] == c["name"])}
                       for u, c in ((u, components[u]) for u in component_order)],
        "helmReleases": sorted(releases, key=lambda r: r["urn"]),
        # What paces a cold `up`: the resources that take time on its longest chain (MODELLED_CREATE_MINUTES).
        "coldUp": {"minutes": round(chain_minutes, 1),
                   "chain": [resources[u]["name"] for u in chain if modelled_minutes(resources[u]) >= 1]},
        "outputs": redact(run.outputs),
        "policy": policy_report(run, stack, root),
    }


def policy_enforcement(stack: str, root: Path) -> dict[str, str]:
    """The stack's policy-pack config (policy/config/<stack>.json), as enforcement levels."""
    path = root / "policy" / "config" / f"{stack}.json"
    if not path.exists():
        return {}
    return {name: (spec["enforcementLevel"] if isinstance(spec, dict) else spec)
            for name, spec in json.loads(path.read_text()).items()}


def policy_resources(run) -> list:
    """The recorded graph as the policy pack sees it (inputs; protect; which input came from which resource)."""
    import harness

    return [policy_rules.Resource(type=r.type, name=r.name, urn=r.urn, props=harness.unwrap(r.inputs),
                                  protect=r.protect, property_dependencies=r.property_dependencies)
            for r in run.registrations]


def policy_report(run, stack: str, root: Path) -> dict:
    violations = policy_rules.evaluate(policy_resources(run), policy_enforcement(stack, root))
    return {"rules": len(policy_rules.RULES), "violations": sorted(violations, key=lambda v: (v["policy"], v["urn"]))}


# ---------------------------------------------------------------------------------------------------------
# Two stacks compared

def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaves of a value by path (`values.workers.replicas`, `subnetIds[1]`); empty containers are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{path}[{index}]"))
        return out
    return {path: value}


def comparable_inputs(entry: dict) -> dict:
    """The inputs with every set-typed list sorted (a new order is no change)."""
    inputs = json.loads(json.dumps(entry["inputs"]))
    for path in SET_INPUTS.get(entry["type"], ()):
        *parents, last = path.split(".")
        holder = inputs
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(last), list):
            holder[last] = sorted(holder[last], key=lambda item: json.dumps(item, sort_keys=True))
    return inputs


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")


def _version_key(version: Any) -> tuple:
    try:
        return tuple(int(part) for part in str(version).split("."))
    except ValueError:
        return ()


def replacement_reason(entry: dict, path: str, old: Any, new: Any) -> Optional[str]:
    """Why changing `path` of this resource makes Pulumi replace it, or None when it updates in place."""
    type_ = entry["type"]
    if any(_under(path, p) for p in entry["replaceOnChanges"]):
        return "replaceOnChanges"
    for prefix, when, why in REPLACED_WHEN.get(type_, ()):
        if _under(path, prefix) and when(entry, path, old, new):
            return why
    if type_.startswith("kubernetes:") and type_ != HELM_RELEASE and type_.count(":") == 2 \
            and any(_under(path, p) for p in KUBERNETES_REPLACED_ON_CHANGE):
        return "Kubernetes objects are replaced when renamed or moved"
    if any(_under(path, p) for p in REPLACED_ON_CHANGE.get(type_, ())):
        return f"{path.split('[')[0]} cannot change in place"
    return None


def inherited_replacement(entry: dict, key: str, source: dict) -> tuple[str, Optional[str]]:
    """The path, and the reason to replace if any, of an input `key` taken from a replaced resource `source`:
    the paths below `key` that hold the source's identity (its ID, ARN or name, which its replacement
    changes) decide (a node group's `launchTemplate.id`, not all of `launchTemplate`)."""
    identity = set(source.get("identity", ()))
    held = [path for path, value in flatten({key: entry["inputs"].get(key)}).items()
            if isinstance(value, str) and value in identity]
    for path in held:
        reason = replacement_reason(entry, path, None, None)
        if reason:
            return path, reason
    return (held[0] if len(held) == 1 else key), replacement_reason(entry, key, None, None)


def refusal(entry: dict, path: str, old: Any, new: Any) -> Optional[str]:
    """Why the provider would accept this change in the plan but the cloud would refuse it."""
    if entry["type"] == "aws:eks/cluster:Cluster" and path == "version" and _version_key(new) < _version_key(old):
        return "EKS refuses to downgrade a control plane (a new cluster is the only way back)"
    if entry["type"] == "aws:eks/cluster:Cluster" and path == "version" \
            and len(_version_key(new)) == 2 and _version_key(new)[1] - _version_key(old)[1] > 1:
        return "EKS upgrades one minor version at a time"
    return None


def _ignored(entry: dict, path: str) -> bool:
    return any(_under(path, p) for p in entry["ignoreChanges"])


def compare(old_doc: Optional[dict], new_doc: dict) -> dict:
    """Resources added, removed and changed between two documents of one stack (changes by input path)."""
    old = {r["urn"]: r for r in (old_doc or {"resources": []})["resources"]}
    new = {r["urn"]: r for r in new_doc["resources"]}
    added = [u for u in new if u not in old]
    removed = [u for u in old if u not in new]
    # A resource that moved (new name or parent) with an alias to its old identity is the same resource.
    moved: dict[str, str] = {}
    for urn in added:
        for old_urn in removed:
            if old_urn in new[urn]["aliases"] and old_urn not in moved.values():
                moved[urn] = old_urn
                break
    added = [u for u in added if u not in moved]
    removed = [u for u in removed if u not in moved.values()]

    changed = []
    for urn, entry in new.items():
        before = old.get(moved.get(urn, urn))
        if before is None:
            continue
        before_inputs, after_inputs = flatten(comparable_inputs(before)), flatten(comparable_inputs(entry))
        paths = []
        for path in sorted(set(before_inputs) | set(after_inputs)):
            was, now = before_inputs.get(path, None), after_inputs.get(path, None)
            if was == now or _ignored(entry, path):
                continue
            change = {"path": path, "old": was, "new": now, "replaces": replacement_reason(entry, path, was, now)}
            refused = refusal(entry, path, was, now)
            if refused:
                change["refused"] = refused
            paths.append(change)
        options = [key for key in ("protect", "retainOnDelete", "deleteBeforeReplace")
                   if before[key] != entry[key]]
        provider = new.get(entry["provider"] or "", {})
        if before["provider"] != entry["provider"] and before["provider"] not in provider.get("aliases", ()):
            # Pulumi asks the provider (DiffConfig) whether the move replaces the resource.
            options.append("provider")
        if not paths and not options and urn not in moved:
            continue
        changed.append({"urn": urn, "type": entry["type"], "name": entry["name"], "movedFrom": moved.get(urn),
                        "protected": entry["protect"], "options": options, "paths": paths,
                        "maintenanceWindow": deferred_to_maintenance(entry)})
    _follow_replacements(new, changed)
    return {
        "stack": new_doc["stack"],
        "added": [{"urn": u, "type": new[u]["type"], "name": new[u]["name"]} for u in sorted(added)],
        "removed": [{"urn": u, "type": old[u]["type"], "name": old[u]["name"], "protected": old[u]["protect"]}
                    for u in sorted(removed)],
        "changed": sorted(changed, key=lambda c: c["urn"]),
    }


def _follow_replacements(resources: dict[str, dict], changed: list[dict]) -> None:
    """A replaced resource gets a new ID (and new outputs): every input taken from it changes too, and where
    that input cannot change in place, its resource is replaced in turn (a new VPC, new subnets)."""
    by_urn = {c["urn"]: c for c in changed}
    replaced = {u for u, c in by_urn.items() if any(p["replaces"] for p in c["paths"])}
    while True:
        found = False
        for urn, entry in resources.items():
            inputs_from = dict(entry.get("inputsFrom", {}))
            if entry.get("provider"):
                inputs_from["(provider)"] = [entry["provider"]]
            for key, sources in inputs_from.items():
                source = next((s for s in sources if s in replaced), None)
                if source is None or _ignored(entry, key):
                    continue
                change = by_urn.get(urn)
                if change is None:
                    change = by_urn[urn] = {"urn": urn, "type": entry["type"], "name": entry["name"],
                                            "movedFrom": None, "protected": entry["protect"], "options": [],
                                            "paths": [], "maintenanceWindow": deferred_to_maintenance(entry)}
                    changed.append(change)
                if key == "(provider)":
                    path, reason = key, f"its provider {resources[source]['name']} is replaced"
                else:
                    path, reason = inherited_replacement(entry, key, resources[source])
                if any(p["path"] == path for p in change["paths"]):
                    continue
                change["paths"].append({"path": path, "old": f"from {resources[source]['name']}",
                                        "new": f"from the new {resources[source]['name']}", "replaces": reason})
                if reason and urn not in replaced:
                    replaced.add(urn)
                    found = True
        if not found:
            break
    for change in changed:
        change["paths"].sort(key=lambda p: p["path"])
        change["action"] = "replace" if any(p["replaces"] for p in change["paths"]) else "update"
    changed.sort(key=lambda c: c["urn"])


def data_loss_warnings(diff: dict, new_doc: dict) -> list[str]:
    """Changes the plan allows but that lose data, named for the reviewer."""
    warnings = []
    for change in diff["changed"]:
        if change["action"] == "replace" and change["type"] == "random:index/randomBytes:RandomBytes" \
                and change["name"].endswith("fernet-key") and "airflow:previousFernetKey" not in new_doc["settings"]:
            warnings.append(f"{change['name']}: a new Fernet key without airflow:previousFernetKey leaves every "
                            "connection, variable and trigger encrypted with the old key unreadable (README, Rotate "
                            "secrets); never lower or remove airflow:fernetKeyRotation")
    return warnings


def has_changes(diff: dict) -> bool:
    return bool(diff["added"] or diff["removed"] or diff["changed"])


def git(*args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True).stdout
    except FileNotFoundError as exc:
        raise PlanError("git is needed for --against") from exc
    except subprocess.CalledProcessError as exc:
        raise PlanError(f"git {' '.join(args)}: {exc.stderr.decode().strip()}") from exc


def resolve(ref: str) -> str:
    """The commit a ref names, or a clear error before anything runs."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except PlanError as exc:
        raise PlanError(f"cannot read git ref {ref!r}: not a commit in {ROOT}") from exc


def document_at(ref: str, commit: str, stack: str) -> Optional[dict]:
    """The stack as `ref` (resolved to `commit`) defines it: that commit's program and stack file, run by this
    plan.py in a child process (so its modules never mix with the working tree's). None when the commit has no
    such stack file."""
    # The project may sit in a subdirectory of its repository.
    prefix = git("rev-parse", "--show-prefix").decode().strip()
    archive = git("archive", "--format=tar", f"{commit}:{prefix}" if prefix else commit)
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        if not (Path(tmp) / f"Pulumi.{stack}.yaml").exists():
            return None
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stack", stack, "--format", "json",
                                "--root", tmp], capture_output=True, text=True,
                               env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        requirements = Path(tmp) / "requirements.txt"
        same_requirements = requirements.exists() and requirements.read_bytes() == (ROOT / "requirements.txt").read_bytes()
    if child.returncode not in (0, 1) or not child.stdout.strip():
        raise PlanError(f"the program at {ref} failed for stack {stack}:\n{child.stderr.strip()}")
    if not same_requirements:
        print(f"plan: requirements.txt differs at {ref}: both sides run with this virtualenv's providers, so what a "
              "provider upgrade itself changes does not show", file=sys.stderr)
    return json.loads(child.stdout)


# ---------------------------------------------------------------------------------------------------------
# Output

def show(value: Any, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def yaml_block(value: Any, indent: str) -> str:
    text = yaml.safe_dump(value, sort_keys=True, default_flow_style=False, width=100).rstrip()
    return "\n".join(indent + line for line in text.splitlines())


def text_report(doc: dict) -> str:
    by_urn = {r["urn"]: r for r in doc["resources"]}
    lines = [f"Stack {doc['stack']} (project {doc['project']}): {len(doc['resources'])} resources in "
             f"{len(doc['components'])} components, {len(doc['helmReleases'])} Helm releases; the longest chain "
             f"of waits has {max(r['step'] for r in doc['resources'])} steps.",
             f"A cold `up` is modelled at {doc['coldUp']['minutes']:g} minutes on its longest chain: "
             f"{' -> '.join(doc['coldUp']['chain']) or 'nothing slow'}.", "", "Components"]
    for c in doc["components"]:
        lines.append(f"  {c['type'].removeprefix(COMPONENT_PREFIX)} ({c['name']}): {c['resources']} resources; "
                     f"waits for {', '.join(c['waitsFor']) or 'nothing'}")
    lines += ["", "Resources in dependency order (step: type name [parent] <- what it waits for)"]
    for r in doc["resources"]:
        if r["type"].startswith(COMPONENT_PREFIX):
            continue
        parent = f" [{by_urn[r['parent']]['name']}]" if r["parent"] in by_urn else ""
        flags = "".join(f" {flag}" for flag, on in (("protected", r["protect"]), ("retained", r["retainOnDelete"]))
                        if on)
        waits = ", ".join(by_urn[u]["name"] for u in r["waitsFor"])
        lines.append(f"  {r['step']:2d}: {r['type']} {r['name']}{parent}{flags}" + (f" <- {waits}" if waits else ""))
    lines += ["", "Helm releases"]
    for release in doc["helmReleases"]:
        lines.append(f"  {release['release']} ({release['resource']}): chart {release['chart']} "
                     f"{release['version']} from {release['repository']}, namespace {release['namespace']}")
        lines.append(yaml_block(release["values"], "      "))
        for index, text in enumerate(release["valueYamlFiles"]):
            lines.append(f"    valueYamlFiles[{index}]:")
            lines.append("\n".join("      " + line for line in str(text).rstrip().splitlines()))
    lines += ["", policy_text(doc)]
    return "\n".join(lines)


def policy_text(doc: dict) -> str:
    policy = doc["policy"]
    violations = policy["violations"]
    lines = [f"Policy: {policy['rules']} rules, {len(violations)} violations"
             + (f" ({sum(v['enforcement'] == 'mandatory' for v in violations)} mandatory)" if violations else "")]
    for v in violations:
        lines.append(f"  [{v['enforcement']}] {v['policy']}: {short(v['urn'])}: {v['message']}")
    return "\n".join(lines)


def mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;")


def mermaid_report(doc: dict) -> str:
    """Components as nodes (with their Helm releases); an arrow from what is waited for to what waits."""
    ids = {c["name"]: f"c{index}" for index, c in enumerate(doc["components"])}
    charts = {r["resource"]: f"{r['chart']} {r['version']}" for r in doc["helmReleases"]}
    lines = ["flowchart TD"]
    for c in doc["components"]:
        label = f"{c['type'].removeprefix(COMPONENT_PREFIX)} ({c['name']})<br/>{c['resources']} resources"
        if c["helmReleases"]:
            label += "<br/>" + "<br/>".join(charts[r] for r in c["helmReleases"])
        lines.append(f'  {ids[c["name"]]}["{mermaid_label(label)}"]')
    for c in doc["components"]:
        for other in c["waitsFor"]:
            lines.append(f"  {ids[other]} --> {ids[c['name']]}")
    return "\n".join(lines)


# Inputs of the managed data stores whose change waits for the maintenance window unless applied at once (RDS's
# and ElastiCache's Modify* calls without ApplyImmediately; replica counts and AUTH tokens do not wait), and the
# input naming that window (an Aurora instance has its own, which AWS picks when none is set).
DEFERRED_INPUTS: dict[str, tuple[tuple[str, ...], Optional[str]]] = {
    "aws:rds/cluster:Cluster": (("engineVersion", "dbClusterParameterGroupName"), "preferredMaintenanceWindow"),
    "aws:rds/clusterInstance:ClusterInstance": (("instanceClass",), "preferredMaintenanceWindow"),
    "aws:rds/instance:Instance": (("instanceClass", "allocatedStorage", "storageType", "engineVersion"),
                                  "maintenanceWindow"),
    "aws:elasticache/replicationGroup:ReplicationGroup": (("nodeType", "engineVersion"), "maintenanceWindow"),
}


def deferred_to_maintenance(entry: dict) -> Optional[str]:
    """The window an update of these inputs of a managed data store waits for (applyImmediately off)."""
    if entry["type"] not in DEFERRED_INPUTS or entry["inputs"].get("applyImmediately"):
        return None
    window = DEFERRED_INPUTS[entry["type"]][1]
    return entry["inputs"].get(window) or "its own, which AWS picked"


def diff_text(diff: dict, ref: str) -> str:
    replaced = [c for c in diff["changed"] if c["action"] == "replace"]
    lines = [f"Stack {diff['stack']}, {ref} → working tree: {len(diff['added'])} to add, "
             f"{len(diff['changed']) - len(replaced)} to update, {len(replaced)} to replace, "
             f"{len(diff['removed'])} to remove."]
    for a in diff["added"]:
        lines.append(f"  + {a['type']} {a['name']}")
    for r in diff["removed"]:
        lines.append(f"  - {r['type']} {r['name']}" + (" (protected: the delete will fail)" if r["protected"] else ""))
    for c in diff["changed"]:
        mark = "+-" if c["action"] == "replace" else "~ "
        note = f" (moved from {short(c['movedFrom'])}, aliased)" if c["movedFrom"] else ""
        if c["action"] == "replace" and c["protected"]:
            note += " (protected: the replacement will fail)"
        lines.append(f"  {mark}{c['type']} {c['name']}{note}")
        for option in c["options"]:
            lines.append(f"      option {option} changes")
        for p in c["paths"]:
            why = f"   [replace: {p['replaces']}]" if p["replaces"] else ""
            why += f"   [refused: {p['refused']}]" if p.get("refused") else ""
            if c["action"] == "update" and c.get("maintenanceWindow") and p["path"] in DEFERRED_INPUTS[c["type"]][0]:
                why += f"   [waits for the maintenance window, {c['maintenanceWindow']}: managedApplyImmediately is off]"
            lines.append(f"      {p['path']}: {show(p['old'], 60)} → {show(p['new'], 60)}{why}")
    if not has_changes(diff):
        lines.append("  no change")
    lines.extend(f"WARNING: {warning}" for warning in diff.get("warnings", ()))
    return "\n".join(lines)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Iterable[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plan.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, help="stack file Pulumi.<stack>.yaml (local, staging, prod, …)")
    parser.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    parser.add_argument("--against", metavar="GIT_REF",
                        help="show what changes from this ref (branch, tag, commit) to the working tree")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # the program to plan
    return parser.parse_args(argv)


def main(argv: Optional[Iterable[str]] = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    if root != ROOT:
        # Planning another checkout (--against): its modules come first, never this tree's.
        sys.path.insert(0, str(root))
    else:
        sys.path.insert(0, str(ROOT))
    try:
        if args.against:
            if args.format == "mermaid":
                raise PlanError("--against prints a diff: use --format text or json")
            commit = resolve(args.against)
            with Progress(f"evaluating stack {args.stack} at {args.against} and in the working tree"):
                result: dict = {}

                def plan_ref():
                    try:
                        result["old"] = document_at(args.against, commit, args.stack)
                    except PlanError as exc:
                        result["error"] = exc

                # The ref's program runs in a child process while this one runs the working tree's.
                worker = threading.Thread(target=plan_ref)
                worker.start()
                new_doc = stack_document(args.stack, root)
                worker.join()
            if "error" in result:
                raise result["error"]
            diff = compare(result["old"], new_doc)
            diff["against"] = args.against
            diff["warnings"] = data_loss_warnings(diff, new_doc)
            diff["policy"] = new_doc["policy"]
            print(dumps(diff) if args.format == "json" else diff_text(diff, args.against) + "\n\n"
                  + policy_text(new_doc))
            code = 2 if has_changes(diff) else 0
        else:
            with Progress(f"evaluating stack {args.stack}"):
                doc = stack_document(args.stack, root)
            print({"json": dumps, "text": text_report, "mermaid": mermaid_report}[args.format](doc))
            code = 0
            new_doc = doc
    except PlanError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 1
    mandatory = [v for v in new_doc["policy"]["violations"] if v["enforcement"] == "mandatory"]
    if mandatory:
        print(f"plan: {len(mandatory)} mandatory policy violations", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
