"""The Storage component: buckets, EFS, volumes, Pod Identity roles, backups, protection."""

from __future__ import annotations

import json

import pytest

from components import workloads as w
from components.storage import (
    BACKUP_WRITER_OBJECT_ACTIONS,
    BUCKET_ACTIONS,
    KMS_DATA_KEY_ACTIONS,
    LOG_WRITER_OBJECT_ACTIONS,
)
from mock_engine import run_program

BUCKET = "aws:s3/bucket:Bucket"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"


def by_bucket(run, type_: str, bucket_resource) -> dict:
    matches = [r for r in run.of_type(type_) if r.values["bucket"] == f"{bucket_resource.name}-id"]
    assert len(matches) == 1, (type_, bucket_resource.name)
    return matches[0].values


@pytest.mark.parametrize("purpose", ["logs", "backups"])
def test_buckets_are_encrypted_versioned_private_tls_only_and_protected(prod, purpose):
    bucket = prod.one(BUCKET, f"storage-{purpose}")
    assert bucket.values["forceDestroy"] is False
    assert bucket.protect and bucket.retain_on_delete
    key = prod.one("aws:kms/key:Key", "storage-data")
    assert key.protect and key.retain_on_delete and key.values["enableKeyRotation"] is True

    encryption = by_bucket(prod, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", bucket)
    default = encryption["rules"][0]["applyServerSideEncryptionByDefault"]
    assert default == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key.state["arn"]}
    assert by_bucket(prod, "aws:s3/bucketVersioning:BucketVersioning", bucket)["versioningConfiguration"] == \
        {"status": "Enabled"}
    block = by_bucket(prod, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    assert all(block[flag] is True for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                "restrictPublicBuckets"))
    policy = json.loads(by_bucket(prod, "aws:s3/bucketPolicy:BucketPolicy", bucket)["policy"])
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [bucket.state["arn"], f"{bucket.state['arn']}/*"]


def test_lifecycle_rules_follow_the_retention_settings():
    run = run_program("prod", overrides={"logRetentionDays": 14, "backupRetentionDays": 45})
    logs = by_bucket(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                     run.one(BUCKET, "storage-logs"))["rules"][0]
    assert logs["expiration"]["days"] == 14
    backups = by_bucket(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                        run.one(BUCKET, "storage-backups"))["rules"][0]
    assert "expiration" not in backups, "current backups are managed by the backup tool, never expired by S3"
    assert backups["noncurrentVersionExpiration"]["noncurrentDays"] == 45


def test_iam_policies_grant_only_the_listed_actions_on_the_listed_arns(prod):
    key_arn = prod.one("aws:kms/key:Key", "storage-data").state["arn"]
    for purpose, bucket_name, object_actions in (("airflow-logs", "storage-logs", LOG_WRITER_OBJECT_ACTIONS),
                                                 ("database-backups", "storage-backups", BACKUP_WRITER_OBJECT_ACTIONS)):
        bucket_arn = prod.one(BUCKET, bucket_name).state["arn"]
        document = json.loads(prod.one("aws:iam/rolePolicy:RolePolicy", f"storage-{purpose}").values["policy"])
        grants = {(statement["Effect"], action, resource)
                  for statement in document["Statement"]
                  for action in statement["Action"] for resource in statement["Resource"]}
        expected = ({("Allow", a, bucket_arn) for a in BUCKET_ACTIONS}
                    | {("Allow", a, f"{bucket_arn}/*") for a in object_actions}
                    | {("Allow", a, key_arn) for a in KMS_DATA_KEY_ACTIONS})
        assert grants == expected, purpose
        assert not any("*" in action for _, action, _ in grants)


