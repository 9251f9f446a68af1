"""The Cluster component split into modules (components/cluster/) changes nothing Pulumi sees: every stack
registers the same resources, under the same URNs and parents, with the same inputs, dependencies, provider
and options as before the split (tests/fixtures/graph-before-cluster-split.json, recorded from the commit
before it). Karpenter, added after the split, changes exactly what it means to: with it off (and the worker
node group the stack files had then), the graphs are the same as before."""

from __future__ import annotations

import json

import pytest

import plan
from mock_engine import FAKE_ACCOUNT, REPO
from support.graph import fingerprint

FIXTURE = REPO / "tests" / "fixtures" / "graph-before-cluster-split.json"
def as_recorded(doc: dict) -> dict:
    """The document with roles' ARNs in the format the mocks gave them when the fixture was recorded
    (`arn:aws:mock:…:role/<name>`; IAM's own format since)."""
    text = json.dumps(doc)
    for role in (r for r in doc["resources"] if r["type"] == "aws:iam/role:Role"):
        name = role["inputs"].get("name") or role["name"]
        text = text.replace(f'"arn:aws:iam::{FAKE_ACCOUNT}:role/{name}"', f'"arn:aws:mock:eu-west-1:{FAKE_ACCOUNT}:role/{name}"')
    return json.loads(text)


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())


# The worker node group the stack files had before Karpenter took the workers over.
WORKER_NODE_GROUP_THEN = {
    "local": {},
    "staging": {"karpenter": False, "workerNodeInstanceTypes": ["m6i.xlarge", "m6a.xlarge", "m5.xlarge"],
                "workerCapacityType": "SPOT", "workerNodeMin": 1, "workerNodeDesired": 1, "workerNodeMax": 10},
    "prod": {"karpenter": False, "workerNodeInstanceTypes": ["m6i.2xlarge"], "workerCapacityType": "ON_DEMAND",
             "workerNodeMin": 3, "workerNodeDesired": 3, "workerNodeMax": 30},
}
KARPENTER_TYPES = {
    "aws:cloudwatch/eventRule:EventRule", "aws:cloudwatch/eventTarget:EventTarget", "aws:ec2/tag:Tag",
    "aws:eks/accessEntry:AccessEntry", "aws:eks/podIdentityAssociation:PodIdentityAssociation", "aws:iam/policy:Policy",
    "aws:iam/role:Role", "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:sqs/queue:Queue",
    "aws:sqs/queuePolicy:QueuePolicy", "kubernetes:helm.sh/v3:Release", "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
    "kubernetes:karpenter.sh/v1:NodePool"}


