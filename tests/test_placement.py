"""Placement that can happen: every pod the platform runs (rendered charts + operator-made pods) is placed,
with its requests, node selector, tolerations and required anti-affinity, on the nodes the stack has.

A small model of the scheduler, not the scheduler: first-fit of the largest pods onto the least-loaded
node that satisfies the pod's constraints. Node capacity follows EKS's bootstrap (AL2023 nodeadm): memory
reserved 255Mi + 11Mi per pod the node may run, CPU 6% of the first core, 1% of the second, 0.5% of the
next two and 0.25% of the rest, 100Mi eviction threshold; the pod limit is the VPC CNI's ENI limit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import pytest

from components import workloads as w
from components.airflow import TAINT_EFFECTS
from components.settings import load_settings, memory_bytes
from harness import load_stack_config, run_program
from netpol import selects
from rendering import Pod, platform_pods

# Well-known labels every Linux node carries.
NODE_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
GiB = 2**30
MiB = 2**20
# vCPUs, GiB, pods (eni-max-pods of the VPC CNI without prefix delegation).
INSTANCE_TYPES = {
    "t3.large": (2, 8, 35), "t3.xlarge": (4, 16, 58),
    "m5.large": (2, 8, 29), "m5.xlarge": (4, 16, 58),
    "m6i.large": (2, 8, 29), "m6i.xlarge": (4, 16, 58), "m6i.2xlarge": (8, 32, 58),
    "m6a.large": (2, 8, 29), "m6a.xlarge": (4, 16, 58), "m6a.2xlarge": (8, 32, 58),
    "m6i.4xlarge": (16, 64, 234), "m7i.xlarge": (4, 16, 58), "m7i.2xlarge": (8, 32, 58), "m7i.4xlarge": (16, 64, 234),
    "r6i.large": (2, 16, 29), "r6i.xlarge": (4, 32, 58),
}
# The DaemonSets the EKS add-ons run on every node (aws-node, kube-proxy, eks-pod-identity-agent, the EBS
# and EFS CSI node plugins), by their add-on defaults, rounded up.
EKS_DAEMONSETS = {"cpu": 250, "memory": 400 * MiB, "pods": 5}
# Add-on Deployments that land on the system nodes: coredns, the CSI controllers, metrics-server (2 each).
EKS_ADDON_DEPLOYMENTS = [("coredns", 100, 70 * MiB), ("ebs-csi-controller", 60, 240 * MiB),
                         ("efs-csi-controller", 60, 240 * MiB), ("metrics-server", 100, 200 * MiB)]
# The laptop cluster a newcomer runs `pulumi up --stack local` against: one kind node with what Docker has
# (README, prerequisites: at least 6 CPUs and 12 GiB).
LOCAL_NODE = {"cpu": 6000, "memory": 12 * GiB, "pods": 110}


def cpu_millis(quantity) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def allocatable(instance_type: str) -> dict:
    vcpus, gib, pods = INSTANCE_TYPES[instance_type]
    reserved_cpu = 60 + (10 if vcpus > 1 else 0) + 5 * max(0, min(vcpus, 4) - 2) + 2.5 * max(0, vcpus - 4)
    # The kernel keeps some of the nominal memory for itself: about 5 % on these sizes.
    memory = gib * GiB * 0.95 - (255 + 11 * pods) * MiB - 100 * MiB
    return {"cpu": int(vcpus * 1000 - reserved_cpu), "memory": int(memory), "pods": pods}


@dataclass
class Node:
    name: str
    zone: str
    labels: dict[str, str]
    taints: list[dict]
    free: dict
    placed: list[tuple[Pod, dict]] = field(default_factory=list)


def requests_of(pod: Pod) -> dict:
    """Effective requests: the larger of the biggest init container and the running containers (native
    sidecars, init containers that keep running, count with the latter)."""
    def request(container, key):
        value = ((container.get("resources") or {}).get("requests") or {}).get(key)
        return 0 if value is None else (cpu_millis(value) if key == "cpu" else memory_bytes(str(value)))
    running = [c for c in pod.spec["containers"]] + [c for c in pod.spec.get("initContainers") or []
                                                      if c.get("restartPolicy") == "Always"]
    init = [c for c in pod.spec.get("initContainers") or [] if c.get("restartPolicy") != "Always"]
    return {key: max([sum(request(c, key) for c in running), *[request(c, key) for c in init]])
            for key in ("cpu", "memory")}


def tolerates(pod: Pod, taints: list[dict]) -> bool:
    """Kubernetes' rule: a toleration matches a taint's key (any key when it is `Exists` without one) and its
    effect (any effect when it names none)."""
    tolerations = pod.spec.get("tolerations") or []
    return all(any((t.get("key") == taint["key"] or (t.get("operator") == "Exists" and not t.get("key")))
                   and t.get("effect") in (None, "", taint["effect"])
                   for t in tolerations) for taint in taints if taint["effect"] != "PreferNoSchedule")


def required_anti_affinity(pod: Pod) -> list[dict]:
    return ((pod.spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or []


def fits(pod: Pod, needs: dict, node: Node, nodes: list[Node]) -> bool:
    if not all(node.labels.get(k) == v for k, v in (pod.spec.get("nodeSelector") or {}).items()):
        return False
    if not tolerates(pod, node.taints):
        return False
    if needs["cpu"] > node.free["cpu"] or needs["memory"] > node.free["memory"] or node.free["pods"] < 1:
        return False
    for term in required_anti_affinity(pod):
        domain = [n for n in nodes if (n is node if term["topologyKey"] == "kubernetes.io/hostname"
                                       else n.zone == node.zone)]
        if any(selects(term["labelSelector"], other.labels) for n in domain for other, _ in n.placed):
            return False
    return True


def cluster_nodes(settings) -> list[Node]:
    if not settings.is_aws:
        return [Node("kind-control-plane", "local", dict(NODE_LABELS), [], dict(LOCAL_NODE))]
    zones = [f"zone-{chr(97 + i)}" for i in range(settings.zone_count)]
    taints = [{"key": t.key, "effect": TAINT_EFFECTS[t.effect]} for t in settings.worker_node_taints]
    pools = [("system", settings.system_node_count, settings.system_node_instance_types[0], w.SYSTEM_NODES, [])]
    if settings.has_worker_node_group:
        # Spot pools may get any of their types: plan with the smallest.
        worker_type = min(settings.worker_node_instance_types, key=lambda t: allocatable(t)["memory"])
        pools.append(("worker", settings.worker_node_min, worker_type,
                      {**settings.worker_node_labels, **w.WORKER_NODES}, taints))
    if settings.uses_karpenter:
        # Karpenter launches a node for pending workers from the NodePool's types: a worker must fit the largest
        # of them (one node per worker at the minimum, the most it may need).
        allowed = [f"{family}.{size}" for family in settings.karpenter_instance_families
                   for size in settings.karpenter_instance_sizes if f"{family}.{size}" in INSTANCE_TYPES]
        largest = max(allowed, key=lambda t: allocatable(t)["memory"])
        pools.append(("karpenter", settings.worker_min_replicas, largest,
                      {**settings.worker_node_labels, **w.WORKER_NODES},
                      [{"key": w.WORKER_TAINT["key"], "effect": w.WORKER_TAINT["effect"]}]))
    nodes = []
    for pool, count, instance_type, labels, pool_taints in pools:
        for index in range(count):
            free = allocatable(instance_type)
            free = {"cpu": free["cpu"] - EKS_DAEMONSETS["cpu"], "memory": free["memory"] - EKS_DAEMONSETS["memory"],
                    "pods": free["pods"] - EKS_DAEMONSETS["pods"]}
            nodes.append(Node(f"{pool}-{index}", zones[index % len(zones)], {**NODE_LABELS, **labels}, pool_taints,
                              free))
    return nodes


def addon_pods() -> list[Pod]:
    return [Pod(f"eks add-on {name}", "kube-system", {"app": name},
                {"nodeSelector": dict(w.SYSTEM_NODES), "containers": [{"name": name, "resources": {
                    "requests": {"cpu": f"{cpu}m", "memory": str(memory)}}}]}, replicas=2)
            for name, cpu, memory in EKS_ADDON_DEPLOYMENTS]


def assign(pod: Pod, needs: dict, node: Node) -> None:
    node.free = {"cpu": node.free["cpu"] - needs["cpu"], "memory": node.free["memory"] - needs["memory"],
                 "pods": node.free["pods"] - 1}
    node.placed.append((pod, needs))


def running_replicas(pod: Pod, settings) -> int:
    # With KEDA the chart leaves the worker Deployment's replicas to the ScaledObject's minimum.
    return settings.worker_min_replicas if pod.labels.get("component") == "worker" else pod.replicas


def place(pods: list[Pod], nodes: list[Node], settings) -> list[str]:
    """Places every replica; returns what could not be placed."""
    unplaced = []
    # A DaemonSet's pod runs on every node it selects and tolerates, before anything else is scheduled.
    for pod in (p for p in pods if p.per_node):
        needs = requests_of(pod)
        for node in nodes:
            if all(node.labels.get(k) == v for k, v in (pod.spec.get("nodeSelector") or {}).items()) \
                    and tolerates(pod, node.taints):
                if not fits(pod, needs, node, nodes):
                    unplaced.append(f"{pod.source} on {node.name}")
                    continue
                assign(pod, needs, node)
    replicas = [(pod, requests_of(pod)) for pod in pods if not pod.per_node
                for _ in range(running_replicas(pod, settings))]
    replicas.sort(key=lambda item: (-len(required_anti_affinity(item[0])), -item[1]["cpu"], -item[1]["memory"]))
    for pod, needs in replicas:
        candidates = [node for node in nodes if fits(pod, needs, node, nodes)]
        if not candidates:
            unplaced.append(f"{pod.source} ({needs['cpu']}m, {needs['memory'] // MiB}Mi)")
            continue
        assign(pod, needs, max(candidates, key=lambda n: (n.free["cpu"], n.free["memory"])))
    return unplaced


def is_job(pod: Pod) -> bool:
    return " Job" in pod.source or ": Job/" in pod.source


def stack_settings(stack: str, overrides: Optional[dict] = None):
    config = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack).items() if k.startswith("airflow:")}
    return load_settings({**config, **(overrides or {})})


@pytest.mark.parametrize("stack", ["local", "staging", "prod"])
def test_every_pod_fits_on_the_nodes_the_stack_has(stack_runs, stack):
    settings = stack_settings(stack)
    pods = platform_pods(stack_runs[stack])
    steady = [pod for pod in pods if not is_job(pod)] + (addon_pods() if settings.is_aws else [])
    nodes = cluster_nodes(settings)
    assert place(steady, nodes, settings) == []
    # Airflow's migration and create-user Jobs start together with the release; CloudNativePG's Jobs run one
    # at a time (initdb before the instances, a join per further instance): each set must find room next to
    # everything else.
    airflow_jobs = [pod for pod in pods if is_job(pod) and pod.labels.get("tier") == "airflow"]
    assert len(airflow_jobs) == 2
    assert place(airflow_jobs, copy.deepcopy(nodes), settings) == []
    for job in (pod for pod in pods if is_job(pod) and pod.labels.get("tier") != "airflow"):
        assert place([job], copy.deepcopy(nodes), settings) == [], job.source


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_workers_at_their_minimum_run_on_the_worker_nodes(stack_runs, stack):
    settings = stack_settings(stack)
    nodes = cluster_nodes(settings)
    pods = platform_pods(stack_runs[stack])
    place([p for p in pods if not is_job(p)] + addon_pods(), nodes, settings)
    workers = [pod for node in nodes for pod, _ in node.placed if pod.labels.get("component") == "worker"]
    assert len(workers) == settings.worker_min_replicas
    assert all(node.labels[w.NODE_ROLE_LABEL] == "worker" for node in nodes for pod, _ in node.placed
               if pod.labels.get("component") == "worker")


def test_required_anti_affinity_that_the_nodes_cannot_honour_is_caught():
    """Staging as it was: 3 instances with required one-per-zone on 2 system nodes."""
    settings = stack_settings("staging", {"systemNodeCount": 2})
    run = run_program("staging", overrides={"systemNodeCount": 2})
    pods = [p for p in platform_pods(run) if not is_job(p)]
    instance = next(p for p in pods if p.labels.get("cnpg.io/podRole") == "instance")
    term = {"labelSelector": {"matchLabels": {"cnpg.io/cluster": w.POSTGRES_CLUSTER, "cnpg.io/podRole": "instance"}},
            "topologyKey": "topology.kubernetes.io/zone"}
    forced = Pod(instance.source, instance.namespace, instance.labels,
                 {**instance.spec, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}},
                 replicas=3)
    unplaced = place([forced], cluster_nodes(settings), settings)
    assert len(unplaced) == 3 - settings.system_zones == 1


def test_anti_affinity_is_required_only_where_the_system_nodes_can_honour_it(stack_runs):
    prod, staging = stack_runs["prod"], run_program("staging", overrides={"systemNodeCount": 2})
    cluster = "kubernetes:postgresql.cnpg.io/v1:Cluster"
    assert prod.one(cluster).values["spec"]["affinity"]["podAntiAffinityType"] == "required"
    assert staging.one(cluster).values["spec"]["affinity"]["podAntiAffinityType"] == "preferred"
    redis = "kubernetes:helm.sh/v3:Release"
    assert prod.one(redis, "broker-redis-ha").values["values"]["hardAntiAffinity"] is True
    assert staging.one(redis, "broker-redis-ha").values["values"]["hardAntiAffinity"] is False


def test_a_daemonset_takes_its_share_of_every_node(stack_runs):
    settings = stack_settings("prod")
    nodes = cluster_nodes(settings)
    pods = platform_pods(stack_runs["prod"])
    place([p for p in pods if not is_job(p)] + addon_pods(), nodes, settings)
    on_nodes = [node.name for node in nodes for pod, _ in node.placed
                if pod.labels.get("app.kubernetes.io/name") == "prometheus-node-exporter"]
    assert sorted(on_nodes) == sorted(node.name for node in nodes)
