"""The Cluster component, as the whole program builds it for each stack file."""

import ipaddress
import json

import pytest
import yaml

from components.cluster import ADDONS_AFTER_NODES, ADDONS_BEFORE_NODES, load_balancer_controller_policy, subnet_plan
from mock_engine import REPO, SCHEMAS, STACKS, ProgramFailed, is_secret, load_stack_config, run_program, unwrap
from support.netpol import selects
from support.rendering import chart_name
from support.schemas import chart_defaults, missing_value_paths, validate_kubernetes_object

AWS_STACKS = ("prod", "staging")


def test_every_component_is_a_component_resource_with_the_platform_token(stack_runs):
    for run in stack_runs.values():
        components = run.where(lambda r: not r.custom)
        assert components, run.stack
        for component in components:
            assert component.type.startswith("airflow:platform:"), component.type
        assert run.one("airflow:platform:Cluster")


@pytest.mark.parametrize("stack", STACKS)
def test_every_resource_is_a_child_of_a_component(stack_runs, stack):
    run = stack_runs[stack]
    for registration in run.registrations:
        if registration.type == "pulumi:providers:aws":
            continue  # the one stack-level provider, handed down to the components
        assert any(a.type.startswith("airflow:platform:") for a in run.ancestors(registration)) \
            or registration.type.startswith("airflow:platform:"), registration.name


@pytest.mark.parametrize("stack", STACKS)
def test_every_cloud_resource_uses_an_explicit_provider(stack_runs, stack):
    # Default aws and kubernetes providers are disabled in every stack file; this proves the program never
    # needs one (so it cannot land in whatever account or context the shell points at).
    run = stack_runs[stack]
    stack_file = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
    assert set(stack_file["pulumi:disable-default-providers"]) == {"aws", "kubernetes"}
    cloud = run.where(lambda r: r.custom and r.type.split(":")[0] in ("aws", "kubernetes"))
    assert cloud
    for registration in cloud:
        package = registration.type.split(":")[0]
        assert registration.provider, registration.name
        assert f"::pulumi:providers:{package}::default" not in registration.provider, registration.name
        assert run.provider_of(registration).type == f"pulumi:providers:{package}", registration.name


def test_local_creates_no_aws_resource_and_uses_the_named_context(local):
    assert not local.where(lambda r: r.type.startswith("aws:") or r.type == "pulumi:providers:aws")
    provider = local.one("pulumi:providers:kubernetes")
    assert provider.values["context"] == "kind-airflow"
    assert unwrap(local.outputs["cluster_name"]) == "kind-airflow"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_eks_cluster_is_pinned_private_encrypted_and_logged(stack_runs, stack):
    run = stack_runs[stack]
    eks = run.one("aws:eks/cluster:Cluster")
    values = eks.values
    assert values["version"] == "1.35"
    assert values["accessConfig"]["authenticationMode"] == "API"
    # No hidden entry for the creator: every admin entry, the deployer's included, is in the program.
    assert values["accessConfig"]["bootstrapClusterCreatorAdminPermissions"] is False
    assert values["bootstrapSelfManagedAddons"] is False
    assert set(values["enabledClusterLogTypes"]) == {"api", "audit", "authenticator", "controllerManager",
                                                     "scheduler"}
    assert values["vpcConfig"]["endpointPrivateAccess"] is True
    assert values["vpcConfig"]["endpointPublicAccess"] is True
    assert values["vpcConfig"]["publicAccessCidrs"] == ["203.0.113.0/24"]

    key = run.one("aws:kms/key:Key", "cluster-secrets")
    assert values["encryptionConfig"]["resources"] == ["secrets"]
    assert values["encryptionConfig"]["provider"]["keyArn"] == key.state["arn"]
    assert key.values["enableKeyRotation"] is True
    assert key.protect and key.retain_on_delete, "the secrets key must outlive a careless destroy"

    log_group = run.one("aws:cloudwatch/logGroup:LogGroup", "cluster-control-plane")
    assert log_group.values["name"] == f"/aws/eks/{values['name']}/cluster"
    # Kept as long as the stack file says (the audit trail a review asks for), not CloudWatch's default.
    retention = load_stack_config(stack, REPO, [])["airflow:controlPlaneLogRetentionDays"]
    assert log_group.values["retentionInDays"] == int(retention)
    assert eks.depends_on(log_group), "the log group must exist before EKS creates one without retention"


def test_endpoint_is_private_only_without_an_allow_list():
    run = run_program("prod", overrides={"endpointPublicAccessCidrs": []})
    vpc_config = run.one("aws:eks/cluster:Cluster").values["vpcConfig"]
    assert vpc_config["endpointPublicAccess"] is False
    assert vpc_config["endpointPrivateAccess"] is True


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_node_groups_span_private_subnets_in_three_zones(stack_runs, stack):
    run = stack_runs[stack]
    subnets = {s.state["arn"]: s for s in run.of_type("aws:ec2/subnet:Subnet")}
    subnet_by_id = {f"{s.name}-id": s for s in subnets.values()}
    node_groups = run.of_type("aws:eks/nodeGroup:NodeGroup")
    # With Karpenter (the default) the worker managed node group is gone; both are checked without it.
    assert {n.name for n in node_groups} == {"cluster-system"}
    node_groups += run_program(stack, overrides={"karpenter": False}).of_type("aws:eks/nodeGroup:NodeGroup")
    for node_group in node_groups:
        used = [subnet_by_id[subnet_id] for subnet_id in node_group.values["subnetIds"]]
        assert {s.values["availabilityZone"] for s in used} == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
        assert all(s.values["tags"].get("kubernetes.io/role/internal-elb") == "1" for s in used), \
            "node groups belong in the private subnets"
        assert node_group.values["amiType"].startswith("AL2023")
    system = run.one("aws:eks/nodeGroup:NodeGroup", "cluster-system")
    assert system.values["capacityType"] == "ON_DEMAND"
    workers = next(n for n in node_groups if n.name == "cluster-workers")
    assert workers.values["labels"]["airflow.apache.org/node-role"] == "worker"
    assert "scalingConfig.desiredSize" in workers.ignore_changes