# What later commits changed on purpose, outside the Cluster, in every stack: resource name -> parts.
LATER_CHANGES = {
    # The platform's Secrets are mounted per Airflow component, no longer into every pod the chart renders; the
    # release waits for KEDA's role's Secret too (it waits for Security).
    "airflow-airflow": ["inputs", "waits"],
    # The S3 gateway endpoint got a policy: the stack's buckets, the nodes' images and packages (target=aws).
    "cluster-s3": ["inputs"],
    # The nightly database cleanup joined the database's clients (its pods' selector).
    "security-airflow-to-pgbouncer-egress": ["inputs"],
    "security-airflow-to-pgbouncer-ingress": ["inputs"],
    # KEDA's own database role: the Cluster makes it from its Secret, the metadata Secret carries its URL (a secret:
    # only what it waits for shows).
    "database-cluster": ["inputs", "waits"],
    "database-metadata-connection": ["waits"],
    # Storage no longer protects its whole subtree (it set the SDK's own `_protect`, which children inherit): its
    # roles, policies, associations, security group, mount targets, backup plan and buckets' companions are not
    # protected any more (what holds data still is).
    **{name: ["options"] for name in (
        "storage-airflow-api-server", "storage-airflow-dag-processor", "storage-airflow-db", "storage-airflow-logs",
        "storage-airflow-scheduler", "storage-airflow-triggerer", "storage-airflow-worker", "storage-backup",
        "storage-backup-AWSBackupServiceRolePolicyForBackup", "storage-backup-AWSBackupServiceRolePolicyForRestores",
        "storage-backups", "storage-data", "storage-database-backups", "storage-efs", "storage-efs-eu-west-1a",
        "storage-efs-eu-west-1b", "storage-efs-eu-west-1c", "storage-logs")},
    # Operators' access entries are named after their principal, their former name by position an alias.
    "security-operator-0": ["options"],
    # CloudNativePG's operator keeps its dashboard in its own namespace, which Grafana's sidecar searches too (and
    # Grafana waits for its reader there).
    "database-cloudnative-pg": ["inputs", "waits"],
    "observability-kube-prometheus-stack": ["inputs", "waits"],
    # The Pooler requires TLS of every client over the network (CloudNativePG's default also took plaintext).
    "database-pooler": ["inputs"],
    # Each service admits only the Airflow components that use it: the broker the scheduler, workers and Flower,
    # the execution API the workers, statsd Airflow's long-running components.
    **{f"security-airflow-to-{flow}": ["inputs"] for flow in ("api-server-egress", "redis-egress", "redis-ingress",
                                                              "statsd-egress")},
    # The alert runbooks moved from the README to docs/alerts.md (every rule's runbook_url).
    **{f"observability-rules-{area}": ["inputs"] for area in ("airflow", "postgresql", "redis", "platform")},
    # Kubernetes 1.35: 1.34 left EKS's standard support on 2026-12-02 (the control plane and the node groups).
    **{name: ["inputs"] for name in ("cluster-eks", "cluster-system", "cluster-workers")},
}
# What later commits added on purpose, in every stack: KEDA's role's password and its Secret; the Delivery component
# (githubRepository) and everything in it.
LATER_ADDED = {"security-keda-database-password", "security-airflow-db-keda-user",
               # The operators' tier (its provider), and Grafana's reader of the CloudNativePG dashboard's namespace.
               "cluster-k8s-operators", "observability-grafana-config-reader-cnpg",
               # The workers' deletion cost (workerScaleInIdleFirst): its admission policy, its binding, Role and
               # RoleBinding.
               "airflow-worker-deletion-cost-policy", "airflow-worker-deletion-cost-policy-binding",
               "airflow-worker-deletion-cost",
               # ...and the workers' way to the Kubernetes API (its Service; on a laptop its server's ports too).
               "security-worker-to-kubernetes-service-egress", "security-worker-to-kubernetes-api-egress",
               # The workers' own database role: its password and its Secret.
               "security-worker-database-password", "security-airflow-db-worker-user"}
LATER_ADDED_COMPONENTS = ("airflow:platform:Delivery",)
# What later commits removed on purpose: the access entry that followed whoever ran the program (the deploy role's
# entry is the Delivery component's now, admins' come from adminPrincipalArns alone).
LATER_REMOVED = {"cluster-admin-role-pulumi-deployer"}
# ...after which the Kubernetes providers of an EKS cluster no longer wait for that entry.
LATER_CHANGES_AWS = {name: ["waits"] for name in ("cluster-k8s", "cluster-k8s-bootstrap")}
# ...and the operators that need neither a volume nor a load balancer moved to a provider that waits for the nodes
# and DNS only (a move to a provider of the same cluster: pulumi/pulumi#18509, DiffConfig decides, no replace).
LATER_CHANGES_AWS.update({name: ["waits"] for name in (
    "airflow-keda", "database-cnpg-system", "database-barman-cloud", "security-cert-manager", "security-platform-ca",
    "security-platform-ca-issuer", "security-selfsigned-issuer")})


def later_added(urn: str) -> bool:
    return urn.rsplit("::", 1)[1] in LATER_ADDED or any(f"::{c}" in urn or f"${c}" in urn for c in LATER_ADDED_COMPONENTS)


