"""The policy pack (policy/): every stack file passes it, and every rule fails on a deliberately bad
resource — the stack's own resource with one thing changed — and passes on the original."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

import plan
from mock_engine import REPO, STACKS, run_program
from policy import rules

POLICY_PYTHON = os.environ.get("POLICY_PYTHON", str(REPO / "policy" / "venv" / "bin" / "python"))


def graph(run) -> list[rules.Resource]:
    return plan.policy_resources(run)


def mandatory(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["enforcement"] == "mandatory"]


# prod-managed runs Aurora; the same stack file with RDS PostgreSQL instead is a run of its own.
MANAGED = "prod-managed"
MANAGED_RDS = "prod-managed (databaseEngine: rds)"
STACK_FILE = {MANAGED_RDS: MANAGED}


@pytest.fixture(scope="module")
def runs(stack_runs):
    return {**stack_runs, MANAGED_RDS: run_program(MANAGED, overrides={"databaseEngine": "rds"})}


@pytest.mark.parametrize("stack", [*STACKS, MANAGED_RDS])
def test_every_stack_file_passes_the_pack(runs, stack):
    violations = rules.evaluate(graph(runs[stack]), plan.policy_enforcement(STACK_FILE.get(stack, stack), REPO))
    assert mandatory(violations) == []


def test_the_local_stack_passes_because_its_config_lowers_one_rule(local):
    """`local` leaves its volumes unprotected on purpose (nothing is precious on a laptop): its pack config
    makes that rule advisory. Without the config the pack would stop it."""
    assert json.loads((REPO / "policy" / "config" / "local.json").read_text()) == {
        "stateful-resources-protected": {"enforcementLevel": "advisory"}}
    strict = mandatory(rules.evaluate(graph(local)))
    assert {v["policy"] for v in strict} == {"stateful-resources-protected"}
    assert {v["urn"].rsplit("::", 1)[1] for v in strict} >= {"database-cluster", "storage-airflow-logs-pvc"}


def test_prod_without_image_digests_gets_a_warning(prod):
    advisory = [v for v in rules.evaluate(graph(prod)) if v["policy"] == "airflow-images-pinned-by-digest"]
    assert advisory and all(v["enforcement"] == "advisory" for v in advisory)


# ---------------------------------------------------------------------------------------------------------
# Each rule, failing: (rule, what is wrong, resource type, resource name, change to its props or options).

def set_path(path: str, value):
    def change(props: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            props = props.setdefault(key, {}) if isinstance(props, dict) else props[int(key)]
        if isinstance(props, list):
            props[int(last)] = value
        elif value is DELETE:
            props.pop(last, None)
        else:
            props[last] = value
    return change


DELETE = object()


def set_parameter(name: str, value):
    """A parameter group's parameter `name` set to `value`."""
    def change(props: dict) -> None:
        [parameter] = [p for p in props["parameters"] if p["name"] == name]
        parameter["value"] = value
    return change


SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
RELEASE = "kubernetes:helm.sh/v3:Release"
CLUSTER = "aws:eks/cluster:Cluster"
AURORA = "aws:rds/cluster:Cluster"
AURORA_INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
AURORA_PARAMETERS = "aws:rds/clusterParameterGroup:ClusterParameterGroup"
RDS = "aws:rds/instance:Instance"
RDS_PARAMETERS = "aws:rds/parameterGroup:ParameterGroup"
ELASTICACHE = "aws:elasticache/replicationGroup:ReplicationGroup"

