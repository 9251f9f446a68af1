"""Storage: the S3 buckets for task logs and database backups, EFS for DAGs and shared logs, the PVCs,
the Pod Identity roles scoped to exactly those ARNs, and AWS Backup for what lives only on EFS.

Everything stateful is protected from deletion and retained on `pulumi destroy` unless the stack sets
`protectStatefulResources: false`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components import workloads as w
from components.handles import ClusterHandle, StorageHandle
from components.iam import POD_IDENTITY_TRUST_POLICY, managed_policy_arn, service_trust_policy
from components.secrets_backend import secrets_read_policy
from components.storage.settings import StorageSettings
from components.zones import zone_index

EFS_STORAGE_CLASS = "efs-rwx"

# Exactly what each workload may do, and nothing else.
LOG_WRITER_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
BACKUP_WRITER_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation"]
KMS_DATA_KEY_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]


def bucket_access_policy(bucket_arn: str, key_arn: str, object_actions: list[str]) -> str:
    """Read/write on one bucket's objects through one KMS key."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Bucket", "Effect": "Allow", "Action": BUCKET_ACTIONS, "Resource": [bucket_arn]},
            {"Sid": "Objects", "Effect": "Allow", "Action": object_actions, "Resource": [f"{bucket_arn}/*"]},
            {"Sid": "Encryption", "Effect": "Allow", "Action": KMS_DATA_KEY_ACTIONS, "Resource": [key_arn]},
        ],
    })


def tls_only_bucket_policy(bucket_arn: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    })


@dataclass
class StorageArgs:
    settings: StorageSettings
    cluster: ClusterHandle
    # The Airflow namespace (Security's): the PVCs live there.
    namespace: pulumi.Output[str]