# The stacks that existed when the Cluster was split (the fixture holds their graphs).
@pytest.mark.parametrize("stack", sorted(WORKER_NODE_GROUP_THEN))
def test_the_split_changes_no_resource(before, stack):
    was = before[stack]
    now = fingerprint(as_recorded(plan.stack_document(stack, overrides=WORKER_NODE_GROUP_THEN[stack])),
                      renamed_from=tuple(was))
    assert sorted(urn for urn in set(was) - set(now) if urn.rsplit("::", 1)[1] not in LATER_REMOVED) == [], \
        "resources gone (a new URN without an alias replaces them)"
    assert sorted(urn for urn in set(now) - set(was) if not later_added(urn)) == [], \
        "resources added by a refactoring"
    changed = {urn: [part for part in was[urn] if was[urn][part] != now[urn][part]] for urn in was if urn in now}
    changed = {urn: parts for urn, parts in changed.items() if parts}
    stack_has = {urn.rsplit("::", 1)[1] for urn in was}
    later = {**LATER_CHANGES, **(LATER_CHANGES_AWS if stack != "local" else {})}
    assert {urn.rsplit("::", 1)[1]: parts for urn, parts in changed.items()} == \
        {name: parts for name, parts in later.items() if name in stack_has}


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_karpenter_changes_what_it_means_to_and_nothing_else(before, stack):
    was = before[stack]
    now = fingerprint(as_recorded(plan.stack_document(stack)), renamed_from=tuple(was))
    name = lambda urn: urn.rsplit("::", 1)[1]  # noqa: E731
    assert {name(urn) for urn in set(was) - set(now)} - LATER_REMOVED == {"cluster-workers"}
    added = {urn for urn in set(now) - set(was) if not later_added(urn)}
    assert {urn.split("::")[2].rsplit("$", 1)[-1] for urn in added} == KARPENTER_TYPES
    assert all(name(urn).startswith("cluster-karpenter") for urn in added)
    changed = {name(urn): sorted(p for p in was[urn] if was[urn][p] != now[urn][p])
               for urn in was if urn in now and was[urn] != now[urn]}
    assert changed == {
        # Workers tolerate Karpenter's nodes and keep them from consolidation; the release waits for the NodePool
        # (and, LATER_CHANGES, mounts the Secrets per component).
        "airflow-airflow": ["inputs", "waits"],
        **{name: LATER_CHANGES[name] for name in ("cluster-s3", "database-cluster", "database-metadata-connection",
                                                  "database-pooler")},
        **{name: parts for name, parts in LATER_CHANGES.items()
           if name.startswith(("storage-", "security-operator-", "security-airflow-to-", "observability-rules-"))},
        **{name: LATER_CHANGES[name] for name in ("cluster-eks", "cluster-system", "database-cloudnative-pg",
                                                  "observability-kube-prometheus-stack")},
        **{name: parts for name, parts in LATER_CHANGES_AWS.items() if name not in ("cluster-k8s",
                                                                                      "cluster-k8s-bootstrap")},
        # Karpenter finds its nodes' subnets by their discovery tag.
        **{f"cluster-private-eu-west-1{zone}": ["inputs"] for zone in "abc"},
        # What waited for both node groups now waits for the system group alone.
        **{resource: ["waits"] for resource in ("cluster-aws-ebs-csi-driver", "cluster-aws-efs-csi-driver",
                                                "cluster-coredns", "cluster-metrics-server", "cluster-k8s",
                                                "cluster-k8s-bootstrap")},
    }


def test_the_comparison_sees_a_change(before):
    doc = plan.stack_document("local")
    doc["resources"][0]["inputs"]["extra"] = 1
    now = fingerprint(doc)
    assert now[doc["resources"][0]["urn"]]["inputs"] != before["local"][doc["resources"][0]["urn"]]["inputs"]