def test_staging_runs_spot_workers_behind_one_nat_and_prod_one_nat_per_zone(staging, prod):
    pool = staging.one("kubernetes:karpenter.sh/v1:NodePool").values["spec"]
    capacity = next(r for r in pool["template"]["spec"]["requirements"] if r["key"] == "karpenter.sh/capacity-type")
    assert capacity["values"] == ["spot", "on-demand"]
    assert len(staging.of_type("aws:ec2/natGateway:NatGateway")) == 1
    nat_zones = {n.name for n in prod.of_type("aws:ec2/natGateway:NatGateway")}
    assert nat_zones == {"cluster-nat-eu-west-1a", "cluster-nat-eu-west-1b", "cluster-nat-eu-west-1c"}
    # Each private route table egresses through the NAT gateway of its own zone.
    for table in prod.where(lambda r: r.type == "aws:ec2/routeTable:RouteTable" and "private" in r.name):
        zone = table.name.rsplit("-", 3)[-3:]
        nat_id = table.values["routes"][0]["natGatewayId"]
        assert nat_id == f"cluster-nat-{'-'.join(zone)}-id"


def test_worker_taints_and_labels_reach_the_node_group():
    taint = {"key": "airflow.apache.org/spot", "value": "true", "effect": "NO_SCHEDULE"}
    run = run_program("staging", overrides={"workerNodeTaints": [taint], "workerNodeLabels": {"team": "data"},
                                            "karpenter": False})
    workers = run.one("aws:eks/nodeGroup:NodeGroup", "cluster-workers").values
    assert workers["taints"] == [taint]
    assert workers["labels"] == {"team": "data", "airflow.apache.org/node-role": "worker"}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_addons_are_installed_in_the_right_order_with_network_policy_enforcement(stack_runs, stack):
    run = stack_runs[stack]
    addons = {a.values["addonName"]: a for a in run.of_type("aws:eks/addon:Addon")}
    assert set(addons) == set(ADDONS_BEFORE_NODES) | set(ADDONS_AFTER_NODES)
    assert json.loads(addons["vpc-cni"].values["configurationValues"]) == {"enableNetworkPolicy": "true"}
    node_groups = run.of_type("aws:eks/nodeGroup:NodeGroup")
    for node_group in node_groups:
        for early in ADDONS_BEFORE_NODES:
            assert node_group.depends_on(addons[early]), f"{node_group.name} must wait for {early}"
    for late in ADDONS_AFTER_NODES:
        for node_group in node_groups:
            assert addons[late].depends_on(node_group), f"{late} must wait for {node_group.name}"
    for addon in addons.values():
        assert addon.values["addonVersion"].startswith("v"), "every add-on version is pinned"
    # Only what really needs the Pod Identity agent waits for it.
    agent = addons["eks-pod-identity-agent"]
    assert addons["aws-ebs-csi-driver"].depends_on(agent) and addons["aws-efs-csi-driver"].depends_on(agent)
    assert not addons["coredns"].depends_on(agent) and not addons["metrics-server"].depends_on(agent)
    for csi, service_account in (("aws-ebs-csi-driver", "ebs-csi-controller-sa"),
                                 ("aws-efs-csi-driver", "efs-csi-controller-sa")):
        [association] = addons[csi].values["podIdentityAssociations"]
        assert association["serviceAccount"] == service_account


