"""The worker capacity model: how many Celery workers a Karpenter instance type holds, and whether the NodePool's
limits hold KEDA's maximum. The settings use it to refuse a stack whose workers could never all be scheduled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from components.cluster.settings import NodeSettings
from components.pods import memory_bytes, millicores
from components.workloads import GIT_SYNC_REQUESTS


@dataclass(frozen=True)
class WorkerShape:
    """A Celery worker as the capacity model needs it (Airflow's settings)."""
    cpu: str
    memory: str
    max_replicas: int
    # DAGs from git: every worker pod carries a git-sync container too.
    git_sync: bool


# Instance sizes Karpenter may pick for workers: vCPUs, and max pods (the VPC CNI's, without prefix delegation);
# memory follows the family's class (m: 4 GiB a vCPU, c: 2, r: 8). Other families are not modelled.
_SIZE_VCPUS_PODS = {"large": (2, 29), "xlarge": (4, 58), "2xlarge": (8, 58), "4xlarge": (16, 234),
                    "8xlarge": (32, 234), "12xlarge": (48, 234), "16xlarge": (64, 737), "24xlarge": (96, 737)}
_GIB_PER_VCPU = {"m": 4, "c": 2, "r": 8}
# What a node keeps from its workers, as Karpenter plans it: the VM's memory overhead (its
# vmMemoryOverheadPercent), EKS's kube-reserved (CPU by its tiers; memory 255Mi + 11Mi a pod), the kubelet's
# eviction threshold, and the DaemonSets every node runs (EKS add-ons, node-exporter), rounded up.
_VM_MEMORY_OVERHEAD = 0.075
_DAEMONSETS_CPU_M, _DAEMONSETS_MEMORY_MI, _EVICTION_MI = 350, 450, 100


def _kube_reserved_cpu_m(vcpus: int) -> int:
    """EKS's kube-reserved CPU: 6 % of the first core, 1 % of the second, 0.5 % of the next two, 0.25 % above."""
    return int(60 + 10 * (vcpus > 1) + 5 * min(max(vcpus - 2, 0), 2) + 2.5 * max(vcpus - 4, 0))


def workers_per_node(workers: WorkerShape, family: str, size: str) -> Optional[int]:
    """How many Celery workers (by their requests) one node of this type holds, or None when not modelled."""
    if size not in _SIZE_VCPUS_PODS or family[:1] not in _GIB_PER_VCPU:
        return None
    vcpus, pods = _SIZE_VCPUS_PODS[size]
    cpu_m = vcpus * 1000 - _kube_reserved_cpu_m(vcpus) - _DAEMONSETS_CPU_M
    memory_mi = (vcpus * _GIB_PER_VCPU[family[:1]] * 1024 * (1 - _VM_MEMORY_OVERHEAD) - (255 + 11 * pods)
                 - _EVICTION_MI - _DAEMONSETS_MEMORY_MI)
    worker_cpu_m, worker_memory = worker_pod_requests(workers)
    return max(0, min(cpu_m // worker_cpu_m, int(memory_mi * 2**20 // worker_memory)))


def worker_pod_requests(workers: WorkerShape) -> tuple[int, int]:
    """A Celery worker pod's requests, millicores and bytes: the worker and, when DAGs come from git, git-sync."""
    cpu, memory = millicores(workers.cpu), memory_bytes(workers.memory)
    if workers.git_sync:
        cpu, memory = cpu + millicores(GIT_SYNC_REQUESTS[0]), memory + memory_bytes(GIT_SYNC_REQUESTS[1])
    return cpu, memory


def worker_capacity_problems(nodes: NodeSettings, workers: WorkerShape) -> list[tuple[str, str]]:
    """KEDA's maximum against the NodePool. Karpenter picks whichever allowed type is cheapest for the workers
    pending at that moment, and never repacks workers (do-not-disrupt), so the limits must hold the maximum
    even if every node is of the allowed type that packs the fewest within them. Types the model does not
    know get the totals check only."""
    worst: Optional[tuple[int, str]] = None
    fitting, unknown = False, False
    for family in nodes.karpenter_instance_families:
        for size in nodes.karpenter_instance_sizes:
            per_node = workers_per_node(workers, family, size)
            if per_node is None:
                unknown = True
                continue
            if per_node == 0:
                continue   # Karpenter never picks a type a worker does not fit
            fitting = True
            vcpus = _SIZE_VCPUS_PODS[size][0]
            node_count = min(nodes.karpenter_cpu_limit // vcpus,
                             nodes.karpenter_memory_limit_gib // (vcpus * _GIB_PER_VCPU[family[:1]]))
            if worst is None or node_count * per_node < worst[0]:
                worst = (node_count * per_node, f"{family}.{size}")
    problems = _worker_totals_problems(nodes, workers) if unknown else []
    if not fitting and not unknown:
        return [("workerCpu", f"a worker of workerCpu {workers.cpu} and workerMemory "
                              f"{workers.memory} fits on none of the karpenterInstanceFamilies x "
                              "karpenterInstanceSizes: allow larger sizes or ask less")]
    if worst is not None and worst[0] < workers.max_replicas:
        problems.append(("workerMaxReplicas", f"{workers.max_replicas} workers of {workers.cpu} vCPU "
                         f"and {workers.memory} may not fit the worker NodePool: karpenterCpuLimit / "
                         f"karpenterMemoryLimitGib ({nodes.karpenter_cpu_limit} vCPUs, "
                         f"{nodes.karpenter_memory_limit_gib} GiB) hold {worst[0]} on {worst[1]} nodes, the "
                         "allowed type that packs the fewest; raise karpenterCpuLimit and karpenterMemoryLimitGib, "
                         "narrow the types or lower workerMaxReplicas"))
    return problems


def _worker_totals_problems(nodes: NodeSettings, workers: WorkerShape) -> list[tuple[str, str]]:
    """Without a model of the instance types: at least the workers' requests must be within the limits."""
    cpu_m, memory_each = worker_pod_requests(workers)
    cpu, memory = workers.max_replicas * cpu_m, workers.max_replicas * memory_each
    if cpu > nodes.karpenter_cpu_limit * 1000 or memory > nodes.karpenter_memory_limit_gib * 2**30:
        return [("workerMaxReplicas", f"{workers.max_replicas} workers need {cpu / 1000:g} vCPUs and "
                 f"{memory / 2**30:g} GiB; karpenterCpuLimit ({nodes.karpenter_cpu_limit}) / "
                 f"karpenterMemoryLimitGib ({nodes.karpenter_memory_limit_gib}) allow less")]
    return []