BAD: list[tuple[str, str, str, str, Callable]] = [
    ("s3-bucket-kms-encryption", "AES256 instead of KMS", SSE, "storage-logs",
     set_path("rules.0.applyServerSideEncryptionByDefault.sseAlgorithm", "AES256")),
    ("s3-bucket-versioning", "versioning suspended", "aws:s3/bucketVersioning:BucketVersioning", "storage-backups",
     set_path("versioningConfiguration.status", "Suspended")),
    ("s3-bucket-public-access-block", "public policies allowed",
     "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "storage-logs", set_path("blockPublicPolicy", False)),
    ("s3-bucket-tls-only", "policy without the TLS deny", "aws:s3/bucketPolicy:BucketPolicy", "storage-logs",
     set_path("policy", json.dumps({"Version": "2012-10-17", "Statement": []}))),
    ("eks-secrets-encryption", "no envelope encryption", CLUSTER, "cluster-eks", set_path("encryptionConfig", DELETE)),
    ("eks-api-authentication-mode", "aws-auth ConfigMap too", CLUSTER, "cluster-eks",
     set_path("accessConfig.authenticationMode", "API_AND_CONFIG_MAP")),
    ("eks-control-plane-logs", "API log only", CLUSTER, "cluster-eks", set_path("enabledClusterLogTypes", ["api"])),
    ("eks-endpoint-not-public", "endpoint open to the internet", CLUSTER, "cluster-eks",
     set_path("vpcConfig.publicAccessCidrs", ["203.0.113.0/24", "0.0.0.0/0"])),
    ("eks-endpoint-not-public", "public endpoint without CIDRs", CLUSTER, "cluster-eks",
     set_path("vpcConfig.publicAccessCidrs", DELETE)),
    ("launch-template-imdsv2", "IMDSv1 allowed", "aws:ec2/launchTemplate:LaunchTemplate", "cluster-node",
     set_path("metadataOptions.httpTokens", "optional")),
    ("launch-template-imdsv2", "node group without launch template", "aws:eks/nodeGroup:NodeGroup", "cluster-system",
     set_path("launchTemplate", DELETE)),
    ("helm-release-pinned", "version range", RELEASE, "broker-redis-ha", set_path("version", "^4.39")),
    ("helm-release-pinned", "chart from another repository", RELEASE, "airflow-keda",
     set_path("repositoryOpts.repo", "https://charts.example.com")),
    ("helm-release-pinned", "chart not in the list", RELEASE, "observability-kube-prometheus-stack",
     set_path("chart", "grafana")),
    ("airflow-release-hardened", "migration as a Helm hook", RELEASE, "airflow-airflow",
     set_path("values.migrateDatabaseJob.useHelmHooks", True)),
    ("airflow-release-hardened", "no NetworkPolicies", RELEASE, "airflow-airflow",
     set_path("values.networkPolicies.enabled", False)),
    ("airflow-release-hardened", "root allowed", RELEASE, "airflow-airflow",
     set_path("values.securityContexts.pod.runAsNonRoot", False)),
    ("airflow-release-hardened", "no seccomp profile", RELEASE, "airflow-airflow",
     set_path("values.securityContexts.pod.seccompProfile", DELETE)),
    ("airflow-release-no-secret-values", "Fernet key in the values", RELEASE, "airflow-airflow",
     set_path("values.fernetKey", "bm90LWEtcmVhbC1rZXk=")),
    ("airflow-release-no-secret-values", "connection URL in airflow.cfg", RELEASE, "airflow-airflow",
     set_path("values.config.database.sql_alchemy_conn", "postgresql://airflow:hunter2@db/airflow")),
    ("airflow-release-no-secret-values", "password in an env var", RELEASE, "airflow-airflow",
     set_path("values.env", [{"name": "AIRFLOW__SMTP__SMTP_PASSWORD", "value": "hunter2"}])),
    ("stateful-resources-protected", "file system unprotected", "aws:efs/fileSystem:FileSystem", "storage-efs",
     "unprotect"),
    ("security-group-no-open-ingress", "NFS from anywhere", "aws:ec2/securityGroup:SecurityGroup", "storage-efs",
     set_path("ingress.0.cidrBlocks", ["0.0.0.0/0"])),
    ("iam-no-wildcard-admin", "every action on every resource", "aws:iam/rolePolicy:RolePolicy", "storage-airflow-logs",
     set_path("policy", json.dumps({"Version": "2012-10-17", "Statement": [
         {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))),
    ("iam-no-wildcard-admin", "AdministratorAccess attached", "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
     "cluster-ebs-csi", set_path("policyArn", "arn:aws:iam::aws:policy/AdministratorAccess")),
]

# The managed data stores are not in prod: (stack, rule, what is wrong, type, name, change) on prod-managed (Aurora,
# ElastiCache) or on prod-managed run with RDS.
BAD_MANAGED: list[tuple[str, str, str, str, str, Callable]] = [
    (MANAGED, "managed-database-encrypted-and-private", "Aurora unencrypted", AURORA, "database-aurora",
     set_path("storageEncrypted", False)),
    (MANAGED, "managed-database-encrypted-and-private", "Aurora on the AWS-managed key", AURORA, "database-aurora",
     set_path("kmsKeyId", DELETE)),
    (MANAGED, "managed-database-encrypted-and-private", "Aurora keeps one day of backups", AURORA, "database-aurora",
     set_path("backupRetentionPeriod", 1)),
    (MANAGED, "managed-database-encrypted-and-private", "Aurora instance with a public address", AURORA_INSTANCE,
     "database-aurora-0", set_path("publiclyAccessible", True)),
    (MANAGED_RDS, "managed-database-encrypted-and-private", "RDS unencrypted", RDS, "database-rds",
     set_path("storageEncrypted", DELETE)),
    (MANAGED_RDS, "managed-database-encrypted-and-private", "RDS without backups", RDS, "database-rds",
     set_path("backupRetentionPeriod", DELETE)),
    (MANAGED_RDS, "managed-database-encrypted-and-private", "RDS with a public address", RDS, "database-rds",
     set_path("publiclyAccessible", True)),
    (MANAGED, "managed-database-tls-only", "Aurora's parameter group allows plain connections", AURORA_PARAMETERS,
     "database-metadata", set_parameter("rds.force_ssl", "0")),
    (MANAGED, "managed-database-tls-only", "Aurora on the engine's default parameter group", AURORA, "database-aurora",
     set_path("dbClusterParameterGroupName", DELETE)),
    (MANAGED_RDS, "managed-database-tls-only", "RDS parameter group without rds.force_ssl", RDS_PARAMETERS,
     "database-metadata", set_path("parameters", [{"name": "log_min_duration_statement", "value": "1000"}])),
    (MANAGED_RDS, "managed-database-tls-only", "RDS on a parameter group not in the stack", RDS, "database-rds",
     set_path("parameterGroupName", "default.postgres17")),
    (MANAGED, "managed-cache-encrypted", "unencrypted at rest", ELASTICACHE, "broker-elasticache",
     set_path("atRestEncryptionEnabled", False)),
    (MANAGED, "managed-cache-encrypted", "no TLS", ELASTICACHE, "broker-elasticache",
     set_path("transitEncryptionEnabled", False)),
    (MANAGED, "managed-cache-encrypted", "TLS preferred, not required", ELASTICACHE, "broker-elasticache",
     set_path("transitEncryptionMode", "preferred")),
    (MANAGED, "managed-cache-encrypted", "TLS mode left out", ELASTICACHE, "broker-elasticache",
     set_path("transitEncryptionMode", DELETE)),
    (MANAGED, "managed-cache-encrypted", "no AUTH token", ELASTICACHE, "broker-elasticache",
     set_path("authToken", DELETE)),
    (MANAGED, "managed-cache-encrypted", "no automatic failover", ELASTICACHE, "broker-elasticache",
     set_path("automaticFailoverEnabled", False)),
    (MANAGED, "managed-cache-encrypted", "one zone", ELASTICACHE, "broker-elasticache",
     set_path("multiAzEnabled", DELETE)),
]
CASES = [("prod", *case) for case in BAD] + BAD_MANAGED


def spoil(resources: list[rules.Resource], type_: str, name: str, change) -> tuple[list[rules.Resource], str]:
    target = next(r for r in resources if r.type == type_ and r.name == name)
    if change == "unprotect":
        bad = dataclasses.replace(target, protect=False)
    else:
        props = copy.deepcopy(dict(target.props))
        change(props)
        bad = dataclasses.replace(target, props=props)
    return [bad if r is target else r for r in resources], target.urn


def reported(resources: list[rules.Resource], urn: str) -> str:
    """Stack rules report what lost its protection: the bucket of an S3 configuration, the database of a
    parameter group (the input it names the group by came from it)."""
    resource = next(r for r in resources if r.urn == urn)
    if resource.type in {group for _, group in rules.PARAMETER_GROUPS.values()}:
        return next(r.urn for r in resources if r.type in rules.PARAMETER_GROUPS
                    and urn in r.property_dependencies.get(rules.PARAMETER_GROUPS[r.type][0], []))
    return (resource.property_dependencies.get("bucket") or [urn])[0]


@pytest.mark.parametrize("stack, rule, wrong, type_, name, change", CASES,
                         ids=[f"{c[1]}: {c[2]}" + ("" if c[0] == "prod" else f" ({c[0]})") for c in CASES])
def test_rule_fails_on_a_bad_resource_and_passes_on_the_stacks(runs, stack, rule, wrong, type_, name, change):
    resources = graph(runs[stack])
    bad, urn = spoil(resources, type_, name, change)
    expected_urn = reported(resources, urn)
    before = [v for v in rules.evaluate(resources) if v["policy"] == rule and v["urn"] == expected_urn]
    after = [v for v in rules.evaluate(bad) if v["policy"] == rule and v["urn"] == expected_urn]
    assert before == []
    assert after, f"{rule} did not catch: {wrong}"
    assert all(v["enforcement"] == "mandatory" for v in after)


def test_every_rule_has_a_failing_case():
    mandatory_rules = {r.name for r in rules.RULES if r.mandatory}
    assert {case[1] for case in CASES} == mandatory_rules


def test_open_ingress_is_allowed_on_the_load_balancer_ports_only():
    def group(port, cidr="0.0.0.0/0"):
        return rules.Resource("aws:ec2/securityGroup:SecurityGroup", "alb", "urn:alb", {
            "ingress": [{"protocol": "tcp", "fromPort": port, "toPort": port, "cidrBlocks": [cidr]}]})
    assert list(rules.security_group_no_open_ingress(group(443))) == []
    assert list(rules.security_group_no_open_ingress(group(80))) == []
    assert list(rules.security_group_no_open_ingress(group(22)))
    assert list(rules.security_group_no_open_ingress(group(22, "::/0")))
    assert list(rules.security_group_no_open_ingress(group(22, "10.0.0.0/8"))) == []


def test_digest_pins_silence_the_warning(prod):
    release = next(r for r in graph(prod) if r.name == "airflow-airflow")
    digest = "@sha256:" + "a" * 64
    values = copy.deepcopy(dict(release.props["values"]))
    values["defaultAirflowTag"] += digest
    values["images"]["statsd"]["tag"] += digest
    pinned = dataclasses.replace(release, props={**release.props, "values": values})
    assert list(rules.airflow_images_pinned_by_digest(release))
    assert list(rules.airflow_images_pinned_by_digest(pinned)) == []


# ---------------------------------------------------------------------------------------------------------
# The pack itself, through pulumi-policy (its own virtualenv: `make test` builds policy/venv).

def as_json(resources: list[rules.Resource]) -> list[dict]:
    return [{"type": r.type, "name": r.name, "urn": r.urn, "props": r.props, "protect": r.protect,
             "propertyDependencies": dict(r.property_dependencies)} for r in resources]


def drive_pack(tmp_path: Path, resources: list) -> dict:
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(resources))
    # The pack's modules from policy/, as `pulumi preview --policy-pack policy` imports them (-P: not the
    # driver's own directory).
    done = subprocess.run([POLICY_PYTHON, "-P", str(REPO / "tests" / "support" / "policy_driver.py"), str(path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "policy")})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("stack", ["prod", MANAGED, MANAGED_RDS])
def test_the_pack_reports_through_pulumi_policy_what_the_rules_find(runs, stack, tmp_path):
    """Every bad case of a stack at once, through pulumi-policy's argument classes and unknown-checking proxy:
    the pack reports exactly the violations the plain functions find, with the levels `python -m plan` shows."""
    resources = graph(runs[stack])
    cases = [case for case in CASES if case[0] == stack]
    for _, _, _, type_, name, change in cases:
        resources, _ = spoil(resources, type_, name, change)
    result = drive_pack(tmp_path, as_json(resources))
    assert result["policies"] == [r.name for r in rules.RULES]
    expected = {(v["policy"], v["urn"], v["message"]) for v in rules.evaluate(resources)}
    found = {(v["policy"], v["urn"], v["message"]) for v in result["violations"]}
    assert found == expected
    assert {v[0] for v in found} >= {case[1] for case in cases}


def test_a_value_preview_cannot_know_skips_the_rule_instead_of_failing_it(prod, tmp_path):
    """pulumi-policy's marker of an unknown string: the rule stops at it (the analyzer skips the policy)."""
    unknown_string = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    resources = graph(prod)
    resources, urn = spoil(resources, "aws:ec2/launchTemplate:LaunchTemplate", "cluster-node",
                           set_path("metadataOptions.httpTokens", unknown_string))
    result = drive_pack(tmp_path, as_json(resources))
    found = [v for v in result["violations"] if v["urn"] == urn]
    assert found == [{"policy": "launch-template-imdsv2", "urn": urn, "unknown": "metadataOptions.httpTokens"}]


def test_one_bucket_a_preview_cannot_judge_does_not_hide_the_others(prod, tmp_path):
    """A pull request that recreates the logs bucket (its policy is unknown in preview), adds versioning named
    by an unknown bucket name (no dependency), suspends the backups bucket's versioning and opens its public
    access: what can be judged is reported, and the rules that skipped a bucket say so (pulumi-policy turns
    the raised unknown into its "could not run in full" note)."""
    unknown_string = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    resources = graph(prod)
    resources, _ = spoil(resources, "aws:s3/bucketPolicy:BucketPolicy", "storage-logs",
                         set_path("policy", unknown_string))
    resources, _ = spoil(resources, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "storage-backups",
                         set_path("blockPublicAcls", False))
    resources, _ = spoil(resources, "aws:s3/bucketVersioning:BucketVersioning", "storage-backups",
                         set_path("versioningConfiguration.status", "Suspended"))
    versioning = next(r for r in resources if r.type == "aws:s3/bucketVersioning:BucketVersioning")
    resources.append(dataclasses.replace(versioning, urn=versioning.urn + "-extra", name="extra",
                                         props={**versioning.props, "bucket": unknown_string},
                                         property_dependencies={}))
    result = drive_pack(tmp_path, as_json(resources))
    found = {(v["policy"], v["urn"].rsplit("::", 1)[-1]) for v in result["violations"] if "message" in v}
    skipped = {v["policy"] for v in result["violations"] if "unknown" in v}
    assert ("s3-bucket-public-access-block", "storage-backups") in found
    assert skipped == {"s3-bucket-tls-only", "s3-bucket-versioning"}
    # The unknown versioning might be the backups bucket's, so its suspended one is not called a violation yet.
    assert not [f for f in found if f[0] in ("s3-bucket-tls-only", "s3-bucket-versioning")]
    # With every value known, the same suspended versioning is a violation.
    known, _ = spoil(graph(prod), "aws:s3/bucketVersioning:BucketVersioning", "storage-backups",
                     set_path("versioningConfiguration.status", "Suspended"))
    assert ("s3-bucket-versioning", "storage-backups") in {
        (v["policy"], v["urn"].rsplit("::", 1)[-1]) for v in drive_pack(tmp_path, as_json(known))["violations"]}


def test_a_database_a_preview_cannot_judge_is_skipped_and_the_others_are_judged(runs, tmp_path):
    """A preview where Aurora's name for its parameter group is unknown (a renamed group), a restored cluster
    names a group not in the stack while a new group's name is unknown (it may be that one), and a legacy
    cluster names a known group without rds.force_ssl: only the legacy cluster is a violation yet, and the rule
    says it could not run in full. With every value known, the restored cluster is one too."""
    unknown_string = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    resources = graph(runs[MANAGED])
    cluster = next(r for r in resources if r.type == AURORA)
    group = next(r for r in resources if r.type == AURORA_PARAMETERS)

    def another(resource: rules.Resource, pulumi_name: str, **props) -> rules.Resource:
        return dataclasses.replace(resource, name=pulumi_name, props={**resource.props, **props},
                                   urn=f"{resource.urn.rsplit('::', 1)[0]}::{pulumi_name}", property_dependencies={})

    restored = another(cluster, "database-restored", dbClusterParameterGroupName="airflow-restored")
    legacy = another(cluster, "database-legacy", dbClusterParameterGroupName="airflow-legacy")
    legacy_group = another(group, "database-legacy", name="airflow-legacy",
                           parameters=[{"name": "log_min_duration_statement", "value": "1000"}])
    renamed, _ = spoil(resources, AURORA, "database-aurora",
                       set_path("dbClusterParameterGroupName", unknown_string))
    preview = [*renamed, restored, legacy, legacy_group, another(group, "database-new", name=unknown_string)]
    tls = [v for v in drive_pack(tmp_path, as_json(preview))["violations"]
           if v["policy"] == "managed-database-tls-only"]
    assert [v["urn"] for v in tls if "message" in v] == [legacy.urn]
    assert [v["unknown"] for v in tls if "unknown" in v] == ["dbClusterParameterGroupName"]
    known = [*resources, restored, legacy, legacy_group]
    assert {v["urn"] for v in drive_pack(tmp_path, as_json(known))["violations"]
            if v["policy"] == "managed-database-tls-only"} == {restored.urn, legacy.urn}


def test_an_auth_token_still_to_be_generated_skips_only_what_follows_it(runs, tmp_path):
    """On a first preview the broker's AUTH token (a RandomPassword) is unknown: what the rule found before it
    stands, and pulumi-policy notes that it skipped the rest for that replication group."""
    unknown_string = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
    resources, urn = spoil(graph(runs[MANAGED]), ELASTICACHE, "broker-elasticache",
                           set_path("authToken", unknown_string))
    resources, _ = spoil(resources, ELASTICACHE, "broker-elasticache", set_path("multiAzEnabled", False))
    found = [v for v in drive_pack(tmp_path, as_json(resources))["violations"] if v["urn"] == urn]
    assert found == [
        {"policy": "managed-cache-encrypted", "urn": urn, "message": "multiAzEnabled is False; must be true"},
        {"policy": "managed-cache-encrypted", "urn": urn, "unknown": "authToken"}]


def test_what_the_managed_data_store_rules_accept_and_refuse(runs):
    """A user group stands for the AUTH token; rds.force_ssl given as a number (Pulumi sends 1 as 1.0) counts;
    the AWS-managed key is no customer key."""
    cache = next(r for r in graph(runs[MANAGED]) if r.type == ELASTICACHE)
    users = {**{k: v for k, v in cache.props.items() if k != "authToken"}, "userGroupIds": ["airflow-broker-users"]}
    assert list(rules.managed_cache_encrypted(dataclasses.replace(cache, props=users))) == []
    resources, _ = spoil(graph(runs[MANAGED_RDS]), RDS_PARAMETERS, "database-metadata",
                         set_parameter("rds.force_ssl", 1.0))
    assert [v for v in rules.evaluate(resources) if v["policy"] == "managed-database-tls-only"] == []
    resources, urn = spoil(resources, RDS, "database-rds",
                           set_path("kmsKeyId", "arn:aws:kms:eu-west-1:111122223333:alias/aws/rds"))
    assert [v["message"] for v in rules.evaluate(resources) if v["urn"] == urn] == [
        "kmsKeyId 'arn:aws:kms:eu-west-1:111122223333:alias/aws/rds' is an AWS-managed key; give it a customer KMS key"]


def test_policy_pack_files_are_consistent():
    """What `pulumi preview --policy-pack policy` reads: the pack's runtime and virtualenv, its requirements."""
    import yaml

    manifest = yaml.safe_load((REPO / "policy" / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    requirements = (REPO / "policy" / "requirements.txt").read_text()
    assert "pulumi-policy==" in requirements
    main = (REPO / "policy" / "__main__.py").read_text()
    assert "PolicyPack(" in main and "policies()" in main
    # Every config file names rules that exist, with a level pulumi-policy knows.
    for path in (REPO / "policy" / "config").glob("*.json"):
        for name, spec in json.loads(path.read_text()).items():
            assert name in {r.name for r in rules.RULES}, f"{path.name}: unknown rule {name}"
            assert spec["enforcementLevel"] in ("advisory", "mandatory", "disabled")
