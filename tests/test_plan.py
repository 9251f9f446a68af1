"""`python -m plan`: the stack without credentials (JSON, text, Mermaid checked by Mermaid's parser), and the diff
between a git ref and the working tree, down to the value paths and the replacements."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plan
from mock_engine import REPO, STACKS, run_program
from support.rendering import chart_name

NODE_TOOLS = os.environ.get("NODE_TOOLS", str(Path.home() / ".cache" / "airflow-platform" / "node-tools"))
COMPONENT_TYPES = {"Cluster", "Security", "Storage", "Database", "Broker", "Observability", "AirflowRelease", "Delivery"}


def no_cloud_env() -> dict[str, str]:
    """The environment of a pull request from a fork: no AWS, Pulumi or Kubernetes credential at all."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PULUMI_", "KUBE", "GITHUB_TOKEN", "ARM_", "GOOGLE_"))}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               KUBECONFIG="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
    return env


def run_plan(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plan", *args], cwd=cwd, env=no_cloud_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def documents():
    return {stack: plan.stack_document(stack) for stack in STACKS}


def test_json_lists_every_component_and_release_without_credentials(prod, documents):
    done = run_plan("--stack", "prod", "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {c["type"].split(":")[-1] for c in doc["components"]} == COMPONENT_TYPES
    releases = prod.of_type("kubernetes:helm.sh/v3:Release")
    assert {(r["resource"], r["chart"], r["version"]) for r in doc["helmReleases"]} == {
        (r.name, chart_name(r), r.values["version"]) for r in releases}
    assert len(doc["resources"]) == len(prod.registrations)
    # Stable: keys sorted, the same bytes from another run (this process's).
    assert done.stdout.strip() == plan.dumps(documents["prod"])
    assert list(doc) == sorted(doc)


@pytest.mark.parametrize("stack", STACKS)
def test_document_order_and_waits(documents, stack_runs, stack):
    doc = documents[stack]
    by_urn = {r["urn"]: r for r in doc["resources"]}
    for entry in doc["resources"]:
        for waited in entry["waitsFor"]:
            assert by_urn[waited]["step"] < entry["step"], (entry["name"], by_urn[waited]["name"])
    # The list is in dependency order: nothing comes before what it waits for.
    position = {r["urn"]: i for i, r in enumerate(doc["resources"])}
    assert all(position[w] < position[r["urn"]] for r in doc["resources"] for w in r["waitsFor"])
    # Components, in an order in which each comes after those it waits for.
    names = [c["name"] for c in doc["components"]]
    assert all(names.index(w) < names.index(c["name"]) for c in doc["components"] for w in c["waitsFor"])
    assert doc["components"][0]["type"].endswith(":Cluster")
    # Airflow is what everything is for: no component waits for it.
    airflow = next(c["name"] for c in doc["components"] if c["type"].endswith(":AirflowRelease"))
    assert not [c for c in doc["components"] if airflow in c["waitsFor"]]
    assert len(doc["resources"]) == len(stack_runs[stack].registrations)


def test_secrets_print_as_redacted(documents):
    """No generated credential appears anywhere in the plan; where one is, `[secret]` stands."""
    seeded = run_program("prod", password_seed=0)
    generated = [r.state["result"] for r in seeded.of_type("random:index/randomPassword:RandomPassword")]
    generated += [r.state[k] for r in seeded.of_type("random:index/randomBytes:RandomBytes") for k in ("hex", "base64")]
    assert len(generated) == 10  # the workers' database password: one more
    text = json.dumps(documents["prod"]) + plan.text_report(documents["prod"])
    assert not [g for g in generated if g in text]
    fernet = next(r for r in documents["prod"]["resources"] if r["name"] == "security-airflow-fernet-key")
    assert fernet["inputs"]["stringData"] == plan.REDACTED
    assert documents["prod"]["outputs"]["admin_password"] == plan.REDACTED


def test_text_shows_releases_with_chart_version_and_values(documents):
    text = plan.text_report(documents["prod"])
    assert "airflow (airflow-airflow): chart airflow 1.19.0 from https://airflow.apache.org" in text
    assert re.search(r"^\s+worker_concurrency: 16$", text, re.MULTILINE)
    assert "Policy: " in text and "0 mandatory" in text


def mermaid_parse(*paths: Path) -> tuple[int, dict[str, dict]]:
    done = subprocess.run(["node", str(REPO / "tests" / "support" / "mermaid_check.mjs"), *map(str, paths)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NODE_TOOLS": NODE_TOOLS})
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, {Path(r["file"]).stem: r for r in map(json.loads, done.stdout.splitlines())}


def test_mermaid_graphs_are_accepted_by_mermaid(documents, tmp_path):
    paths = []
    for stack in STACKS:
        graph = plan.mermaid_report(documents[stack])
        # One arrow per component dependency, one node per component.
        assert graph.count(" --> ") == sum(len(c["waitsFor"]) for c in documents[stack]["components"])
        assert len(re.findall(r'^  c\d+\["', graph, re.MULTILINE)) == len(documents[stack]["components"]) >= len(COMPONENT_TYPES) - 1
        paths.append(tmp_path / f"{stack}.mmd")
        paths[-1].write_text(graph)
    # The checker can fail: the prod graph with one broken node is refused.
    paths.append(tmp_path / "broken.mmd")
    paths[-1].write_text(plan.mermaid_report(documents["prod"]).replace('"]', '"', 1))
    code, results = mermaid_parse(*paths)
    assert code == 1
    assert {stack: results[stack].get("type") for stack in STACKS} == dict.fromkeys(STACKS, "flowchart-v2")
    assert "Parse error" in results["broken"]["error"]


def test_errors_exit_1_with_a_message():
    done = run_plan("--stack", "nosuchstack")
    assert done.returncode == 1 and "no stack file Pulumi.nosuchstack.yaml" in done.stderr
    done = run_plan("--stack", "prod", "--against", "no-such-ref")
    assert done.returncode == 1 and "cannot read git ref 'no-such-ref'" in done.stderr


# ---------------------------------------------------------------------------------------------------------
# --against, in a temporary clone of the working tree with one commit that changes one setting

def copy_working_tree(target: Path) -> list[str]:
    """The working tree's files (committed or not) copied to `target`; the git command for a repository there."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return ["git", "-C", str(target), "-c", "user.name=test", "-c", "user.email=test@example.com"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The working tree's files (committed or not) as a fresh repository, plus one commit that changes
    prod's worker concurrency."""
    target = tmp_path_factory.mktemp("clone")
    git = copy_working_tree(target)
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    stack_file = target / "Pulumi.prod.yaml"
    text = stack_file.read_text()
    assert "airflow:workerConcurrency: 16\n" in text
    stack_file.write_text(text.replace("airflow:workerConcurrency: 16\n", "airflow:workerConcurrency: 12\n"))
    subprocess.run([*git, "commit", "-q", "-am", "prod: 12 tasks per worker"], check=True)
    return target


def test_against_the_previous_commit_shows_exactly_what_one_setting_touches(clone):
    done = run_plan("--stack", "prod", "--against", "HEAD~1", "--format", "json", cwd=clone)
    assert done.returncode == 2, done.stderr
    diff = json.loads(done.stdout)
    assert diff["added"] == [] and diff["removed"] == []
    # workerConcurrency is Celery's worker_concurrency, and each of prod's 2 schedulers' parallelism is half of
    # workers × concurrency.
    assert [(c["name"], c["action"]) for c in diff["changed"]] == [("airflow-airflow", "update")]
    # default_pool follows the workers' slots too, in airflow.cfg and in the migration Job that sets it.
    assert {(p["path"], p["old"], p["new"]) for p in diff["changed"][0]["paths"]} == {
        ("values.config.celery.worker_concurrency", 16, 12),
        ("values.config.core.parallelism", 160, 120),
        ("values.config.core.default_pool_task_slot_count", 320, 240),
        ("values.migrateDatabaseJob.args[4]", "320", "240"),
    }
    text = plan.diff_text(diff, "HEAD~1")
    assert "0 to add, 1 to update, 0 to replace, 0 to remove" in text
    assert "values.config.celery.worker_concurrency: 16 → 12" in text
    # docs/delivery.md shows this very output as the comment a pull request from a fork gets.
    assert f"{text}\n\n{plan.policy_text(diff)}" in (REPO / "docs" / "delivery.md").read_text()


def test_against_the_same_commit_is_no_change(clone):
    done = run_plan("--stack", "staging", "--against", "HEAD", cwd=clone)
    assert done.returncode == 0, done.stderr
    assert "no change" in done.stdout


POISON = 'raise SystemExit("the tooling of the ref planned against was imported")\n'


def test_against_an_old_tree_runs_its_program_with_this_engine(tmp_path):
    """A ref's tree is evaluated for its program alone: its own plan, mock engine and policy rules (an older
    layout's plan.py and tests/harness.py included) are never imported, while its components are the ones run."""
    git = copy_working_tree(tmp_path)
    broker = tmp_path / "components" / "broker" / "redis_ha.py"
    current = broker.read_text()
    assert current.count('"min-replicas-to-write": 1 if ha else 0,') == 1
    broker.write_text(current.replace('"min-replicas-to-write": 1 if ha else 0,', '"min-replicas-to-write": 2 if ha else 0,'))
    tooling = [tmp_path / "plan" / "__init__.py", tmp_path / "mock_engine" / "__init__.py", tmp_path / "policy" / "rules.py",
               tmp_path / "plan.py", tmp_path / "harness.py", tmp_path / "tests" / "harness.py"]
    originals = {path: path.read_text() if path.exists() else None for path in tooling}
    for path in tooling:
        path.write_text(POISON)
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "an old tree"], check=True)
    broker.write_text(current)
    for path, text in originals.items():
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "today's tree"], check=True)
    done = run_plan("--stack", "prod", "--against", "HEAD~1", "--format", "json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    diff = json.loads(done.stdout)
    assert diff["added"] == [] and diff["removed"] == []
    changes = {(c["name"], p["path"], p["old"], p["new"]) for c in diff["changed"] for p in c["paths"]}
    assert any("min-replicas-to-write" in path and (old, new) == (2, 1) for _, path, old, new in changes), changes


# ---------------------------------------------------------------------------------------------------------
# Replacements, on the program's own graphs

def changes(documents, stack: str, overrides: dict) -> dict[str, dict]:
    diff = plan.compare(documents[stack], plan.stack_document(stack, overrides=overrides))
    return {c["name"]: c for c in diff["changed"]}


def test_a_new_vpc_range_replaces_the_network_and_what_sits_in_it(documents):
    changed = changes(documents, "staging", {"vpcCidr": "10.31.0.0/16"})
    replaced = {name for name, c in changed.items() if c["action"] == "replace"}
    assert {"cluster-vpc", "cluster-private-eu-west-1a", "cluster-public-eu-west-1c", "cluster-s3",
            "cluster-system", "storage-efs-eu-west-1a"} <= replaced
    # In place: the cluster (EKS updates its subnets), route tables, the Airflow release's policy CIDRs.
    assert changed["cluster-eks"]["action"] == "update"
    assert changed["airflow-airflow"]["action"] == "update"
    vpc = changed["cluster-vpc"]["paths"]
    assert [(p["path"], p["replaces"]) for p in vpc] == [("cidrBlock", "cidrBlock cannot change in place")]


def test_a_new_cluster_name_replaces_the_cluster_and_its_node_groups(documents):
    changed = changes(documents, "staging", {"clusterName": "airflow-staging-2"})
    assert changed["cluster-eks"]["action"] == "replace"
    assert changed["cluster-system"]["action"] == "replace"
    assert changed["cluster-coredns"]["action"] == "replace"


def test_a_changed_policy_description_replaces_the_karpenter_policies(documents):
    """Karpenter's managed policies name the cluster (and Karpenter's version) in their description, which IAM
    cannot change in place: the plan says replace, not update."""
    diff = plan.compare(documents["staging"], plan.stack_document("staging", overrides={"clusterName": "airflow-staging-2"}))
    policies = [c for c in diff["changed"] if c["type"] == "aws:iam/policy:Policy"]
    assert len(policies) == 5 and all(c["action"] == "replace" for c in policies), policies
    assert all("description" in {p["path"] for p in c["paths"] if p["replaces"]} for c in policies)


def test_an_update_of_a_managed_store_says_what_waits_for_the_maintenance_window(documents):
    """RDS, Aurora and ElastiCache make a new class or node type in their weekly window unless told to apply it
    at once: the plan marks those inputs, with the window (an Aurora instance's own, which AWS picks), and says
    nothing of it with managedApplyImmediately, nor of an input that does not wait (the replica count)."""
    larger = {"databaseInstanceClass": "db.r7g.xlarge", "elasticacheNodeType": "cache.r7g.xlarge",
              "elasticacheNodes": 2}
    waiting = plan.compare(documents["prod-managed"], plan.stack_document("prod-managed", overrides=larger))
    text = plan.diff_text(waiting, "main")
    marked = [line.strip().split(":")[0] for line in text.splitlines() if "waits for the maintenance window" in line]
    assert sorted(marked) == ["instanceClass", "instanceClass", "nodeType"], text
    assert "nodeType: cache.r7g.large → cache.r7g.xlarge   [waits for the maintenance window, sun:05:00-sun:06:00" \
        in text.replace('"', "")
    assert "its own, which AWS picked" in text
    at_once = {"managedApplyImmediately": True}
    immediate = plan.compare(plan.stack_document("prod-managed", overrides=at_once),
                             plan.stack_document("prod-managed", overrides={**at_once, **larger}))
    assert len([c for c in immediate["changed"] if c["type"] in plan.DEFERRED_INPUTS]) == 3
    assert "maintenance window" not in plan.diff_text(immediate, "main")


def test_kubernetes_version_upgrade_is_an_update_and_a_downgrade_is_refused(documents):
    up = changes(documents, "prod", {"kubernetesVersion": "1.36"})["cluster-eks"]
    assert up["action"] == "update" and not any(p.get("refused") for p in up["paths"])
    # (From a cluster on 1.36: the stacks refuse a version that left standard support, tested in test_settings.)
    newer = plan.stack_document("prod", overrides={"kubernetesVersion": "1.36"})
    down = {c["name"]: c for c in plan.compare(newer, documents["prod"])["changed"]}["cluster-eks"]
    assert [p["refused"] for p in down["paths"] if p["path"] == "version"] == [
        "EKS refuses to downgrade a control plane (a new cluster is the only way back)"]


def test_a_region_change_replaces_everything_on_that_provider(documents):
    """(The mocks answer for one region only, so the new region is set on the recorded provider.)"""
    new = json.loads(json.dumps(documents["staging"]))
    next(r for r in new["resources"] if r["type"] == "pulumi:providers:aws")["inputs"]["region"] = "eu-central-1"
    diff = plan.compare(documents["staging"], new)["changed"]
    changed = {c["name"]: c for c in diff}
    assert changed["aws"]["action"] == "replace"
    assert {r["name"] for r in new["resources"] if r["provider"] and r["provider"].endswith("::aws")} <= set(changed)
    [bucket] = [c for c in diff if c["name"] == "storage-logs" and c["type"] == "aws:s3/bucket:Bucket"]
    assert bucket["action"] == "replace" and bucket["protected"] is True
    assert "(protected: the replacement will fail)" in plan.diff_text(
        {"stack": "staging", "added": [], "removed": [], "changed": [bucket]}, "main")


def test_a_moved_resource_with_an_alias_is_not_a_delete_and_create(documents):
    old = json.loads(json.dumps(documents["local"]))
    new = json.loads(json.dumps(documents["local"]))
    entry = next(r for r in new["resources"] if r["name"] == "security-airflow-fernet-key")
    old_urn = entry["urn"]
    entry["urn"] = old_urn.replace("::security-airflow-fernet-key", "::airflow-fernet-key")
    entry["name"], entry["aliases"] = "airflow-fernet-key", [old_urn]
    diff = plan.compare(old, new)
    assert diff["added"] == [] and diff["removed"] == []
    assert [(c["name"], c["movedFrom"], c["action"]) for c in diff["changed"]] == [
        ("airflow-fernet-key", old_urn, "update")]
    entry["aliases"] = []
    diff = plan.compare(old, new)
    assert [a["name"] for a in diff["added"]] == ["airflow-fernet-key"]
    assert [r["name"] for r in diff["removed"]] == ["security-airflow-fernet-key"]


def test_aliases_are_recorded_as_the_urns_they_stand_for(documents):
    """pulumi-aws gives every Bucket a type alias to BucketV2 (same name, same parent): the plan knows the URN."""
    bucket = next(r for r in documents["prod"]["resources"] if r["name"] == "storage-logs"
                  and r["type"] == "aws:s3/bucket:Bucket")
    assert bucket["urn"].replace("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2") in bucket["aliases"]


def test_a_replaced_input_below_a_whole_input_replaces(documents):
    """Node groups take `launchTemplate` ({id, version}) from the launch template: a new launch template is a
    new id, which node groups cannot change in place."""
    new = json.loads(json.dumps(documents["prod"]))
    template = next(r for r in new["resources"] if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate")
    template["inputs"]["name"] = "renamed"
    changed = {c["name"]: c for c in plan.compare(documents["prod"], new)["changed"]}
    assert changed["cluster-node"]["action"] == "replace"
    assert changed["cluster-system"]["action"] == "replace"
    assert [(p["path"], p["replaces"]) for p in changed["cluster-system"]["paths"]] == [
        ("launchTemplate.id", "launchTemplate.id cannot change in place")]


def test_an_input_that_only_names_a_replaced_resource_elsewhere_updates(documents):
    """A Deployment whose `spec` refers to a replaced Secret by name is updated, not replaced: only a path that
    holds the Secret's identity counts, and `spec.template...secretKeyRef.name` is no selector."""
    old = json.loads(json.dumps(documents["local"]))
    secret = next(r for r in old["resources"] if r["name"] == "security-airflow-fernet-key")
    deployment = {**secret, "urn": secret["urn"].replace("core/v1:Secret::security-airflow-fernet-key",
                                                         "apps/v1:Deployment::reader"),
                  "type": "kubernetes:apps/v1:Deployment", "name": "reader", "aliases": [], "identity": [],
                  "inputsFrom": {"spec": [secret["urn"]]},
                  "inputs": {"spec": {"selector": {"matchLabels": {"app": "reader"}}, "template": {"spec": {
                      "containers": [{"env": [{"valueFrom": {"secretKeyRef": {"name": "airflow-fernet-key"}}}]}]}}}}}
    old["resources"].append(deployment)
    new = json.loads(json.dumps(old))
    next(r for r in new["resources"] if r["name"] == "security-airflow-fernet-key")["inputs"]["type"] = "Other"
    changed = {c["name"]: c for c in plan.compare(old, new)["changed"]}
    assert changed["security-airflow-fernet-key"]["action"] == "replace"
    assert changed["reader"]["action"] == "update"
    assert [p["path"] for p in changed["reader"]["paths"]] == [
        "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef.name"]


def test_a_new_fernet_key_without_the_previous_one_is_called_out(documents):
    diff = plan.compare(documents["prod"], plan.stack_document("prod", overrides={"fernetKeyRotation": 2}))
    (warning,) = plan.data_loss_warnings(diff, documents["prod"])
    assert "security-fernet-key" in warning and "previousFernetKey" in warning
    assert "WARNING: security-fernet-key" in plan.diff_text({**diff, "warnings": [warning]}, "main")
    with_previous = {**documents["prod"], "settings": [*documents["prod"]["settings"], "airflow:previousFernetKey"]}
    assert plan.data_loss_warnings(diff, with_previous) == []


def test_a_new_order_of_a_set_is_no_change(documents):
    new = json.loads(json.dumps(documents["prod"]))
    workers = next(r for r in new["resources"] if r["name"] == "cluster-system")
    workers["inputs"]["subnetIds"].reverse()
    assert plan.compare(documents["prod"], new)["changed"] == []
    workers["inputs"]["subnetIds"].pop()
    assert [c["action"] for c in plan.compare(documents["prod"], new)["changed"]] == ["replace"]


def test_a_fernet_key_generation_is_a_reviewed_replacement(documents):
    changed = changes(documents, "prod", {"fernetKeyRotation": 2})
    assert changed["security-fernet-key"]["action"] == "replace"
    assert [p["path"] for p in changed["security-fernet-key"]["paths"]] == ["keepers.generation"]
    assert changed["security-airflow-fernet-key"]["action"] == "replace"   # the Secret's data (immutable)
    assert changed["airflow-airflow"]["action"] == "update"                  # the pods' checksum
    assert {c["action"] for c in changed.values()} == {"replace", "update"}
    assert all(name.startswith(("security-", "airflow-")) for name in changed)


def test_an_encrypted_value_in_a_stack_file_runs_as_its_stand_in(clone):
    """`pulumi config set --secret` writes `secure:` values only the stack's secrets provider can read:
    the plan (and the tests) run them as a value of the right form, and print it as a secret."""
    text = (clone / "Pulumi.prod.yaml").read_text()
    (clone / "Pulumi.rotating.yaml").write_text(
        text + "  airflow:previousFernetKey:\n    secure: v1:ZW5jcnlwdGVk\n"
        "  airflow:alertSlackWebhookUrl:\n    secure: v1:ZW5jcnlwdGVk\n")
    done = run_plan("--stack", "rotating", "--format", "json", cwd=clone)
    assert done.returncode == 0, done.stderr
    secret = next(r for r in json.loads(done.stdout)["resources"] if r["name"] == "security-airflow-fernet-key")
    assert secret["inputs"]["stringData"] == plan.REDACTED
    assert "A" * 43 not in done.stdout and "hooks.slack.invalid" not in done.stdout


def test_alias_urns_follow_the_monitor_for_every_kind_of_alias():
    """Each alias becomes the URN the resource had before (as the mock monitor builds URNs): a move into or
    out of a component, a name alias, an alias given as a URN, and a renamed parent's children."""
    import pulumi
    from pulumi.runtime.settings import set_root_resource
    from pulumi.runtime.stack import run_in_stack
    from pulumi.runtime.sync_await import _sync_await

    import mock_engine

    class Box(pulumi.ComponentResource):
        def __init__(self, name, opts=None):
            super().__init__("test:index:Box", name, None, opts)

    def program():
        box = Box("box")
        Box("box-moved-in", pulumi.ResourceOptions(parent=box, aliases=[pulumi.Alias(parent=None)]))
        Box("moved-out", pulumi.ResourceOptions(aliases=[pulumi.Alias(parent=box)]))
        renamed = Box("new", pulumi.ResourceOptions(aliases=[pulumi.Alias(name="old")]))
        Box("new-child", pulumi.ResourceOptions(parent=renamed))
        Box("x", pulumi.ResourceOptions(aliases=["urn:pulumi:s::p::test:index:Box::y"]))

    mocks = mock_engine.PlatformMocks()
    monitor = mock_engine.RecordingMonitor(mocks)
    set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="p", stack="s", preview=False, monitor=monitor)
    set_root_resource(None)
    _sync_await(run_in_stack(program))
    stack = "urn:pulumi:s::p::pulumi:pulumi:Stack::p-s"
    box = next(r.urn for r in monitor.registrations if r.name == "box")
    aliases = {r.name: r.alias_urns for r in monitor.registrations}
    assert aliases["box-moved-in"] == [monitor.make_urn(stack, "test:index:Box", "box-moved-in")]
    assert aliases["moved-out"] == [monitor.make_urn(box, "test:index:Box", "moved-out")]
    assert aliases["new"] == [monitor.make_urn(stack, "test:index:Box", "old")]
    new = next(r.urn for r in monitor.registrations if r.name == "new")
    assert aliases["new-child"] == [monitor.make_urn(new.replace("::new", "::old"), "test:index:Box", "old-child")]
    assert aliases["x"] == ["urn:pulumi:s::p::test:index:Box::y"]


# ---------------------------------------------------------------------------------------------------------
# The managed backends (prod-managed): what their providers replace, and what they change in place

MANAGED = "prod-managed"


def managed_diff(documents, overrides: dict) -> dict:
    return plan.compare(documents[MANAGED], plan.stack_document(MANAGED, overrides=overrides))


def test_an_aurora_major_upgrade_replaces_only_the_cluster_parameter_group(documents):
    """databaseEngineVersion 17.5 -> 18.1: Aurora upgrades the cluster and its instances in place (the engine
    version is no ForceNew, and the program allows major upgrades); the parameter group's family is, so the
    next family's group (named after its family) is made and the cluster moves to it. The protected cluster is
    updated, not replaced."""
    diff = managed_diff(documents, {"databaseEngineVersion": "18.1"})
    assert diff["added"] == [] and diff["removed"] == []
    changed = {c["name"]: c for c in diff["changed"]}
    assert {name: (c["type"], c["action"], c["protected"]) for name, c in changed.items()} == {
        "database-metadata": ("aws:rds/clusterParameterGroup:ClusterParameterGroup", "replace", False),
        "database-aurora": ("aws:rds/cluster:Cluster", "update", True),
        "database-aurora-0": ("aws:rds/clusterInstance:ClusterInstance", "update", True),
        "database-aurora-1": ("aws:rds/clusterInstance:ClusterInstance", "update", True),
    }
    group = "airflow-prod-managed-metadata-aurora-postgresql"
    assert [(p["path"], p["old"], p["new"], p["replaces"]) for p in changed["database-metadata"]["paths"]] == [
        ("family", "aurora-postgresql17", "aurora-postgresql18", "family cannot change in place"),
        ("name", f"{group}17", f"{group}18", "name cannot change in place")]
    assert [(p["path"], p["old"], p["new"], p["replaces"]) for p in changed["database-aurora"]["paths"]] == [
        ("dbClusterParameterGroupName", f"{group}17", f"{group}18", None), ("engineVersion", "17.5", "18.1", None)]
    assert all(not p["replaces"] for name in ("database-aurora-0", "database-aurora-1")
               for p in changed[name]["paths"])
    text = plan.diff_text(diff, "main")
    assert "0 to add, 3 to update, 1 to replace, 0 to remove" in text
    assert "+-aws:rds/clusterParameterGroup:ClusterParameterGroup database-metadata\n" in text
    assert "protected" not in text


def test_valkey_to_redis_replaces_the_protected_broker_and_redis_to_valkey_updates_it(documents):
    """ElastiCache changes an engine in place only from redis to valkey, and never downgrades a version in place
    (the replication group's CustomizeDiff): valkey 8.1 -> redis 7.1 replaces the protected group, which
    Pulumi will refuse; the way back is an update. Either way the parameter group's family changes."""
    redis = plan.stack_document(MANAGED, overrides={"elasticacheEngine": "redis", "elasticacheEngineVersion": "7.1"})
    there = {c["name"]: c for c in plan.compare(documents[MANAGED], redis)["changed"]}
    group = there["broker-elasticache"]
    assert (group["action"], group["protected"]) == ("replace", True)
    assert [(p["path"], p["old"], p["new"], p["replaces"]) for p in group["paths"]] == [
        ("engine", "valkey", "redis", "ElastiCache changes the engine in place only from redis to valkey"),
        ("engineVersion", "8.1", "7.1", "ElastiCache cannot downgrade an engine in place"),
        # Another engine, another final-snapshot suffix (its keepers): the new group's name is free.
        ("finalSnapshotIdentifier", "from broker-final-snapshot", "from the new broker-final-snapshot", None),
        ("parameterGroupName", "airflow-prod-managed-broker-valkey8", "airflow-prod-managed-broker-redis7", None)]
    assert there["broker-broker"]["action"] == "replace"
    assert there["broker-final-snapshot"]["action"] == "replace"
    assert "+-aws:elasticache/replicationGroup:ReplicationGroup broker-elasticache (protected: the replacement " \
           "will fail)" in plan.diff_text({"stack": MANAGED, "added": [], "removed": [], "changed": [group]}, "main")

    back = {c["name"]: c for c in plan.compare(redis, documents[MANAGED])["changed"]}
    assert back["broker-elasticache"]["action"] == "update"
    assert [(p["path"], p["old"], p["new"]) for p in back["broker-elasticache"]["paths"]][:2] == [
        ("engine", "redis", "valkey"), ("engineVersion", "7.1", "8.1")]
    assert back["broker-broker"]["action"] == "replace"
    assert {name for name, c in back.items() if c["action"] == "replace"} == {"broker-broker", "broker-final-snapshot"}


def test_aurora_to_rds_removes_the_protected_cluster(documents):
    """databaseEngine aurora -> rds is no setting change but another database: the Aurora cluster and its
    instances are deleted (protected: Pulumi refuses) and an RDS instance is made empty."""
    diff = managed_diff(documents, {"databaseEngine": "rds"})
    assert {(r["name"], r["type"], r["protected"]) for r in diff["removed"]} == {
        ("database-aurora", "aws:rds/cluster:Cluster", True),
        ("database-aurora-0", "aws:rds/clusterInstance:ClusterInstance", True),
        ("database-aurora-1", "aws:rds/clusterInstance:ClusterInstance", True),
        ("database-metadata", "aws:rds/clusterParameterGroup:ClusterParameterGroup", False),
    }
    assert {(a["name"], a["type"]) for a in diff["added"]} == {
        ("database-rds", "aws:rds/instance:Instance"), ("database-metadata", "aws:rds/parameterGroup:ParameterGroup")}
    assert "  - aws:rds/cluster:Cluster database-aurora (protected: the delete will fail)" in plan.diff_text(
        diff, "main")


def test_conditional_replacements_follow_the_providers_cases(documents):
    """Inputs a provider replaces only in some cases, on the recorded graph: private DNS changes in place on the
    interface endpoint and replaces the gateway one; an ingress rule keeps its kind of source when it points at
    another group and is replaced when it takes a CIDR instead; Valkey 8.1 changes in-transit encryption in
    place, Redis 7.0 does not; an unset port where the state says 6379 is no replacement."""
    new = json.loads(json.dumps(documents[MANAGED]))
    by_name = {(r["name"], r["type"].rsplit(":", 1)[-1]): r for r in new["resources"]}
    by_name["cluster-secretsmanager", "VpcEndpoint"]["inputs"]["privateDnsEnabled"] = False
    by_name["cluster-s3", "VpcEndpoint"]["inputs"]["privateDnsEnabled"] = True
    rules = [r for r in new["resources"] if r["type"] == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"]
    assert len(rules) == 2 and all("referencedSecurityGroupId" in r["inputs"] for r in rules)
    rules[0]["inputs"]["referencedSecurityGroupId"] = "sg-other"
    del rules[1]["inputs"]["referencedSecurityGroupId"]
    rules[1]["inputs"]["cidrIpv4"] = "10.30.0.0/16"
    broker = by_name["broker-elasticache", "ReplicationGroup"]["inputs"]
    broker["transitEncryptionEnabled"] = False
    del broker["port"]
    changed = {c["name"]: c for c in plan.compare(documents[MANAGED], new)["changed"]}
    assert changed["cluster-secretsmanager"]["action"] == "update"
    assert changed["cluster-s3"]["action"] == "replace"
    assert (changed[rules[0]["name"]]["action"], changed[rules[1]["name"]]["action"]) == ("update", "replace")
    assert changed["broker-elasticache"]["action"] == "update"
    broker["engine"], broker["engineVersion"] = "redis", "7.0"
    reasons = {p["path"]: p["replaces"] for p in next(c for c in plan.compare(documents[MANAGED], new)["changed"]
                                                      if c["name"] == "broker-elasticache")["paths"]}
    assert reasons["transitEncryptionEnabled"] == "ElastiCache changes in-transit encryption in place only from " \
                                                  "Redis 7.0.5"
    assert reasons["port"] is None


def _pulumi_args(type_: str):
    """The Args class pulumi-aws (or pulumi-random) generates for a resource type."""
    import importlib

    package, module_type, name = type_.split(":")
    if package == "pulumi":
        return importlib.import_module(f"pulumi_{name}").ProviderArgs
    module = module_type.split("/")[0]
    sdk = importlib.import_module(f"pulumi_{package}" + ("" if module == "index" else f".{module}"))
    resource_module = importlib.import_module(getattr(sdk, name).__module__)
    # `<Name>InitArgs` where a nested type already is `<Name>Args` (an S3 bucket's `versioning`).
    return getattr(resource_module, f"{name}InitArgs", None) or getattr(resource_module, f"{name}Args")


def _input_names(args_class) -> dict[str, str]:
    """Input name -> the repr of its type, of a generated Args class."""
    from pulumi._types import _PULUMI_NAME

    return {getattr(v.fget, _PULUMI_NAME): repr(v.fget.__annotations__.get("return"))
            for v in vars(args_class).values() if isinstance(v, property)}


def test_every_aws_type_the_stacks_register_says_what_replaces_it(documents):
    """A type missing from the tables would show every change as an update, its replacement included (the
    Karpenter policies' `description` holds the version: a Karpenter upgrade replaces them)."""
    registered = {r["type"] for document in documents.values() for r in document["resources"]
                  if r["type"].startswith("aws:")}
    assert len(registered) > 40
    assert sorted(registered - set(plan.REPLACED_ON_CHANGE) - set(plan.UPDATED_IN_PLACE)) == []
    assert not set(plan.REPLACED_ON_CHANGE) & set(plan.UPDATED_IN_PLACE)


@pytest.mark.parametrize("table", ["REPLACED_ON_CHANGE", "REPLACED_WHEN", "SET_INPUTS"])
def test_every_listed_path_is_an_input_of_the_pinned_providers(table):
    """The tables name inputs as the Pulumi SDKs do (`nodeGroupConfigurations`, not the provider's
    `node_group_configuration`): a misspelt path would never match, and a replacement would go unseen. Each
    path of an AWS or random type, down to its nested types, is an input of pulumi-aws 7.51.1 or pulumi-random."""
    import importlib

    entries = getattr(plan, table)
    missing = []
    for type_, paths in entries.items():
        if not type_.startswith(("aws:", "random:", "pulumi:providers:")):
            continue
        for path in (p if isinstance(p, str) else p[0] for p in paths):
            args, inputs = _pulumi_args(type_), None
            for segment in path.split("."):
                inputs = _input_names(args)
                if segment not in inputs:
                    missing.append(f"{type_} {path}")
                    break
                nested = re.search(r"ForwardRef\('(\w+Args)'\)", inputs[segment])
                if nested:
                    args = getattr(importlib.import_module(args.__module__.rsplit(".", 1)[0] + "._inputs"),
                                   nested.group(1))
    assert missing == []


def test_the_longest_chain_is_the_slowest_path_of_waits():
    """A diamond: the slow branch paces the whole; an API call adds its tenth of a minute, a provider nothing."""
    def resource(name, type_, waits=(), chart=None):
        return {"urn": name, "type": type_, "name": name, "custom": True, "waitsFor": list(waits),
                "inputs": {"chart": chart} if chart else {}}
    graph = {r["urn"]: r for r in (
        resource("eks", "aws:eks/cluster:Cluster"),
        resource("k8s", "pulumi:providers:kubernetes", ["eks"]),
        resource("quick", plan.HELM_RELEASE, ["k8s"], chart="keda"),
        resource("slow", plan.HELM_RELEASE, ["k8s"], chart="airflow"),
        resource("policy", "kubernetes:networking.k8s.io/v1:NetworkPolicy", ["quick", "slow"]),
    )}
    minutes, chain = plan.longest_chain(graph)
    assert chain == ["eks", "k8s", "slow", "policy"]
    assert minutes == pytest.approx(plan.MODELLED_CREATE_MINUTES["aws:eks/cluster:Cluster"]
                                    + plan.MODELLED_CHART_MINUTES["airflow"] + plan.MODELLED_DEFAULT_MINUTES)


@pytest.mark.parametrize("stack", ["prod", "prod-managed"])
def test_operators_install_beside_the_csi_drivers_and_the_load_balancer_controller(documents, stack):
    """The operators' provider waits for the nodes and DNS only: the cold `up`'s longest chain no longer runs
    through the CSI drivers and the load balancer controller, and it is shorter than with the operators waiting
    for them as the other releases do (the graph before the tier)."""
    import copy
    doc = documents[stack]
    assert not {"cluster-lb-controller", "cluster-aws-ebs-csi-driver"} & set(doc["coldUp"]["chain"])
    resources = {r["urn"]: r for r in copy.deepcopy(doc["resources"])}
    by_name = {r["name"]: r for r in resources.values() if r["type"] == "pulumi:providers:kubernetes"}
    now, _ = plan.longest_chain(resources)
    assert round(now, 1) == doc["coldUp"]["minutes"]
    by_name["cluster-k8s-operators"]["waitsFor"] = by_name["cluster-k8s"]["waitsFor"]
    before, chain = plan.longest_chain(resources)
    assert now < before
    assert {"cluster-lb-controller", "cluster-aws-ebs-csi-driver"} & {resources[u]["name"] for u in chain}
