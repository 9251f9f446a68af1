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

import pytest

from components import workloads as w
from components.pods import memory_bytes
from mock_engine import run_program
from support.netpol import selects
from support.rendering import Pod, platform_pods
from support.stacks import stack_settings

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
# (README, prerequisites: at least 6 CPUs and 14 GiB).
LOCAL_NODE = {"cpu": 6000, "memory": 14 * GiB, "pods": 110}


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
    """Kubernetes' rule (k8s.io/api core/v1 `Toleration.ToleratesTaint`): the effect matches when the toleration
    names none or the same; a toleration without a key must be `Exists` and matches every key; otherwise the keys
    are equal and, unless the operator is `Exists`, so are the values (`Equal` is the default operator)."""
    def matches(toleration: dict, taint: dict) -> bool:
        if toleration.get("effect") not in (None, "", taint["effect"]):
            return False
        operator = toleration.get("operator") or "Equal"
        if not toleration.get("key"):
            return operator == "Exists"
        if toleration["key"] != taint["key"]:
            return False
        return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")
    tolerations = pod.spec.get("tolerations") or []
    return all(any(matches(t, taint) for t in tolerations) for taint in taints if taint["effect"] != "PreferNoSchedule")


def node_affinity_admits(pod: Pod, labels: dict[str, str]) -> bool:
    """The node selector, and the required node affinity (k8s.io/component-helpers scheduling/corev1/nodeaffinity):
    terms are ORed, a term's expressions ANDed; NotIn and DoesNotExist hold for a node without the label."""
    if not all(labels.get(k) == v for k, v in (pod.spec.get("nodeSelector") or {}).items()):
        return False
    required = (((pod.spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True

    def holds(expression: dict) -> bool:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present, value = key in labels, labels.get(key)
        return {"In": present and value in values, "NotIn": not present or value not in values,
                "Exists": present, "DoesNotExist": not present,
                "Gt": present and value.isdigit() and int(value) > int(values[0]),
                "Lt": present and value.isdigit() and int(value) < int(values[0])}[operator]
    # An empty term matches no node. (matchFields, by the node's name, none of the platform's pods uses.)
    return any(term.get("matchExpressions") and all(holds(e) for e in term["matchExpressions"])
               for term in required["nodeSelectorTerms"])


def required_anti_affinity(pod: Pod) -> list[dict]:
    return ((pod.spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or []


def in_domain(term: dict, node: Node, other: Node) -> bool:
    return other is node if term["topologyKey"] == "kubernetes.io/hostname" else other.zone == node.zone


def term_selects(term: dict, owner: Pod, pod: Pod) -> bool:
    """A term selects pods of its owner's namespace (no `namespaces` or `namespaceSelector` given) by labels."""
    namespaces = term.get("namespaces") or [owner.namespace]
    return pod.namespace in namespaces and selects(term["labelSelector"], pod.labels)


def fits(pod: Pod, needs: dict, node: Node, nodes: list[Node]) -> bool:
    if not node_affinity_admits(pod, node.labels) or not tolerates(pod, node.taints):
        return False
    if needs["cpu"] > node.free["cpu"] or needs["memory"] > node.free["memory"] or node.free["pods"] < 1:
        return False
    # Required anti-affinity holds both ways: the pod's own terms against the pods already there, and the terms of
    # the pods already there against it (the scheduler's InterPodAffinity filter checks both).
    for n in nodes:
        for other, _ in n.placed:
            if any(in_domain(term, node, n) and term_selects(term, pod, other) for term in required_anti_affinity(pod)):
                return False
            if any(in_domain(term, n, node) and term_selects(term, other, pod) for term in required_anti_affinity(other)):
                return False
    return True


def cluster_nodes(settings) -> list[Node]:
    if not settings.is_aws:
        return [Node("kind-control-plane", "local", dict(NODE_LABELS), [], dict(LOCAL_NODE))]
    zones = [f"zone-{chr(97 + i)}" for i in range(settings.zone_count)]
    taints = [t.as_kubernetes() for t in settings.worker_node_taints]
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
                      [dict(w.WORKER_TAINT), *taints]))
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


# What kind runs in kube-system of its one node before anything else, with their requests: kubeadm's static pods
# (cmd/kubeadm/app/phases/controlplane/manifests.go: API server 250m, controller manager 200m, scheduler 100m;
# etcd/local.go: etcd 100m and 100Mi), kubeadm's CoreDNS (2 replicas of 100m and 70Mi) and kind's CNI, kindnet
# (pkg/build/nodeimage/const_cni.go: 100m and 50Mi); kube-proxy and the local-path provisioner request nothing.
KIND_SYSTEM_PODS = [("kube-apiserver", 250, 0, 1), ("kube-controller-manager", 200, 0, 1),
                    ("kube-scheduler", 100, 0, 1), ("etcd", 100, 100 * MiB, 1), ("coredns", 100, 70 * MiB, 2),
                    ("kindnet", 100, 50 * MiB, 1), ("kube-proxy", 0, 0, 1), ("local-path-provisioner", 0, 0, 1)]


def kind_system_pods() -> list[Pod]:
    return [Pod(f"kind {name}", "kube-system", {"k8s-app": name},
                {"containers": [{"name": name, "resources": {"requests": {"cpu": f"{cpu}m", "memory": str(memory)}}}]},
                replicas=replicas)
            for name, cpu, memory, replicas in KIND_SYSTEM_PODS]


def system_pods(settings) -> list[Pod]:
    """The pods the cluster itself runs beside the platform's."""
    return addon_pods() if settings.is_aws else kind_system_pods()


def assign(pod: Pod, needs: dict, node: Node) -> None:
    node.free = {"cpu": node.free["cpu"] - needs["cpu"], "memory": node.free["memory"] - needs["memory"],
                 "pods": node.free["pods"] - 1}
    node.placed.append((pod, needs))


def unassign(pod: Pod, needs: dict, node: Node) -> None:
    node.placed.remove((pod, needs))
    node.free = {"cpu": node.free["cpu"] + needs["cpu"], "memory": node.free["memory"] + needs["memory"],
                 "pods": node.free["pods"] + 1}


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
            if node_affinity_admits(pod, node.labels) and tolerates(pod, node.taints):
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
    """Jobs, and the CronJobs that start them: they come and go, each is placed beside the steady pods."""
    return " Job" in pod.source or ": Job/" in pod.source or ": CronJob/" in pod.source


@pytest.mark.parametrize("stack", ["local", "staging", "prod"])
def test_every_pod_fits_on_the_nodes_the_stack_has(stack_runs, stack):
    settings = stack_settings(stack)
    pods = platform_pods(stack_runs[stack])
    steady = [pod for pod in pods if not is_job(pod)] + system_pods(settings)
    nodes = cluster_nodes(settings)
    assert place(steady, nodes, settings) == []
    # Airflow's migration and create-user Jobs start together with the release; CloudNativePG's Jobs run one
    # at a time (initdb before the instances, a join per further instance): each set must find room next to
    # everything else.
    airflow_jobs = [pod for pod in pods if ": Job/" in pod.source and pod.labels.get("tier") == "airflow"]
    assert len(airflow_jobs) == 2
    assert place(airflow_jobs, copy.deepcopy(nodes), settings) == []
    for job in (pod for pod in pods if is_job(pod) and pod not in airflow_jobs):
        assert place([job], without_one_instance(nodes, job), settings) == [], job.source


def without_one_instance(nodes: list[Node], job: Pod) -> list[Node]:
    """CloudNativePG runs its Jobs in place of an instance: initdb and the major upgrade before the instances start,
    a join before each further one. The nodes as they are with one instance of the Job's cluster not yet there."""
    nodes = copy.deepcopy(nodes)
    cluster = job.labels.get("cnpg.io/cluster")
    for node in nodes:
        for pod, needs in node.placed:
            if cluster and pod.labels.get("cnpg.io/cluster") == cluster and pod.labels.get("cnpg.io/podRole") == "instance":
                unassign(pod, needs, node)
                return nodes
    return nodes


def test_the_laptop_node_holds_the_local_workers_at_their_keda_maximum(stack_runs):
    """Under load KEDA adds local workers up to workerMaxReplicas, and [core] parallelism counts every one of their
    slots: on the README's minimum node the added workers must find room beside the pods already running (the
    scheduler moves none of them), or the tasks queued for them wait for pods that stay Pending. On a node with
    one worker's memory less, the last one would."""
    settings = stack_settings("local")
    steady = [pod for pod in platform_pods(stack_runs["local"]) if not is_job(pod)] + system_pods(settings)
    [worker] = [pod for pod in steady if pod.labels.get("component") == "worker"]
    added = settings.worker_max_replicas - settings.worker_min_replicas
    assert added > 0

    def unplaced_when_scaled_out(nodes: list[Node]) -> list[str]:
        assert place(steady, nodes, settings) == []
        return place([worker], nodes, settings.model_copy(update={"worker_min_replicas": added}))

    assert unplaced_when_scaled_out(cluster_nodes(settings)) == []
    smaller = cluster_nodes(settings)
    smaller[0].free["memory"] -= requests_of(worker)["memory"]
    assert len(unplaced_when_scaled_out(smaller)) == 1


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
    assert len(unplaced) == 3 - min(settings.system_node_count, settings.zone_count) == 1


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


@pytest.mark.parametrize("toleration,taint,tolerated", [
    # Cases from Kubernetes' documentation of taints and tolerations and Toleration.ToleratesTaint.
    ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "w", "effect": "NoSchedule"}, False),
    ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoExecute"}, False),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "", "effect": "NoSchedule"}, False),
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "anything", "effect": "NoSchedule"}, True),
    ({"key": "j", "operator": "Exists"}, {"key": "k", "value": "", "effect": "NoSchedule"}, False),
    ({"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"operator": "Exists", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoExecute"}, False),
])
def test_the_model_tolerates_taints_as_kubernetes_does(toleration, taint, tolerated):
    pod = Pod("a pod", "default", {}, {"tolerations": [toleration], "containers": [{"name": "c"}]})
    assert tolerates(pod, [taint]) is tolerated


