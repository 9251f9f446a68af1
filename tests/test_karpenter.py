"""Karpenter (target=aws): the worker nodes follow the work. Checked against what Karpenter publishes for
1.14 (its getting-started cloudformation.yaml, kept in tests/fixtures/karpenter-v1.14.1) and its chart and
CRDs in ../shared, rendered by real Helm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components import workloads as w
from components.cluster.capacity import (
    INTERRUPTION_EVENTS,
    KARPENTER_POLICY_FILE,
    KARPENTER_VERSION,
    NODE_DRAIN_MARGIN_SECONDS,
    NODE_POLICIES,
)
from mock_engine import FAKE_ACCOUNT, REPO, run_program
from support.rendering import render_all
from support.schemas import validate_custom_resource

CLOUDFORMATION = REPO / "tests" / "fixtures" / f"karpenter-v{KARPENTER_VERSION}" / "cloudformation.yaml"
RELEASE = "kubernetes:helm.sh/v3:Release"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
AWS_STACKS = ["staging", "prod"]


class CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short intrinsic functions (!Sub, !GetAtt, !Ref) as their long forms."""


for tag in ("Sub", "GetAtt", "Ref"):
    CloudFormationLoader.add_constructor(
        f"!{tag}", lambda loader, node, tag=tag: {f"Fn::{tag}" if tag != "Ref" else "Ref": loader.construct_scalar(
            node) if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node)})


@pytest.fixture(scope="module")
def published() -> dict:
    return yaml.load(CLOUDFORMATION.read_text(), Loader=CloudFormationLoader)["Resources"]


def test_every_aws_stack_registers_karpenter(stack_runs):
    for stack in AWS_STACKS:
        run = stack_runs[stack]
        release = run.one(RELEASE, "cluster-karpenter").values
        assert (release["chart"], release["version"], release["namespace"], release["name"]) == (
            "oci://public.ecr.aws/karpenter/karpenter", KARPENTER_VERSION, "kube-system", "karpenter")
        assert "repositoryOpts" not in release or not release["repositoryOpts"]
        association = run.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", "cluster-karpenter").values
        assert (association["namespace"], association["serviceAccount"]) == ("kube-system", "karpenter")
        assert len(run.of_type("aws:sqs/queue:Queue")) == 1
        assert len(run.of_type("aws:cloudwatch/eventRule:EventRule")) == len(INTERRUPTION_EVENTS) == 5
        assert len(run.of_type("aws:cloudwatch/eventTarget:EventTarget")) == 5
        entry = run.one("aws:eks/accessEntry:AccessEntry", "cluster-karpenter-node").values
        assert entry["type"] == "EC2_LINUX" and entry["principalArn"].endswith("/cluster-karpenter-node")
        assert len(run.of_type(NODE_CLASS)) == len(run.of_type(NODE_POOL)) == 1


def test_no_karpenter_resource_in_local(local):
    assert not local.where(lambda r: "karpenter" in r.name or "karpenter" in r.type or r.type.startswith("aws:"))
    values = next(r for r in local.of_type(RELEASE) if r.values["chart"] == "airflow").values["values"]
    assert "karpenter.sh/do-not-disrupt" not in json.dumps(values)


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_node_class_and_pool_validate_against_their_crds(stack_runs, stack):
    run = stack_runs[stack]
    for kind in (NODE_CLASS, NODE_POOL):
        validate_custom_resource(run.one(kind))


def test_the_node_class_is_imdsv2_encrypted_and_tagged_like_the_rest(prod):
    spec = prod.one(NODE_CLASS).values["spec"]
    assert spec["role"] == "cluster-karpenter-node"
    assert spec["metadataOptions"] == {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled",
                                       "httpPutResponseHopLimit": 1, "httpTokens": "required"}
    (device,) = spec["blockDeviceMappings"]
    assert device["ebs"]["encrypted"] is True and device["ebs"]["volumeType"] == "gp3"
    assert spec["tags"] == {"project": "airflow", "stack": "prod", "managed-by": "karpenter"}
    assert spec["amiSelectorTerms"] == [{"alias": "al2023@v20260520"}]
    # It finds the private subnets and the cluster security group by the discovery tag the program sets.
    discovery = {"karpenter.sh/discovery": "airflow-prod"}
    assert spec["subnetSelectorTerms"] == spec["securityGroupSelectorTerms"] == [{"tags": discovery}]
    tagged = [s for s in prod.of_type("aws:ec2/subnet:Subnet") if s.values["tags"].get("karpenter.sh/discovery")]
    assert sorted(s.name for s in tagged) == [f"cluster-private-eu-west-1{z}" for z in "abc"]
    tag = prod.one("aws:ec2/tag:Tag").values
    assert (tag["key"], tag["value"], tag["resourceId"]) == ("karpenter.sh/discovery", "airflow-prod",
                                                             "sg-airflow-prod")