def test_an_addon_version_from_settings_is_used_verbatim():
    run = run_program("prod", overrides={"addonVersions": {"coredns": "v1.12.4-eksbuild.1"}})
    coredns = next(a for a in run.of_type("aws:eks/addon:Addon") if a.values["addonName"] == "coredns")
    assert coredns.values["addonVersion"] == "v1.12.4-eksbuild.1"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_nodes_use_imdsv2_and_encrypted_volumes(stack_runs, stack):
    template = stack_runs[stack].one("aws:ec2/launchTemplate:LaunchTemplate").values
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert template["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_kubernetes_provider_waits_for_nodes_and_uses_an_exec_kubeconfig(stack_runs, stack):
    run = stack_runs[stack]
    provider = run.one("pulumi:providers:kubernetes", "cluster-k8s")
    for node_group in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert provider.depends_on(node_group)
    eks = run.one("aws:eks/cluster:Cluster")
    assert provider.values["clusterIdentifier"] == eks.state["arn"]
    assert is_secret(provider.inputs["kubeconfig"])
    kubeconfig = json.loads(provider.values["kubeconfig"])
    user = kubeconfig["users"][0]["user"]["exec"]
    assert user["command"] == "aws"
    assert user["args"][:4] == ["eks", "get-token", "--cluster-name", eks.values["name"]]
    assert "token" not in json.dumps(kubeconfig["users"][0]["user"]).replace("get-token", "")
    assert is_secret(run.outputs["kubeconfig"])
    assert unwrap(run.outputs["cluster_name"]) == eks.values["name"]


# What an in-cluster object relies on while it is created and, above all, deleted: DNS, the CSI drivers that
# reclaim its volumes, and the controller that clears its load balancer's finalizer.
CLUSTER_SERVICES = ("coredns", "aws-ebs-csi-driver", "aws-efs-csi-driver")
BOOTSTRAP = ("cluster-gp3", "cluster-lb-controller")


def delete_waves(run) -> dict[str, int]:
    """Pulumi's destroy, step by step: the engine deletes a resource as soon as everything that depends on it
    (through dependencies, property dependencies, its provider or its parent) is gone, and deletes all such
    resources at once. A resource's wave is 0 when nothing depends on it, else one more than its latest
    dependent's. A lower wave goes first only where a path of dependencies joins the two (the tests check that
    too); without one, the order is a race."""
    known = {r.urn for r in run.registrations}
    dependents: dict[str, set[str]] = {urn: set() for urn in known}
    for r in run.registrations:
        targets = set(r.dependencies) | {u for deps in r.property_dependencies.values() for u in deps}
        if r.provider:
            targets.add(r.provider.rsplit("::", 1)[0])
        if r.parent:
            targets.add(r.parent)
        for target in targets & known:
            dependents[target].add(r.urn)
    waves: dict[str, int] = {}

    def wave(urn: str) -> int:
        if urn not in waves:
            waves[urn] = 1 + max((wave(d) for d in dependents[urn]), default=-1)
        return waves[urn]

    for urn in known:
        wave(urn)
    return waves


def in_cluster_objects(run) -> list:
    return [r for r in run.registrations if r.custom and r.type.startswith("kubernetes:")
            and r.name not in BOOTSTRAP]


def on_operators_provider(run, registration) -> bool:
    return run.provider_of(registration).name == "cluster-k8s-operators"


@pytest.mark.parametrize("stack", STACKS)
def test_every_in_cluster_object_is_created_after_and_deleted_before_what_it_relies_on(stack_runs, stack):
    run = stack_runs[stack]
    addons = {a.values["addonName"]: a for a in run.of_type("aws:eks/addon:Addon")}
    services = [addons[name] for name in CLUSTER_SERVICES if name in addons]
    services += [run.one("kubernetes:helm.sh/v3:Release", "cluster-lb-controller")] if addons else []
    assert len(services) == (4 if stack != "local" else 0)
    position = delete_waves(run)
    objects = in_cluster_objects(run)
    assert len(objects) > 40
    for registration in objects:
        # The operators' tier needs DNS and nodes only (test_the_operators_tier_holds_no_volume_and_no_load_balancer).
        relied_on = services[:1] + [*run.of_type("aws:eks/nodeGroup:NodeGroup")] \
            if on_operators_provider(run, registration) else services
        for service in relied_on:
            # Created after: it waits for the service; deleted before: it comes first in the delete order.
            assert run.depends_transitively(registration, service), (registration.name, service.name)
            assert position[registration.urn] < position[service.urn], (registration.name, service.name)
    # Every claim goes before its CSI driver (the EFS claims are the program's; the rest the operators').
    for claim in run.of_type("kubernetes:core/v1:PersistentVolumeClaim"):
        for driver in ("aws-ebs-csi-driver", "aws-efs-csi-driver"):
            if driver in addons:
                assert position[claim.urn] < position[addons[driver].urn]


def test_the_delete_order_model_would_catch_a_missing_dependency(prod):
    """Take the platform provider's dependency on CoreDNS away: the model then deletes CoreDNS before objects
    that need it (the graph walk itself is what changes, not only the reachability check)."""
    import copy
    run = copy.deepcopy(prod)
    coredns = next(a for a in run.of_type("aws:eks/addon:Addon") if a.values["addonName"] == "coredns")
    before = delete_waves(run)
    assert all(before[r.urn] < before[coredns.urn] for r in in_cluster_objects(run))
    for provider in run.of_type("pulumi:providers:kubernetes"):
        provider.dependencies = [u for u in provider.dependencies if u != coredns.urn]
    after = delete_waves(run)
    assert any(after[r.urn] >= after[coredns.urn] for r in in_cluster_objects(run))


# The operators whose custom resources the platform creates, by API group; the Airflow release holds KEDA's
# ScaledObject, whose finalizer only a running KEDA removes (otherwise its namespace never finishes deleting).
OPERATOR_OF_GROUP = {"postgresql.cnpg.io": "cloudnative-pg", "barmancloud.cnpg.io": "plugin-barman-cloud",
                     "monitoring.coreos.com": "kube-prometheus-stack", "cert-manager.io": "cert-manager",
                     # Karpenter's finalizers terminate the nodes of a NodePool it is deleting.
                     "karpenter.sh": "karpenter", "karpenter.k8s.aws": "karpenter"}


@pytest.mark.parametrize("stack", STACKS)
def test_custom_resources_are_deleted_while_their_operator_still_runs(stack_runs, stack):
    run = stack_runs[stack]
    position = delete_waves(run)
    releases = {chart_name(r): r for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    pairs = [(releases["airflow"], releases["keda"])]
    if "karpenter" in releases:
        # Celery workers go before the nodes they run on; the nodes before their controller.
        pairs.append((releases["airflow"], run.one("kubernetes:karpenter.sh/v1:NodePool")))
    for registration in run.registrations:
        group = registration.type.split(":")[1].rsplit("/", 1)[0] if registration.type.startswith("kubernetes:") else ""
        if group in OPERATOR_OF_GROUP:
            pairs.append((registration, releases[OPERATOR_OF_GROUP[group]]))
    assert len(pairs) > 8
    for resource, operator in pairs:
        assert position[resource.urn] < position[operator.urn], (resource.name, operator.name)
        assert run.depends_transitively(resource, operator), (resource.name, operator.name)


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_the_cluster_services_use_their_own_provider(stack_runs, stack):
    run = stack_runs[stack]
    bootstrap = run.one("pulumi:providers:kubernetes", "cluster-k8s-bootstrap")
    platform = run.one("pulumi:providers:kubernetes", "cluster-k8s")
    operators = run.one("pulumi:providers:kubernetes", "cluster-k8s-operators")
    for registration in run.where(lambda r: r.type.startswith("kubernetes:")):
        expected = bootstrap if registration.name in BOOTSTRAP else \
            operators if registration.name in OPERATORS_TIER else platform
        assert run.provider_of(registration).urn == expected.urn, registration.name
    assert {r.name for r in run.registrations if r.provider and on_operators_provider(run, r)} == OPERATORS_TIER
    # What it waits for: the nodes, the admins' access, DNS; not the CSI drivers, not the load balancer controller.
    waited = {run.by_urn(u).name for u in operators.dependencies}
    assert waited == {*(g.name for g in run.of_type("aws:eks/nodeGroup:NodeGroup")), "cluster-coredns", "cluster-eks",
                      *(r.name for r in run.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
                        if r.name.startswith("cluster-admin-"))}


# Releases and objects that install before the CSI drivers and the load balancer controller are up.
OPERATORS_TIER = {"security-cert-manager", "security-selfsigned-issuer", "security-platform-ca",
                  "security-platform-ca-issuer", "airflow-keda",   # (a namespace and a release by each name)
                  "database-cnpg-system", "database-cloudnative-pg", "database-barman-cloud",
                  "cluster-karpenter", "cluster-karpenter-node-class", "cluster-karpenter-node-pool"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")
# What a volume of the tier may be: nothing a CSI driver provides (or reclaims on destroy).
PLAIN_VOLUMES = {"emptyDir", "secret", "configMap", "projected", "downwardAPI"}


def plural(kind: str) -> str:
    return kind.lower()[:-1] + "ies" if kind.endswith("y") else kind.lower() + ("es" if kind.endswith("s") else "s")


def admitted_objects(document: dict) -> list[tuple[str, str, dict]]:
    """(apiGroup, resource, labels) of what the API server admits for a rendered object: itself, and the pods of
    a workload (a CronJob's through its Job template)."""
    group = document["apiVersion"].rsplit("/", 1)[0] if "/" in document["apiVersion"] else ""
    found = [(group, plural(document["kind"]), document["metadata"].get("labels") or {})]
    spec = document.get("spec") or {}
    template = spec.get("jobTemplate", {}).get("spec", {}).get("template") or spec.get("template")
    if document["kind"] in (*WORKLOAD_KINDS, "CronJob") and template:
        found.append(("", "pods", template.get("metadata", {}).get("labels") or {}))
    return found


def volumes_of(value) -> list[dict]:
    """Every `volumes:` entry anywhere in a rendered object (pod templates of any depth)."""
    if isinstance(value, dict):
        own = value.get("volumes") if isinstance(value.get("volumes"), list) else []
        return [*own, *(v for child in value.values() for v in volumes_of(child))]
    if isinstance(value, list):
        return [v for child in value for v in volumes_of(child)]
    return []


def webhook_acts_on(hook: dict, group: str, resource: str, namespace_labels: dict, labels: dict) -> bool:
    """Kubernetes' matching of an admission webhook to a CREATE (rules, namespaceSelector, objectSelector)."""
    rules = [rule for rule in hook.get("rules") or []
             if {"*", group} & set(rule.get("apiGroups") or []) and {"*", resource} & set(rule.get("resources") or [])
             and {"*", "CREATE"} & set(rule.get("operations") or [])]
    return bool(rules) and selects(hook.get("namespaceSelector"), namespace_labels) \
        and selects(hook.get("objectSelector"), labels)


@pytest.mark.parametrize("stack", ["prod", "staging", "prod-managed"])
def test_every_operator_and_controller_survives_the_loss_of_a_node(stack_runs, stack):
    """On AWS each operator or controller the platform installs runs two replicas with leader election, so a
    drained or lost system node leaves one leading (what the charts render, with real Helm)."""
    from support.rendering import render_release
    run = stack_runs[stack]
    controllers = {"cloudnative-pg": ["cloudnative-pg"], "cert-manager": ["cert-manager", "cert-manager-webhook"],
                   "aws-load-balancer-controller": ["aws-load-balancer-controller"]}
    for release in run.of_type("kubernetes:helm.sh/v3:Release"):
        names = controllers.get(chart_name(release))
        if not names:
            continue
        deployments = {d["metadata"]["name"]: d for d in render_release(release) if d["kind"] == "Deployment"}
        for name in names:
            assert deployments[name]["spec"].get("replicas", 1) >= 2, (release.name, name)


@pytest.mark.parametrize("stack", ["prod", "staging", "prod-managed"])
def test_the_operators_tier_holds_no_volume_and_no_load_balancer(stack_runs, stack):
    """What the tier's provider does not wait for, nothing in it may need: no volume a CSI driver provides (and
    reclaims on destroy), no Ingress, Gateway or LoadBalancer Service for the controller, and nothing the
    controller's admission webhooks that fail closed act on while its pods are not up yet: rendered from the
    charts (the tier's and the controller's) with real Helm."""
    from support.rendering import render_release
    run = stack_runs[stack]
    tier = [r for r in run.registrations if r.provider and on_operators_provider(run, r)]
    releases = [r for r in tier if r.type == "kubernetes:helm.sh/v3:Release"]
    expected = {"security-cert-manager", "airflow-keda", "database-cloudnative-pg", "database-barman-cloud",
                "cluster-karpenter"}
    present = {r.name for r in run.of_type("kubernetes:helm.sh/v3:Release")}
    assert {r.name for r in releases} == expected & present and len(releases) >= 3
    controller = render_release(run.one("kubernetes:helm.sh/v3:Release", "cluster-lb-controller"))
    webhooks = [hook for config in controller if config["kind"].endswith("WebhookConfiguration")
                for hook in config.get("webhooks") or [] if hook.get("failurePolicy", "Fail") == "Fail"]
    assert webhooks, "the controller's webhooks that refuse when it is down"
    for release in releases:
        documents = render_release(release)
        assert documents, release.name
        namespace = [r for r in tier if r.type == "kubernetes:core/v1:Namespace"
                     and r.values["metadata"]["name"] == release.values["namespace"]]
        if not namespace:   # EKS's own, which carries no label of the program's
            assert release.values["namespace"] == "kube-system", release.name
        namespace_labels = {**(namespace[0].values["metadata"].get("labels") or {} if namespace else {}),
                            "kubernetes.io/metadata.name": release.values["namespace"]}
        for document in documents:
            name = f"{release.name}: {document['kind']} {document['metadata'].get('name')}"
            assert document["kind"] not in ("PersistentVolumeClaim", "PersistentVolume", "Ingress", "Gateway",
                                            "TargetGroupBinding"), name
            assert not (document["kind"] == "Service" and document["spec"].get("type") == "LoadBalancer"), name
            assert not (document.get("spec") or {}).get("volumeClaimTemplates"), name
            assert all(set(v) - {"name"} <= PLAIN_VOLUMES for v in volumes_of(document.get("spec"))), name
            for group, resource, labels in admitted_objects(document):
                acting = [hook["name"] for hook in webhooks
                          if webhook_acts_on(hook, group, resource, namespace_labels, labels)]
                assert not acting, f"{name} ({resource}) waits for {acting}"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_load_balancer_controller_release(stack_runs, stack):
    run = stack_runs[stack]
    release = run.one("kubernetes:helm.sh/v3:Release", "cluster-lb-controller")
    values = release.values
    assert values["chart"] == "aws-load-balancer-controller"
    assert values["version"] == "3.5.0"
    assert values["namespace"] == "kube-system"
    chart_values = values["values"]
    assert chart_values["clusterName"] == run.one("aws:eks/cluster:Cluster").values["name"]
    assert chart_values["vpcId"] == "cluster-vpc-id"
    assert missing_value_paths(chart_values, chart_defaults("aws-load-balancer-controller"),
                               free_form=("resources", "nodeSelector", "podDisruptionBudget", "podSecurityContext",
                                          "securityContext")) == []
    association = run.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", "cluster-lb-controller")
    assert association.values["serviceAccount"] == chart_values["serviceAccount"]["name"]
    assert release.depends_on(association)
    for node_group in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert run.depends_transitively(release, node_group)

    policy = run.one("aws:iam/rolePolicy:RolePolicy", "cluster-lb-controller").values["policy"]
    published = (SCHEMAS / "aws-load-balancer-controller" / "iam_policy.json").read_text()
    assert json.loads(policy) == json.loads(published), "the controller's role carries its published policy"


def test_pinned_load_balancer_controller_policy_matches_the_published_one():
    pinned = REPO / "components" / "cluster" / "policies" / "aws-load-balancer-controller-v3.5.0.json"
    published = SCHEMAS / "aws-load-balancer-controller" / "iam_policy.json"
    assert json.loads(pinned.read_text()) == json.loads(published.read_text())


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_default_storage_class_is_encrypted_gp3_and_valid(stack_runs, stack):
    run = stack_runs[stack]
    storage_class = run.one("kubernetes:storage.k8s.io/v1:StorageClass", "cluster-gp3")
    values = storage_class.values
    assert values["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert values["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert values["reclaimPolicy"] == "Retain"
    validate_kubernetes_object(storage_class)


def test_throwaway_stack_lets_volumes_and_keys_go():
    run = run_program("staging", overrides={"protectStatefulResources": False})
    assert run.one("kubernetes:storage.k8s.io/v1:StorageClass", "cluster-gp3").values["reclaimPolicy"] == "Delete"
    key = run.one("aws:kms/key:Key", "cluster-secrets")
    assert not key.protect and not key.retain_on_delete


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_subnets_tagged_for_load_balancers(stack_runs, stack):
    run = stack_runs[stack]
    for subnet in run.of_type("aws:ec2/subnet:Subnet"):
        tags = subnet.values["tags"]
        role = "kubernetes.io/role/elb" if "public" in subnet.name else "kubernetes.io/role/internal-elb"
        assert tags[role] == "1"
    endpoint = run.one("aws:ec2/vpcEndpoint:VpcEndpoint").values
    assert endpoint["serviceName"] == "com.amazonaws.eu-west-1.s3"
    assert len(endpoint["routeTableIds"]) == 3
    # S3 has a Gateway and an Interface service of the same name: the lookup must ask for the gateway.
    lookups = [args for token, args in run.invokes if token == "aws:ec2/getVpcEndpointService:getVpcEndpointService"]
    assert lookups and all(args == {"service": "s3", "serviceType": "Gateway"} for args in lookups), lookups


ZONES = [f"eu-west-1{letter}" for letter in "abcdef"]


@pytest.mark.parametrize("cidr,count", [("10.0.0.0/16", 3), ("10.20.0.0/20", 3), ("10.0.0.0/16", 6),
                                        ("10.0.0.0/19", 6)])
def test_subnet_plan_never_overlaps_and_stays_inside_the_vpc(cidr, count):
    vpc = ipaddress.IPv4Network(cidr)
    private, public = subnet_plan(vpc, ZONES[:count])
    networks = [ipaddress.IPv4Network(n) for n in private + public]
    assert len(private) == len(public) == count
    assert all(n.subnet_of(vpc) for n in networks)
    assert all(ipaddress.IPv4Network(n).prefixlen <= 27 for n in public), "a load balancer needs a /27"
    for i, a in enumerate(networks):
        for b in networks[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_a_zones_subnets_do_not_move_when_zones_are_added_removed_or_reordered():
    # EC2 refuses a replacement subnet that overlaps the one it replaces: a zone's CIDRs must depend on
    # the zone alone, so 3 -> 4 zones (or dropping a zone in the middle) leaves the other zones untouched.
    vpc = ipaddress.IPv4Network("10.0.0.0/16")
    layouts = [ZONES[:3], ZONES[:4], ZONES[:6], ["eu-west-1a", "eu-west-1c"], ["eu-west-1c", "eu-west-1b"]]
    seen: dict[str, tuple[str, str]] = {}
    for zones in layouts:
        private, public = subnet_plan(vpc, zones)
        for zone, cidrs in zip(zones, zip(private, public, strict=True), strict=True):
            assert seen.setdefault(zone, cidrs) == cidrs, f"{zone} moves with the layout {zones}"
    assert seen["eu-west-1a"] == ("10.0.0.0/18", "10.0.192.0/22")


def test_stacks_created_with_three_zones_keep_their_subnets():
    # The CIDRs 2- and 3-zone stacks were created with (quarters, and /22s of the last quarter): a layout
    # change that moved them would replace every subnet, which EC2 refuses while the old ones exist.
    assert subnet_plan(ipaddress.IPv4Network("10.20.0.0/16"), ZONES[:3]) == (
        ["10.20.0.0/18", "10.20.64.0/18", "10.20.128.0/18"], ["10.20.192.0/22", "10.20.196.0/22", "10.20.200.0/22"])
    assert subnet_plan(ipaddress.IPv4Network("10.30.0.0/16"), ZONES[:2]) == (
        ["10.30.0.0/18", "10.30.64.0/18"], ["10.30.192.0/22", "10.30.196.0/22"])


def test_zone_letters_beyond_the_layout_are_refused():
    with pytest.raises(ValueError, match="zone letters a to f"):
        subnet_plan(ipaddress.IPv4Network("10.0.0.0/16"), ["us-east-1a", "us-east-1g"])


@pytest.mark.parametrize("partition", ["aws-cn", "aws-us-gov"])
def test_load_balancer_controller_policy_follows_the_partition(partition):
    # Upstream's iam_policy_cn.json / iam_policy_us-gov.json (v3.5.0) differ from iam_policy.json only in
    # the partition of their resource ARNs (and the order of two statements).
    standard = json.loads(load_balancer_controller_policy("3.5.0", "aws"))
    other = json.loads(load_balancer_controller_policy("3.5.0", partition))
    suffix = {"aws-cn": "cn", "aws-us-gov": "us-gov"}[partition]
    published = json.loads((REPO / "tests" / "fixtures" / "aws-load-balancer-controller-v3.5.0" /
                            f"iam_policy_{suffix}.json").read_text())
    canonical = sorted(json.dumps(statement, sort_keys=True) for statement in other["Statement"])
    assert canonical == sorted(json.dumps(statement, sort_keys=True) for statement in published["Statement"])
    resources = [resource for statement in other["Statement"]
                 for resource in ([statement["Resource"]] if isinstance(statement["Resource"], str)
                                  else statement["Resource"])]
    arns = [resource for resource in resources if resource.startswith("arn:")]
    assert arns and all(arn.startswith(f"arn:{partition}:") for arn in arns)
    assert json.loads(json.dumps(other).replace(f'"arn:{partition}:', '"arn:aws:')) == standard
    with pytest.raises(ValueError, match="partition 'aws-iso'"):
        load_balancer_controller_policy("3.5.0", "aws-iso")


ADMIN_POLICY = ":cluster-access-policy/AmazonEKSClusterAdminPolicy"


def admin_entries(run) -> dict[str, str]:
    """principal ARN -> access entry resource name"""
    return {r.values["principalArn"]: r.name for r in run.of_type("aws:eks/accessEntry:AccessEntry")
            if r.name.startswith("cluster-admin-")}


def test_admin_principals_get_cluster_admin_through_access_entries(prod):
    entries = admin_entries(prod)
    assert set(entries) == {"arn:aws:iam::111122223333:role/platform-admins"}
    for principal, name in entries.items():
        association = prod.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation", name).values
        assert association["principalArn"] == principal
        assert association["policyArn"].endswith(ADMIN_POLICY)
        assert association["accessScope"] == {"type": "cluster"}
        # The Helm releases are installed with an admin's access: it must exist first.
        assert prod.one("pulumi:providers:kubernetes", "cluster-k8s").depends_on(
            prod.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation", name))


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_node_groups_follow_the_control_plane_version(stack_runs, stack):
    run = stack_runs[stack]
    eks = run.one("aws:eks/cluster:Cluster")
    for node_group in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert node_group.values["version"] == eks.values["version"]
        assert eks.urn in node_group.property_dependencies["version"], "taken from the cluster, not the setting"


def test_a_kubernetes_upgrade_moves_the_nodes_too():
    run = run_program("prod", overrides={"kubernetesVersion": "1.36"})
    assert {n.values["version"] for n in run.of_type("aws:eks/nodeGroup:NodeGroup")} == {"1.36"}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_the_service_cidr_is_explicit_and_outside_the_vpc(stack_runs, stack):
    values = stack_runs[stack].one("aws:eks/cluster:Cluster").values
    assert values["kubernetesNetworkConfig"] == {"ipFamily": "ipv4", "serviceIpv4Cidr": "172.20.0.0/16"}


def test_a_service_cidr_inside_the_vpc_is_refused():
    from components.config import SettingsError, load_settings
    with pytest.raises(SettingsError, match=r"airflow:kubernetesServiceCidr: must not overlap vpcCidr"):
        load_settings({"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com",
                       "route53ZoneId": "Z0123", "vpcCidr": "10.20.0.0/16", "kubernetesServiceCidr": "10.20.0.0/16"})


def test_entries_of_the_admin_list_keep_their_former_names_as_aliases(prod):
    """Entries were named by list position before; without an alias Pulumi would create the renamed entry
    next to the old one for the same principal (409) and then delete the old one (access lost)."""
    entry = prod.one("aws:eks/accessEntry:AccessEntry", "cluster-admin-role-platform-admins")
    assert "cluster-admin-0" in entry.alias_names
    association = prod.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation", "cluster-admin-role-platform-admins")
    assert "cluster-admin-0" in association.alias_names


def test_a_cluster_created_with_the_creators_implicit_entry_is_not_replaced(prod):
    eks = prod.one("aws:eks/cluster:Cluster")
    assert "accessConfig.bootstrapClusterCreatorAdminPermissions" in eks.ignore_changes


@pytest.mark.parametrize("deployer", ["arn:aws:iam::111122223333:root", "arn:aws:iam::111122223333:role/someone"])
def test_an_up_by_a_principal_the_stack_gives_no_entry_is_refused_before_anything_is_created(deployer):
    with pytest.raises(ProgramFailed, match=r"the principal running `pulumi up` \(arn:aws:iam::111122223333:"
                                            r"(root|role/someone)\) gets no cluster-admin access entry from this "
                                            r"stack.*add it to airflow:adminPrincipalArns") as caught:
        run_program("prod", deployer_arn=deployer)
    assert not [r for r in caught.value.registrations if r.type.startswith("aws:")], "before any AWS resource"


def test_the_deployer_and_the_s3_prefix_list_are_looked_up_by_what_aws_calls_them(prod):
    calls = dict(prod.invokes)
    assert calls["aws:ec2/getPrefixList:getPrefixList"]["name"] == "com.amazonaws.eu-west-1.s3"
    # The session context is asked about the caller's own ARN (an assumed-role session), not a guess.
    assert "aws:index/getCallerIdentity:getCallerIdentity" in calls
    assert calls["aws:iam/getSessionContext:getSessionContext"]["arn"].startswith(
        "arn:aws:sts::111122223333:assumed-role/platform-admins/")


def test_the_service_cidr_defaults_to_what_each_target_uses(stack_runs):
    from components.config import load_settings
    assert str(load_settings({"target": "local"}).service_cidr) == "10.96.0.0/16"
    aws = {"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com", "grafanaHost": "g.example.com",
           "route53ZoneId": "Z0123"}
    # What EKS picks by itself, so a cluster created without the setting is not replaced.
    assert str(load_settings({**aws, "vpcCidr": "192.168.0.0/16"}).service_cidr) == "10.100.0.0/16"
    assert stack_runs["prod"].one("aws:eks/cluster:Cluster").values["kubernetesNetworkConfig"]["serviceIpv4Cidr"] \
        == "172.20.0.0/16"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_zones_are_pinned_and_looked_up_only_to_be_validated(stack_runs, stack):
    run = stack_runs[stack]
    zones = sorted({s.values["availabilityZone"] for s in run.of_type("aws:ec2/subnet:Subnet")})
    assert zones == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    lookups = [args for token, args in run.invokes if token == "aws:index/getAvailabilityZones:getAvailabilityZones"]
    # Every zone of the region, whatever its state today: a zone event neither stops the program nor moves
    # subnets and node groups.
    assert lookups and all(args.get("allAvailabilityZones") is True and "state" not in args for args in lookups)


def test_a_pinned_zone_the_region_does_not_have_is_refused():
    # FAKE_ZONES (the region the mocks answer for) has no eu-west-1e.
    with pytest.raises(ProgramFailed, match=r"airflow:availabilityZones: \['eu-west-1e'\] are not zones of eu-west-1"):
        run_program("prod", overrides={"availabilityZones": ["eu-west-1a", "eu-west-1e"]})
    from components.config import SettingsError, load_settings
    with pytest.raises(SettingsError, match=r"'us-east-1a' is not a zone of region eu-west-1"):
        load_settings({"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com",
                       "grafanaHost": "g.example.com", "route53ZoneId": "Z0123",
                       "availabilityZones": ["eu-west-1a", "us-east-1a"]})
    with pytest.raises(SettingsError, match=r"'eu-west-1z' is not an availability zone name with a letter a to f"):
        load_settings({"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com",
                       "grafanaHost": "g.example.com", "route53ZoneId": "Z0123",
                       "availabilityZones": ["eu-west-1a", "eu-west-1z"]})
    with pytest.raises(SettingsError, match=r"airflow:vpcCidr: must be a /19 or larger for eu-west-1d"):
        load_settings({"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com",
                       "grafanaHost": "g.example.com", "route53ZoneId": "Z0123", "vpcCidr": "10.0.0.0/20",
                       "availabilityZones": ["eu-west-1a", "eu-west-1d"]})


def test_a_zone_added_later_gets_subnets_and_nodes_but_leaves_the_control_plane_alone(prod):
    # EKS refuses control-plane subnets outside the zones it was created in; node groups take the new list.
    four = run_program("prod", overrides={"availabilityZones": ["eu-west-1a", "eu-west-1b", "eu-west-1c",
                                                                 "eu-west-1d"]})
    eks = four.one("aws:eks/cluster:Cluster")
    assert "vpcConfig.subnetIds" in eks.ignore_changes
    subnets = {s.name: s.values["cidrBlock"] for s in four.of_type("aws:ec2/subnet:Subnet")}
    three = {s.name: s.values["cidrBlock"] for s in prod.of_type("aws:ec2/subnet:Subnet")}
    assert {name: cidr for name, cidr in subnets.items() if name in three} == three
    assert subnets["cluster-private-eu-west-1d"] == "10.20.208.0/20"
    for group in four.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert len(group.values["subnetIds"]) == 4


def iam_resource_matches(pattern: str, arn: str) -> bool:
    """IAM's wildcard: `*` matches any run of characters, `?` one (Resource elements)."""
    import fnmatch
    return fnmatch.fnmatchcase(arn, pattern)


def endpoint_admits(policy: dict, arn: str, action: str, account: str) -> bool:
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if not any(a == "s3:*" or a == action for a in actions):
            continue
        if not any(iam_resource_matches(pattern, arn) for pattern in statement["Resource"]):
            continue
        condition = statement.get("Condition", {}).get("StringEquals", {})
        if condition.get("aws:ResourceAccount", account) != account:
            continue
        return True
    return False


def test_the_s3_endpoint_admits_the_stacks_buckets_the_nodes_repositories_and_nothing_else(prod):
    """Every S3 request from the VPC to the region goes through the gateway endpoint (its route tables): its policy
    is the list of reachable buckets. The stack's (from the buckets Storage creates), ECR's image layers and
    AL2023's repositories for the nodes; a foreign bucket, or one named like the stack's in another account, not."""
    [endpoint] = [e for e in prod.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if e.values["vpcEndpointType"] == "Gateway"]
    policy = json.loads(endpoint.values["policy"])
    account = "111122223333"
    buckets = [b.values["bucketPrefix"] + "x7k2" for b in prod.of_type("aws:s3/bucket:Bucket")]
    assert len(buckets) == 2
    for bucket in buckets:
        assert endpoint_admits(policy, f"arn:aws:s3:::{bucket}/dag_id=etl/attempt=1.log", "s3:PutObject", account)
        assert endpoint_admits(policy, f"arn:aws:s3:::{bucket}", "s3:ListBucket", account)
        assert not endpoint_admits(policy, f"arn:aws:s3:::{bucket}/x", "s3:GetObject", "444455556666")
    assert endpoint_admits(policy, "arn:aws:s3:::prod-eu-west-1-starport-layer-bucket/sha256/ab", "s3:GetObject", account)
    assert endpoint_admits(policy, "arn:aws:s3:::al2023-repos-eu-west-1-de612dc2/core/mirrors/x", "s3:GetObject",
                           account)
    assert not endpoint_admits(policy, "arn:aws:s3:::prod-eu-west-1-starport-layer-bucket/x", "s3:PutObject", account)
    # registry.k8s.io redirects a pull from eu-west-1 to its bucket there (kube-state-metrics, git-sync).
    assert endpoint_admits(policy, "arn:aws:s3:::prod-registry-k8s-io-eu-west-1/containers/images/sha256:ab",
                           "s3:GetObject", account)
    assert endpoint_admits(policy, "arn:aws:s3:::amazon-ssm-eu-west-1/latest/linux_amd64/amazon-ssm-agent.rpm",
                           "s3:GetObject", account)
    # Another stack's buckets in the same account (prod-managed's start with prod's prefix), not.
    assert not endpoint_admits(policy, "arn:aws:s3:::airflow-prod-managed-logs-x7k2/x", "s3:GetObject", account)
    assert not endpoint_admits(policy, "arn:aws:s3:::data-lake/raw/x.parquet", "s3:GetObject", account)
    assert not endpoint_admits(policy, "arn:aws:s3:::exfiltration/x", "s3:PutObject", "444455556666")


def test_registry_k8s_ios_bucket_in_london_has_its_own_name():
    from components.cluster.network import node_buckets
    assert "767373bbdcb8270361b96548387bf2a9ad0d48758c35-eu-west-2" in node_buckets("eu-west-2")
    assert "prod-registry-k8s-io-us-east-1" in node_buckets("us-east-1")


def test_tasks_buckets_are_added_to_the_s3_endpoint_by_setting():
    run = run_program("prod", overrides={"s3EndpointBuckets": ["data-lake", "raw-*"]})
    [endpoint] = [e for e in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint") if e.values["vpcEndpointType"] == "Gateway"]
    policy = json.loads(endpoint.values["policy"])
    assert endpoint_admits(policy, "arn:aws:s3:::data-lake/raw/x.parquet", "s3:GetObject", "111122223333")
    assert endpoint_admits(policy, "arn:aws:s3:::raw-events/2026/12/07", "s3:GetObject", "111122223333")
    assert not endpoint_admits(policy, "arn:aws:s3:::data-lake-2/x", "s3:GetObject", "111122223333")