@pytest.mark.parametrize("expression,labels,admitted", [
    ({"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]}, {}, True),
    ({"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]},
     {"eks.amazonaws.com/compute-type": "fargate"}, False),
    ({"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"}, {"karpenter.sh/nodepool": "workers"}, False),
    ({"key": "role", "operator": "In", "values": ["worker"]}, {"role": "system"}, False),
    ({"key": "role", "operator": "Exists"}, {"role": "system"}, True),
    ({"key": "cores", "operator": "Gt", "values": ["4"]}, {"cores": "8"}, True),
    ({"key": "cores", "operator": "Lt", "values": ["4"]}, {"cores": "8"}, False),
])
def test_the_model_reads_required_node_affinity_as_kubernetes_does(expression, labels, admitted):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expression]}]}}}
    pod = Pod("a pod", "default", {}, {"affinity": affinity, "containers": [{"name": "c"}]})
    assert node_affinity_admits(pod, labels) is admitted


def test_worker_taints_with_values_of_the_users_choosing_still_admit_the_workers():
    """A worker pool tainted dedicated=airflow: the workers' tolerations must carry that value (Equal), or they
    stay Pending while the nodes sit empty."""
    overrides = {"workerNodeTaints": [{"key": "dedicated", "value": "airflow", "effect": "NO_SCHEDULE"}]}
    settings = stack_settings("staging", overrides)
    run = run_program("staging", overrides=overrides)
    # Staging's workers run on Karpenter's nodes: the model's taints for them are the NodePool's own.
    pool = run.one("kubernetes:karpenter.sh/v1:NodePool").values["spec"]["template"]["spec"]["taints"]
    assert {"key": "dedicated", "value": "airflow", "effect": "NoSchedule"} in pool
    nodes = cluster_nodes(settings)
    assert all(node.taints == pool for node in nodes if node.name.startswith("karpenter-"))
    pods = platform_pods(run)
    unplaced = place([p for p in pods if not is_job(p)] + addon_pods(), nodes, settings)
    # (It failed once in CI, in a run whose default tier passed here three times: what the worker nodes held.)
    assert unplaced == [], [(node.name, node.taints, node.free, [pod.source for pod, _ in node.placed])
                            for node in nodes if not node.name.startswith("system-")]
    workers = [node.name for node in nodes for pod, _ in node.placed if pod.labels.get("component") == "worker"]
    assert len(workers) == settings.worker_min_replicas and all(name.startswith("karpenter-") for name in workers)


def test_required_anti_affinity_also_keeps_other_pods_away():
    """The scheduler honours an existing pod's required anti-affinity against a newcomer that has none."""
    node = Node("only", "zone-a", dict(NODE_LABELS), [], {"cpu": 4000, "memory": 8 * GiB, "pods": 10})
    term = {"labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}
    loner = Pod("loner", "ns", {"app": "loner"}, {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term]}}, "containers": [{"name": "c"}]})
    noisy = Pod("noisy", "ns", {"app": "noisy"}, {"containers": [{"name": "c"}]})
    elsewhere = Pod("noisy elsewhere", "other-ns", {"app": "noisy"}, {"containers": [{"name": "c"}]})
    assert place([loner, noisy, elsewhere], [node], None) == ["noisy (0m, 0Mi)"]


def test_kinds_own_pods_are_counted_on_the_local_node(stack_runs):
    """Before the platform's pods, kind's control plane, CoreDNS and CNI take their share of the one node."""
    settings = stack_settings("local")
    nodes = cluster_nodes(settings)
    assert place(system_pods(settings), nodes, settings) == []
    assert LOCAL_NODE["cpu"] - nodes[0].free["cpu"] == 250 + 200 + 100 + 100 + 2 * 100 + 100