def test_pod_identity_maps_each_service_account_to_its_own_bucket_only(prod):
    roles = {r.state["arn"]: r.name for r in prod.of_type("aws:iam/role:Role")}
    associations = {a.values["serviceAccount"]: a.values
                    for a in prod.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                    if a.name.startswith("storage-")}
    assert set(associations) == {*w.AIRFLOW_LOG_WRITERS, w.POSTGRES_SERVICE_ACCOUNT}
    for service_account, association in associations.items():
        assert association["namespace"] == w.AIRFLOW_NAMESPACE
        expected = "storage-database-backups" if service_account == w.POSTGRES_SERVICE_ACCOUNT else "storage-airflow-logs"
        assert roles[association["roleArn"]] == expected, service_account
    trust = json.loads(prod.one("aws:iam/role:Role", "storage-airflow-logs").values["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}


def test_efs_is_encrypted_mounted_in_every_private_subnet_and_admits_nfs_from_nodes_only(prod):
    file_system = prod.one("aws:efs/fileSystem:FileSystem", "storage-efs")
    assert file_system.values["encrypted"] is True
    assert file_system.values["kmsKeyId"] == prod.one("aws:kms/key:Key", "storage-data").state["arn"]
    assert file_system.protect and file_system.retain_on_delete
    private_subnets = {f"{s.name}-id" for s in prod.of_type("aws:ec2/subnet:Subnet") if "private" in s.name}
    mounted = {m.values["subnetId"] for m in prod.of_type("aws:efs/mountTarget:MountTarget")}
    assert mounted == private_subnets and len(mounted) == 3
    group = prod.one("aws:ec2/securityGroup:SecurityGroup", "storage-efs").values
    [rule] = group["ingress"]
    assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 2049, 2049)
    assert rule["securityGroups"] == ["sg-airflow-prod"], "only the cluster (node) security group"
    assert not rule.get("cidrBlocks")


def test_efs_is_backed_up_daily_with_the_retention_setting(prod):
    plan = prod.one("aws:backup/plan:Plan").values
    [rule] = plan["rules"]
    assert rule["schedule"].startswith("cron(0 3 * * ? *")
    assert rule["lifecycle"]["deleteAfter"] == 30
    selection = prod.one("aws:backup/selection:Selection").values
    assert selection["resources"] == [prod.one("aws:efs/fileSystem:FileSystem").state["arn"]]
    vault = prod.one("aws:backup/vault:Vault")
    assert vault.protect


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_dags_and_logs_claims(stack_runs, stack):
    run = stack_runs[stack]
    claims = {c.values["metadata"]["name"]: c for c in run.of_type(PVC)}
    # On AWS task logs go to S3: an EFS logs claim would be provisioned and never mounted.
    assert set(claims) == ({w.DAGS_PVC} if stack == "prod" else {w.DAGS_PVC, w.LOGS_PVC})
    for claim in claims.values():
        assert claim.values["metadata"]["namespace"] == w.AIRFLOW_NAMESPACE
        assert claim.protect and claim.retain_on_delete if stack == "prod" else not claim.protect
        spec = claim.values["spec"]
        if stack == "prod":
            assert spec["storageClassName"] == "efs-rwx"
            assert spec["accessModes"] == ["ReadWriteMany"]
        else:
            assert spec.get("storageClassName") is None, "local uses the cluster's default class"
    if stack == "prod":
        storage_class = run.one("kubernetes:storage.k8s.io/v1:StorageClass", "storage-efs").values
        assert storage_class["provisioner"] == "efs.csi.aws.com"
        assert storage_class["parameters"]["fileSystemId"] == "storage-efs-id"
        assert storage_class["reclaimPolicy"] == "Retain"


def test_local_has_namespaces_policies_secrets_and_claims_and_no_aws(local):
    assert local.one("airflow:platform:Security") and local.one("airflow:platform:Storage")
    assert local.of_type("kubernetes:core/v1:Namespace")
    assert len(local.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")) > 20
    secrets = {s.values["metadata"]["name"] for s in local.of_type("kubernetes:core/v1:Secret")}
    assert {w.FERNET_KEY_SECRET, w.POSTGRES_APP_USER_SECRET, w.REDIS_AUTH_SECRET} <= secrets
    assert len(local.of_type(PVC)) == 2
    assert not local.where(lambda r: r.type.startswith("aws:"))


# What holds data, and so is protected on a stack that protects (the policy pack's stateful types, which Storage
# creates; `pulumi destroy` keeps them).
PROTECTED_UNDER_STORAGE = {BUCKET, "aws:kms/key:Key", "aws:efs/fileSystem:FileSystem", "aws:backup/vault:Vault",
                           "aws:cloudwatch/logGroup:LogGroup", PVC}


def test_only_what_holds_data_under_storage_is_protected(prod):
    """Pulumi's SDK gives a child the protection of its parent (resource.py: opts.protect from the parent's
    `_protect`), so the component must not set that attribute: its roles, policies, Pod Identity associations,
    security groups and mount targets stay replaceable and deletable."""
    [storage] = prod.of_type("airflow:platform:Storage")
    parents = {r.urn: r.parent for r in prod.registrations}

    def under_storage(registration) -> bool:
        urn = registration.parent
        while urn:
            if urn == storage.urn:
                return True
            urn = parents.get(urn)
        return False
    descendants = prod.where(under_storage)
    protected = {r.type for r in descendants if r.protect}
    assert protected and protected <= PROTECTED_UNDER_STORAGE, protected - PROTECTED_UNDER_STORAGE
    for type_ in ("aws:iam/role:Role", "aws:eks/podIdentityAssociation:PodIdentityAssociation",
                  "aws:ec2/securityGroup:SecurityGroup", "aws:efs/mountTarget:MountTarget"):
        found = [r for r in descendants if r.type == type_]
        assert found and not any(r.protect for r in found), type_


def test_opting_out_of_protection_for_a_throwaway_stack():
    run = run_program("staging", overrides={"protectStatefulResources": False})
    for type_ in (BUCKET, "aws:efs/fileSystem:FileSystem", "aws:kms/key:Key", "aws:backup/vault:Vault", PVC):
        for registration in run.of_type(type_):
            assert not registration.protect and not registration.retain_on_delete, registration.name
    # A throwaway stack must be destroyable: its buckets always hold objects and versions, its vault recovery
    # points (issue: destroy failed with BucketNotEmpty).
    for registration in [*run.of_type(BUCKET), *run.of_type("aws:backup/vault:Vault")]:
        assert registration.values["forceDestroy"] is True, registration.name


COMPANIONS = ("aws:s3/bucketOwnershipControls:BucketOwnershipControls",
              "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
              "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketPolicy:BucketPolicy",
              "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "aws:backup/plan:Plan",
              "aws:backup/selection:Selection", "aws:kms/alias:Alias")


def test_what_configures_a_kept_resource_is_kept_with_it(prod):
    """A retained bucket whose versioning, public-access block or TLS-only policy were deleted would be a
    different bucket: suspended versioning, possibly public. The companions are retained with it."""
    for type_ in COMPANIONS:
        found = prod.of_type(type_)
        assert found, type_
        for registration in found:
            assert registration.retain_on_delete, registration.name
    for registration in [*prod.of_type(BUCKET), *prod.of_type("aws:backup/vault:Vault")]:
        assert registration.values["forceDestroy"] is False, "a protected stack never deletes objects"
    log_group = prod.one("aws:cloudwatch/logGroup:LogGroup", "cluster-control-plane")
    assert log_group.protect and log_group.retain_on_delete, "the control plane's audit trail"
    # A kept backup plan runs every night under its role: the role and its policies stay with it.
    role = next(r for r in prod.of_type("aws:iam/role:Role") if r.name == "storage-backup")
    assert role.retain_on_delete
    assert all(a.retain_on_delete for a in prod.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
               if a.name.startswith("storage-backup-"))
    throwaway = run_program("staging", overrides={"protectStatefulResources": False})
    for type_ in COMPANIONS:
        assert not any(r.retain_on_delete for r in throwaway.of_type(type_)), type_


def test_buckets_kms_and_efs_do_not_wait_for_the_cluster(prod):
    eks = prod.one("aws:eks/cluster:Cluster")
    for registration in (*prod.of_type(BUCKET), prod.one("aws:kms/key:Key", "storage-data"),
                         prod.one("aws:efs/fileSystem:FileSystem")):
        assert not prod.depends_transitively(registration, eks), registration.name


def test_aws_names_belong_to_the_project_and_the_stack():
    # Two projects with a `prod` stack in one account: vault, plan, aliases, bucket prefixes and the cluster
    # must not collide (a second `airflow-prod` vault or alias is refused by AWS).
    runs = {project: run_program("prod", overrides={"clusterName": None}, project=project)
            for project in ("airflow", "airflow-ml")}
    names = {}
    for project, run in runs.items():
        names[project] = [
            run.one("aws:backup/vault:Vault").values["name"],
            run.one("aws:backup/plan:Plan").values["name"],
            *sorted(alias.values["name"] for alias in run.of_type("aws:kms/alias:Alias")),
            *sorted(bucket.values["bucketPrefix"] for bucket in run.of_type(BUCKET)),
            run.one("aws:eks/cluster:Cluster").values["name"],
        ]
        assert all(f"{project}-prod" in name for name in names[project]), names[project]
    assert not set(names["airflow"]) & set(names["airflow-ml"])


def test_efs_mount_targets_are_named_after_their_zone(prod):
    # EFS allows one mount target per zone: named by position, dropping a zone would move the next one into
    # a zone that already has one. Stacks created with zones a-c named them by index, which the aliases keep.
    targets = {t.name: t for t in prod.of_type("aws:efs/mountTarget:MountTarget")}
    assert set(targets) == {"storage-efs-eu-west-1a", "storage-efs-eu-west-1b", "storage-efs-eu-west-1c"}
    assert {target.name: target.alias_names for target in targets.values()} == {
        f"storage-efs-eu-west-1{letter}": [f"storage-efs-{index}"] for index, letter in enumerate("abc")}
