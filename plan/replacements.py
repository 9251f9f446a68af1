"""The replacement tables: which input changes make a provider replace a resource (always, or in some cases),
which inputs are sets, which changes the cloud refuses, and which updates wait for a maintenance window.

docs/delivery.md, "Plan a change offline", lists what is covered.
"""

from __future__ import annotations

from typing import Any, Optional

from plan.common import HELM_RELEASE

# Inputs a provider cannot change in place: a change to any of them (or below them) replaces the resource.
# From the providers' schemas (ForceNew in terraform-provider-aws 6.x / terraform-provider-random, the
# forced-replacement tables of pulumi-kubernetes 4.x); docs/delivery.md, "Plan a change offline", lists what
# is covered.
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


def _version_key(version: Any) -> tuple:
    try:
        return tuple(int(part) for part in str(version).split("."))
    except ValueError:
        return ()


def refusal(entry: dict, path: str, old: Any, new: Any) -> Optional[str]:
    """Why the provider would accept this change in the plan but the cloud would refuse it."""
    if entry["type"] == "aws:eks/cluster:Cluster" and path == "version" and _version_key(new) < _version_key(old):
        return "EKS refuses to downgrade a control plane (a new cluster is the only way back)"
    if entry["type"] == "aws:eks/cluster:Cluster" and path == "version" \
            and len(_version_key(new)) == 2 and _version_key(new)[1] - _version_key(old)[1] > 1:
        return "EKS upgrades one minor version at a time"
    return None


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