def test_the_node_pool_runs_only_workers_within_the_cost_ceiling(prod, staging):
    spec = prod.one(NODE_POOL).values["spec"]
    template = spec["template"]["spec"]
    requirements = {r["key"]: r["values"] for r in template["requirements"]}
    assert requirements == {"karpenter.sh/capacity-type": ["on-demand"],
                            "karpenter.k8s.aws/instance-family": ["m7i", "m6i"],
                            "karpenter.k8s.aws/instance-size": ["2xlarge", "4xlarge"],
                            "kubernetes.io/arch": ["amd64"], "kubernetes.io/os": ["linux"]}
    assert spec["limits"] == {"cpu": "64", "memory": "256Gi"}
    assert spec["disruption"] == {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "5m",
                                  "budgets": [{"nodes": "10%"}]}
    assert template["taints"] == [w.WORKER_TAINT]
    assert spec["template"]["metadata"]["labels"][w.NODE_ROLE_LABEL] == "worker"
    assert template["expireAfter"] == "720h"
    # A node Karpenter must drain (expiry, drift, interruption) gives its workers their own grace period, from
    # the start: Karpenter deletes do-not-disrupt pods at (node grace - pod grace) into the drain.
    assert NODE_DRAIN_MARGIN_SECONDS == 0 and template["terminationGracePeriod"] == "900s"
    assert {r["key"]: r["values"] for r in staging.one(NODE_POOL).values["spec"]["template"]["spec"][
        "requirements"]}["karpenter.sh/capacity-type"] == ["spot", "on-demand"]


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_workers_tolerate_their_nodes_and_keep_them_from_consolidation(stack_runs, stack):
    run = stack_runs[stack]
    worker = next(d for d in render_all(run)["airflow"] if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "airflow-worker")
    pod = worker["spec"]["template"]
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert {**w.WORKER_TAINT, "operator": "Equal"} in pod["spec"]["tolerations"]
    assert pod["spec"]["nodeSelector"] == w.WORKER_NODES
    pool = run.one(NODE_POOL).values["spec"]["template"]["spec"]
    assert int(pool["terminationGracePeriod"].rstrip("s")) == pod["spec"]["terminationGracePeriodSeconds"]
    # Nothing else tolerates the worker nodes' taint but DaemonSets that tolerate every taint.
    for chart, documents in render_all(run).items():
        for document in documents:
            spec = (document.get("spec") or {}).get("template", {}).get("spec") or {}
            if document is worker or not spec or document["kind"] == "DaemonSet":
                continue
            assert not any(t.get("key") == w.WORKER_TAINT["key"] for t in spec.get("tolerations") or []), \
                (chart, document["metadata"]["name"])


def test_the_controller_runs_twice_on_the_system_nodes_never_on_its_own(prod):
    documents = render_all(prod)["karpenter"]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", **w.SYSTEM_NODES}
    never_its_own = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"} in \
        never_its_own["nodeSelectorTerms"][0]["matchExpressions"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["CLUSTER_NAME"] == "airflow-prod" and env["INTERRUPTION_QUEUE"] == "airflow-prod-karpenter"
    assert env["AWS_REGION"] == "eu-west-1"
    assert any(d["kind"] == "PodDisruptionBudget" for d in documents)