class Storage(pulumi.ComponentResource):
    """Buckets, file system, volumes and the roles that may use them; `handle` is what their users take."""

    handle: StorageHandle

    logs_bucket_name: Optional[pulumi.Output[str]]
    # CloudNativePG's backups (None with a managed database engine, which keeps its own).
    backups_bucket_name: Optional[pulumi.Output[str]]
    # The stack's KMS key: buckets, EFS, and the managed database and broker (None locally).
    kms_key_arn: Optional[pulumi.Output[str]]
    file_system_id: Optional[pulumi.Output[str]]
    dags_claim_name: pulumi.Output[str]
    # Locally only: on AWS task logs go to the logs bucket and no pod would mount an EFS logs volume.
    logs_claim_name: Optional[pulumi.Output[str]]
    # What must exist before a workload can use its bucket (role policy and Pod Identity associations).
    airflow_access: list[pulumi.Resource]
    database_access: list[pulumi.Resource]

    def __init__(self, name: str, args: StorageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Storage", name, None, opts)
        self._settings = args.settings
        protect = args.settings.protect_stateful_resources
        self._protect_data = protect
        self._keep = pulumi.ResourceOptions(protect=protect, retain_on_delete=protect)
        # What configures a kept resource is kept with it: deleting BucketVersioning would suspend versioning,
        # deleting the public-access block or the TLS-only policy would open a retained bucket.
        self._keep_with = pulumi.ResourceOptions(retain_on_delete=protect)
        self.logs_bucket_name = self.backups_bucket_name = self.file_system_id = self.kms_key_arn = None
        self.airflow_access, self.database_access = [], []

        storage_class: Optional[str] = None
        access_mode = "ReadWriteOnce"  # a laptop cluster's default class (local-path, hostpath) is single-node
        if args.settings.is_aws:
            self._aws = pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider)
            if args.cluster.partition is None:
                raise ValueError("Storage: target=aws needs the AWS partition")
            self._partition = args.cluster.partition
            # Aurora/RDS and ElastiCache leave a final snapshot encrypted with this key when they are deleted, a
            # throwaway stack's included: the key stays with the snapshots (delete it after them).
            final_snapshots = args.settings.managed_database or args.settings.managed_broker
            key = aws.kms.Key(
                f"{name}-data", description=f"Airflow {args.cluster.name_prefix}: task logs, database backups, EFS",
                enable_key_rotation=True, deletion_window_in_days=30,
                opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                    protect=protect, retain_on_delete=protect or final_snapshots)))
            aws.kms.Alias(f"{name}-data", name=f"alias/{args.cluster.name_prefix}-data", target_key_id=key.key_id,
                          opts=pulumi.ResourceOptions.merge(self._aws, self._keep_with))
            self.kms_key_arn = key.arn
            logs = self._bucket(name, w.LOGS_BUCKET, args.cluster.name_prefix, key, expire_current_after_days=args.settings.log_retention_days,
                                noncurrent_days=7)
            self.logs_bucket_name = logs.bucket
            airflow_role, self.airflow_access = self._pod_identity_role(
                name, "airflow-logs", logs, key, LOG_WRITER_OBJECT_ACTIONS, args.cluster.cluster_name,
                w.AIRFLOW_LOG_WRITERS)
            if args.settings.secrets_backend == "aws-secrets-manager":
                self.airflow_access.append(self._secrets_access(name, args, airflow_role))
            # Aurora and RDS keep their own backups (automated, point in time); CloudNativePG's go to S3.
            if not args.settings.managed_database:
                backups = self._bucket(name, w.BACKUPS_BUCKET, args.cluster.name_prefix, key, expire_current_after_days=None,
                                       noncurrent_days=args.settings.backup_retention_days)
                self.backups_bucket_name = backups.bucket
                _, self.database_access = self._pod_identity_role(
                    name, "database-backups", backups, key, BACKUP_WRITER_OBJECT_ACTIONS, args.cluster.cluster_name,
                    (w.POSTGRES_SERVICE_ACCOUNT,))
            file_system = self._file_system(name, args, key)
            self.file_system_id = file_system.id
            self._efs_backups(name, args.cluster.name_prefix, file_system, key)
            storage_class = EFS_STORAGE_CLASS
            access_mode = "ReadWriteMany"
            k8s.storage.v1.StorageClass(
                f"{name}-efs",
                metadata={"name": EFS_STORAGE_CLASS},
                provisioner="efs.csi.aws.com",
                # One access point per volume, owned by Airflow's uid so the pods need no root.
                parameters={"provisioningMode": "efs-ap", "fileSystemId": file_system.id, "directoryPerms": "770",
                            "uid": "50000", "gid": "0", "basePath": "/airflow"},
                reclaim_policy="Retain" if protect else "Delete",
                opts=pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider))

        self.dags_claim_name = self._claim(name, w.DAGS_PVC, args, storage_class, access_mode,
                                           args.settings.dags_volume_size_gib)
        self.logs_claim_name = None
        if not args.settings.is_aws:
            self.logs_claim_name = self._claim(name, w.LOGS_PVC, args, storage_class, access_mode,
                                               args.settings.logs_volume_size_gib)
        self.handle = StorageHandle(
            dags_claim_name=self.dags_claim_name, logs_claim_name=self.logs_claim_name,
            logs_bucket_name=self.logs_bucket_name, backups_bucket_name=self.backups_bucket_name,
            backup_retention_days=args.settings.backup_retention_days, kms_key_arn=self.kms_key_arn,
            airflow_access=tuple(self.airflow_access), database_access=tuple(self.database_access), ready=self)
        self.register_outputs({
            "logs_bucket_name": self.logs_bucket_name,
            "backups_bucket_name": self.backups_bucket_name,
            "file_system_id": self.file_system_id,
        })

    def _bucket(self, name: str, purpose: str, name_prefix: str, key: aws.kms.Key,
                expire_current_after_days: Optional[int], noncurrent_days: int) -> aws.s3.Bucket:
        bucket = aws.s3.Bucket(
            f"{name}-{purpose}", bucket_prefix=f"{name_prefix}-{purpose}-",
            # A throwaway stack's buckets are never empty (WAL from the first minute, task logs, every version):
            # without this its `destroy` fails with BucketNotEmpty.
            force_destroy=not self._protect_data,
            opts=pulumi.ResourceOptions.merge(self._aws, self._keep))
        companion = pulumi.ResourceOptions.merge(self._aws, self._keep_with)
        aws.s3.BucketOwnershipControls(f"{name}-{purpose}", bucket=bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=companion)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-{purpose}", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=companion)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-{purpose}", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": key.arn},
                    "bucket_key_enabled": True}],
            opts=companion)
        versioning = aws.s3.BucketVersioning(f"{name}-{purpose}", bucket=bucket.id,
                                             versioning_configuration={"status": "Enabled"}, opts=companion)
        aws.s3.BucketPolicy(f"{name}-{purpose}", bucket=bucket.id,
                            policy=bucket.arn.apply(tls_only_bucket_policy), opts=companion)
        rule: dict = {
            "id": f"{purpose}-retention",
            "status": "Enabled",
            # An explicit empty prefix: the rule covers every object (an absent filter is deprecated).
            "filter": {"prefix": ""},
            "noncurrent_version_expiration": {"noncurrent_days": noncurrent_days},
            "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
        }
        if expire_current_after_days is not None:
            rule["expiration"] = {"days": expire_current_after_days}
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-{purpose}", bucket=bucket.id, rules=[rule],
            # Lifecycle rules on noncurrent versions need versioning switched on first.
            opts=pulumi.ResourceOptions.merge(companion, pulumi.ResourceOptions(depends_on=[versioning])))
        return bucket

    def _pod_identity_role(self, name: str, purpose: str, bucket: aws.s3.Bucket, key: aws.kms.Key,
                           object_actions: list[str], cluster_name: pulumi.Input[str],
                           service_accounts: tuple[str, ...]) -> tuple[aws.iam.Role, list[pulumi.Resource]]:
        """A role that may use one bucket, and what must exist before its service accounts can use it."""
        role = aws.iam.Role(f"{name}-{purpose}", assume_role_policy=POD_IDENTITY_TRUST_POLICY, opts=self._aws)
        policy = aws.iam.RolePolicy(
            f"{name}-{purpose}", role=role.id,
            policy=pulumi.Output.all(bucket.arn, key.arn).apply(
                lambda arns: bucket_access_policy(arns[0], arns[1], object_actions)),
            opts=self._aws)
        access: list[pulumi.Resource] = [policy]
        for service_account in service_accounts:
            access.append(aws.eks.PodIdentityAssociation(
                f"{name}-{service_account}", cluster_name=cluster_name, namespace=w.AIRFLOW_NAMESPACE,
                service_account=service_account, role_arn=role.arn, opts=self._aws))
        return role, access

    def _secrets_access(self, name: str, args: StorageArgs, role: aws.iam.Role) -> aws.iam.RolePolicy:
        """The Airflow pods' role may also read the stack's connections and variables (one role per service
        account: Pod Identity associates exactly one)."""
        if args.cluster.account_id is None:
            raise ValueError("Storage: the secrets backend needs the AWS account")
        policy = secrets_read_policy(self._partition, args.settings.region, args.cluster.account_id,
                                     args.settings.secrets_prefix(args.cluster.name_prefix))
        return aws.iam.RolePolicy(f"{name}-airflow-secrets", role=role.id, policy=policy, opts=self._aws)

    def _file_system(self, name: str, args: StorageArgs, key: aws.kms.Key) -> aws.efs.FileSystem:
        file_system = aws.efs.FileSystem(
            f"{name}-efs", encrypted=True, kms_key_id=key.arn, performance_mode="generalPurpose",
            throughput_mode="elastic",
            lifecycle_policies=[{"transition_to_ia": "AFTER_30_DAYS"},
                                {"transition_to_primary_storage_class": "AFTER_1_ACCESS"}],
            tags={"Name": args.cluster.name_prefix},
            opts=pulumi.ResourceOptions.merge(self._aws, self._keep))
        security_group = aws.ec2.SecurityGroup(
            f"{name}-efs", vpc_id=args.cluster.vpc_id, description="NFS to the Airflow EFS file system, from the nodes only",
            ingress=[{"protocol": "tcp", "from_port": 2049, "to_port": 2049,
                      "security_groups": [args.cluster.cluster_security_group_id], "description": "NFS from EKS nodes"}],
            egress=[], opts=self._aws)
        # Named after their zone, so adding or removing a zone touches only its own mount target (EFS allows
        # one per zone). Stacks created with zones a-c named them by position, which was the zone's letter.
        for zone, subnet_id in zip(args.cluster.zones, args.cluster.private_subnet_ids, strict=True):
            aws.efs.MountTarget(
                f"{name}-efs-{zone}", file_system_id=file_system.id, subnet_id=subnet_id,
                security_groups=[security_group.id],
                opts=pulumi.ResourceOptions.merge(self._aws, pulumi.ResourceOptions(
                    aliases=[pulumi.Alias(name=f"{name}-efs-{zone_index(zone)}")])))
        return file_system

    def _efs_backups(self, name: str, name_prefix: str, file_system: aws.efs.FileSystem, key: aws.kms.Key) -> None:
        retention = self._settings.backup_retention_days
        vault = aws.backup.Vault(f"{name}-efs", name=name_prefix, kms_key_arn=key.arn,
                                 # A throwaway stack's vault holds recovery points: without this, `destroy` fails.
                                 force_destroy=not self._protect_data,
                                 opts=pulumi.ResourceOptions.merge(self._aws, self._keep))
        companion = pulumi.ResourceOptions.merge(self._aws, self._keep_with)
        plan = aws.backup.Plan(
            f"{name}-efs", name=f"{name_prefix}-efs-daily",
            rules=[{"rule_name": "daily", "target_vault_name": vault.name, "schedule": "cron(0 3 * * ? *)",
                    "start_window": 60, "completion_window": 360,
                    "lifecycle": {"delete_after": retention}}],
            opts=companion)
        # Kept with the plan it runs: a retained plan whose role is gone would fail every night.
        role = aws.iam.Role(f"{name}-backup", assume_role_policy=service_trust_policy("backup.amazonaws.com"),
                            opts=companion)
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-backup-{policy.rsplit('/', 1)[-1]}", role=role.name,
                                         policy_arn=managed_policy_arn(self._partition, policy), opts=companion)
            for policy in ("service-role/AWSBackupServiceRolePolicyForBackup",
                           "service-role/AWSBackupServiceRolePolicyForRestores")]
        aws.backup.Selection(f"{name}-efs", name="efs", plan_id=plan.id, iam_role_arn=role.arn,
                             resources=[file_system.arn],
                             opts=pulumi.ResourceOptions.merge(companion, pulumi.ResourceOptions(
                                 depends_on=attachments)))

    def _claim(self, name: str, claim_name: str, args: StorageArgs, storage_class: Optional[str],
               access_mode: str, size_gib: int) -> pulumi.Output[str]:
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-{claim_name}",
            metadata={"name": claim_name, "namespace": args.namespace,
                      # The classes bind on first use (WaitForFirstConsumer): waiting for Bound would hang.
                      "annotations": {"pulumi.com/skipAwait": "true"}},
            spec={"accessModes": [access_mode], "storageClassName": storage_class,
                  "resources": {"requests": {"storage": f"{size_gib}Gi"}}},
            opts=pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider), self._keep),
        )
        return claim.metadata.name
