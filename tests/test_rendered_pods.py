"""What would really run: every container of every chart the program installs (rendered by real Helm with
the program's values) and of every pod the operators create, on every stack."""

from __future__ import annotations

import pytest

from mock_engine import STACKS
from support.netpol import selects
from support.rendering import platform_pods, render_all

# Pod Security Standards, `restricted` profile (Kubernetes 1.35): the checks of
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ that a pod spec can fail.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret", "image", "name"}
BASELINE_CAPABILITIES = {"NET_BIND_SERVICE"}


def restricted_violations(spec: dict) -> list[str]:
    problems = []
    pod_context = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(host)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        context = container.get("securityContext") or {}
        name = container["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - BASELINE_CAPABILITIES:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def enforced_levels(run) -> dict[str, str]:
    return {r.values["metadata"]["name"]: r.values["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            for r in run.of_type("kubernetes:core/v1:Namespace")}


def test_the_restricted_check_catches_what_it_must():
    good = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "securityContext": {"allowPrivilegeEscalation": False,
                                                               "capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(good) == []
    assert restricted_violations({**good, "hostNetwork": True}) == ["hostNetwork"]
    assert restricted_violations({**good, "securityContext": {"runAsNonRoot": True}}) == \
        ["app: seccompProfile is None"]
    assert restricted_violations({**good, "volumes": [{"name": "root", "hostPath": {"path": "/"}}]})


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_meets_pod_security_restricted_where_its_namespace_enforces_it(stack_runs, stack):
    run = stack_runs[stack]
    levels = enforced_levels(run)
    checked = 0
    problems = {}
    for pod in platform_pods(run):
        if levels.get(pod.namespace) != "restricted":
            continue
        checked += 1
        found = restricted_violations(pod.spec)
        if found:
            problems[pod.source] = found
    assert checked >= 15
    assert problems == {}


@pytest.mark.parametrize("stack", STACKS)
def test_every_container_has_requests_and_a_memory_limit(stack_runs, stack):
    missing = []
    for pod in platform_pods(stack_runs[stack]):
        for container in pod.containers:
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            if not (requests.get("cpu") and requests.get("memory") and limits.get("memory")):
                missing.append(f"{pod.source}: {container['name']} {resources}")
    assert missing == []


@pytest.mark.parametrize("stack", ("staging", "prod"))
def test_no_fail_closed_webhook_of_the_load_balancer_controller_touches_the_platforms_objects(stack_runs, stack):
    """Chart 3.5.0 registers a Service webhook (failurePolicy Fail) for every Service create: releases that
    start while the controller has no ready endpoint would fail. Every fail-closed webhook must either be
    off or select nothing the platform creates before the controller is up (pods, services)."""
    run = stack_runs[stack]
    rendered = render_all(run)
    namespaces = {r.values["metadata"]["name"]: {**r.values["metadata"]["labels"],
                                                 "kubernetes.io/metadata.name": r.values["metadata"]["name"]}
                  for r in run.of_type("kubernetes:core/v1:Namespace")}
    pods = [pod for pod in platform_pods(run) if pod.namespace in namespaces]
    webhooks = [hook for document in rendered["aws-load-balancer-controller"]
                if document["kind"] == "MutatingWebhookConfiguration" for hook in document["webhooks"]]
    assert webhooks
    for hook in webhooks:
        if hook.get("failurePolicy", "Fail") != "Fail":
            continue
        resources = {resource for rule in hook["rules"] for resource in rule["resources"]}
        assert "services" not in resources, hook["name"]
        if "pods" in resources:
            caught = [pod.source for pod in pods
                      if selects(hook.get("objectSelector"), pod.labels)
                      and selects(hook.get("namespaceSelector"), namespaces[pod.namespace])]
            assert caught == [], hook["name"]


# node-exporter reads the node: host network, PID namespace and hostPath mounts of /proc, /sys and /.
NODE_EXPORTER_HOST_ACCESS = {"hostNetwork", "hostPID", "volume proc: ['hostPath']", "volume sys: ['hostPath']",
                             "volume root: ['hostPath']"}


@pytest.mark.parametrize("stack", STACKS)
def test_pods_in_namespaces_that_enforce_less_still_meet_restricted_but_for_node_exporters_host_access(
        stack_runs, stack):
    """The monitoring namespace enforces `privileged` (for node-exporter) and kube-system nothing: every pod
    there meets `restricted` all the same, and node-exporter fails it only by its host access."""
    levels = enforced_levels(stack_runs[stack])
    checked = 0
    for pod in platform_pods(stack_runs[stack]):
        if levels.get(pod.namespace) == "restricted":
            continue
        checked += 1
        allowed = NODE_EXPORTER_HOST_ACCESS if pod.labels.get("app.kubernetes.io/name") == "prometheus-node-exporter" \
            else set()
        assert set(restricted_violations(pod.spec)) <= allowed, pod.source
    # Locally the monitoring namespace alone: the operator, Grafana, kube-state-metrics, node-exporter,
    # Prometheus and Alertmanager (no admission Jobs: cert-manager issues the webhook certificate).
    assert checked >= 6


@pytest.mark.parametrize("stack", ("local", "prod"))
def test_pods_behind_the_alb_get_a_readiness_gate_from_a_webhook_that_fails_open(stack_runs, stack):
    run = stack_runs[stack]
    namespaces = {r.values["metadata"]["name"]: {**r.values["metadata"]["labels"],
                                                 "kubernetes.io/metadata.name": r.values["metadata"]["name"]}
                  for r in run.of_type("kubernetes:core/v1:Namespace")}
    if stack == "local":
        assert not any("elbv2.k8s.aws/pod-readiness-gate-inject" in labels for labels in namespaces.values())
        return
    [hook] = [h for d in render_all(run)["aws-load-balancer-controller"] if d["kind"] == "MutatingWebhookConfiguration"
              for h in d["webhooks"] if h["name"] == "mpod.elbv2.k8s.aws"]
    assert hook["failurePolicy"] == "Ignore", "a controller that is down must not block pod creation"
    for namespace in ("airflow", "monitoring"):
        assert selects(hook["namespaceSelector"], namespaces[namespace]), namespace


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_mount_names_a_volume_and_nothing_is_declared_twice(stack_runs, stack):
    """The volumes and mounts the program adds to the charts (tmp, Secret files, emptyDirs for read-only images)
    meet the charts' own: a mount without its volume, or a volume or mount path given twice, is refused by
    the API server."""
    checked = 0
    for chart, documents in render_all(stack_runs[stack]).items():
        for document in documents:
            if document["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                continue
            spec = document["spec"]["template"]["spec"]
            volumes = [v["name"] for v in spec.get("volumes") or []]
            claims = [t["metadata"]["name"] for t in document["spec"].get("volumeClaimTemplates") or []]
            where = f"{chart}: {document['kind']}/{document['metadata']['name']}"
            assert len(volumes + claims) == len(set(volumes + claims)), where
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                mounts = container.get("volumeMounts") or []
                assert {m["name"] for m in mounts} <= set(volumes + claims), (where, container["name"])
                paths = [m["mountPath"] for m in mounts]
                assert len(paths) == len(set(paths)), (where, container["name"])
                checked += 1
    assert checked > 20
