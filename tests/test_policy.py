"""The policy pack (policy/): every stack file passes it, and every rule fails on a deliberately bad
resource — the stack's own resource with one thing changed — and passes on the original."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from harness import REPO, STACKS

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "policy"))

import plan  # noqa: E402
import rules  # noqa: E402

POLICY_PYTHON = os.environ.get("POLICY_PYTHON", str(REPO / "policy" / "venv" / "bin" / "python"))


def graph(run) -> list[rules.Resource]:
    return plan.policy_resources(run)


def mandatory(violations: list[dict]) -> list[dict]:
    return [v for v in violations if v["enforcement"] == "mandatory"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_passes_the_pack(stack_runs, stack):
    violations = rules.evaluate(graph(stack_runs[stack]), plan.policy_enforcement(stack, REPO))
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
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
RELEASE = "kubernetes:helm.sh/v3:Release"
CLUSTER = "aws:eks/cluster:Cluster"

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


def spoil(resources: list[rules.Resource], type_: str, name: str, change) -> tuple[list[rules.Resource], str]:
    target = next(r for r in resources if r.type == type_ and r.name == name)
    if change == "unprotect":
        bad = dataclasses.replace(target, protect=False)
    else:
        props = copy.deepcopy(dict(target.props))
        change(props)
        bad = dataclasses.replace(target, props=props)
    return [bad if r is target else r for r in resources], target.urn


def bucket_of(resources: list[rules.Resource], urn: str) -> str:
    """Stack rules on S3 report the bucket that lost its protection."""
    resource = next(r for r in resources if r.urn == urn)
    return (resource.property_dependencies.get("bucket") or [urn])[0]


@pytest.mark.parametrize("rule, wrong, type_, name, change", BAD, ids=[f"{b[0]}: {b[1]}" for b in BAD])
def test_rule_fails_on_a_bad_resource_and_passes_on_the_stacks(prod, rule, wrong, type_, name, change):
    resources = graph(prod)
    bad, urn = spoil(resources, type_, name, change)
    expected_urn = bucket_of(resources, urn) if rule.startswith("s3-") else urn
    before = [v for v in rules.evaluate(resources) if v["policy"] == rule and v["urn"] == expected_urn]
    after = [v for v in rules.evaluate(bad) if v["policy"] == rule and v["urn"] == expected_urn]
    assert before == []
    assert after, f"{rule} did not catch: {wrong}"
    assert all(v["enforcement"] == "mandatory" for v in after)


def test_every_rule_has_a_failing_case():
    mandatory_rules = {r.name for r in rules.RULES if r.mandatory}
    assert {case[0] for case in BAD} == mandatory_rules


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
    done = subprocess.run([POLICY_PYTHON, str(REPO / "tests" / "policy_driver.py"), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_pack_reports_through_pulumi_policy_what_the_rules_find(prod, tmp_path):
    """Every bad case at once, through pulumi-policy's argument classes and unknown-checking proxy: the pack
    reports exactly the violations the plain functions find, with the levels `plan.py` shows."""
    resources = graph(prod)
    for _, _, type_, name, change in BAD:
        resources, _ = spoil(resources, type_, name, change)
    result = drive_pack(tmp_path, as_json(resources))
    assert result["policies"] == [r.name for r in rules.RULES]
    expected = {(v["policy"], v["urn"], v["message"]) for v in rules.evaluate(resources)}
    reported = {(v["policy"], v["urn"], v["message"]) for v in result["violations"]}
    assert reported == expected
    assert {v[0] for v in reported} >= {case[0] for case in BAD}


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