def test_the_controller_policies_are_the_published_ones_scoped_to_this_cluster(prod, published):
    """Every policy is Karpenter's own for 1.14, its placeholders filled with this cluster, region, account,
    node role and queue; the zonal-shift policy (zonal shift is off) is not granted."""
    ours = json.loads(KARPENTER_POLICY_FILE.read_text())
    managed = {name: resource["Properties"] for name, resource in published.items()
               if resource["Type"] == "AWS::IAM::ManagedPolicy"}
    assert set(managed) - set(ours) == {"ZonalShiftPolicy"}
    queue_arn = prod.one("aws:sqs/queue:Queue").state["arn"]
    node_role_arn = prod.one("aws:iam/role:Role", "cluster-karpenter-node").state["arn"]
    substitutions = {"${AWS::Partition}": "aws", "${AWS::Region}": "eu-west-1", "${AWS::AccountId}": FAKE_ACCOUNT,
                     "${ClusterName}": "airflow-prod", "${KarpenterNodeRole.Arn}": node_role_arn,
                     "${KarpenterInterruptionQueue.Arn}": queue_arn}
    granted = {p.name.removeprefix("cluster-karpenter-"): json.loads(p.values["policy"])
               for p in prod.of_type("aws:iam/policy:Policy")}
    assert set(granted) == set(ours)
    for name, properties in managed.items():
        if name == "ZonalShiftPolicy":
            continue
        text = properties["PolicyDocument"]["Fn::Sub"]
        for placeholder, value in substitutions.items():
            text = text.replace(placeholder, value)
        assert "${" not in text
        assert granted[name] == json.loads(text), name
    role = prod.one("aws:iam/role:Role", "cluster-karpenter")
    attached = {a.values["policyArn"] for a in prod.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.values["role"] == role.state["name"]}
    assert attached == {p.state["arn"] for p in prod.of_type("aws:iam/policy:Policy")}
    # The nodes' role gets what the published node role gets.
    node_role = published["KarpenterNodeRole"]["Properties"]
    expected = {arn["Fn::Sub"].replace("${AWS::Partition}", "aws") for arn in node_role["ManagedPolicyArns"]}
    node_attached = {a.values["policyArn"] for a in prod.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                     if a.values["role"] == "cluster-karpenter-node"}
    assert node_attached == expected == {f"arn:aws:iam::aws:policy/{p}" for p in NODE_POLICIES}


def test_the_interruption_queue_is_encrypted_and_admits_only_these_eventbridge_rules(prod, published):
    queue = prod.one("aws:sqs/queue:Queue")
    assert queue.values["sqsManagedSseEnabled"] is True and queue.values["messageRetentionSeconds"] == 300
    rules = prod.of_type("aws:cloudwatch/eventRule:EventRule")
    patterns = sorted(json.dumps(json.loads(r.values["eventPattern"]), sort_keys=True) for r in rules)
    expected = sorted(json.dumps(r["Properties"]["EventPattern"], sort_keys=True) for r in published.values()
                      if r["Type"] == "AWS::Events::Rule")
    assert patterns == expected
    for target in prod.of_type("aws:cloudwatch/eventTarget:EventTarget"):
        assert target.values["arn"] == queue.state["arn"]
    policy = json.loads(prod.one("aws:sqs/queuePolicy:QueuePolicy").values["policy"])
    allow, deny = policy["Statement"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == sorted(r.state["arn"] for r in rules)
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_controller_starts_with_its_credentials_queue_and_node_role_in_place(prod):
    release = prod.one(RELEASE, "cluster-karpenter")
    for needed in (prod.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", "cluster-karpenter"),
                   prod.one("aws:sqs/queuePolicy:QueuePolicy"), prod.one("aws:eks/accessEntry:AccessEntry",
                                                                         "cluster-karpenter-node")):
        assert release.depends_on(needed), needed.name
    pool, node_class = prod.one(NODE_POOL), prod.one(NODE_CLASS)
    assert pool.depends_on(node_class) and pool.depends_on(release) and node_class.depends_on(release)


def test_a_worker_node_group_can_be_kept_next_to_karpenter():
    run = run_program("prod", overrides={"workerNodeGroup": "on"})
    assert {n.name for n in run.of_type("aws:eks/nodeGroup:NodeGroup")} == {"cluster-system", "cluster-workers"}
    assert len(run.of_type(NODE_POOL)) == 1
    off = run_program("prod", overrides={"karpenter": False})
    assert {n.name for n in off.of_type("aws:eks/nodeGroup:NodeGroup")} == {"cluster-system", "cluster-workers"}
    assert not off.of_type(NODE_POOL) and not off.of_type("aws:sqs/queue:Queue")


def test_the_published_template_is_the_one_for_this_version():
    text = CLOUDFORMATION.read_text()
    assert "KarpenterControllerNodeLifecyclePolicy-${ClusterName}" in text
    assert Path(KARPENTER_POLICY_FILE).name == f"karpenter-controller-v{KARPENTER_VERSION}.json"
