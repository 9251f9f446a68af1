"""What every pod spec of the platform shares: quantities, requests and limits, the users images run as, and
the `restricted` Pod Security Standard's security contexts (one place, so no workload drifts from it)."""

from __future__ import annotations

import re
from typing import Optional

# The user of distroless "nonroot" images (the load balancer controller, cert-manager, KEDA): set explicitly,
# so a pod runs under a UID outside the range of host users (10000 and up) whatever the image says.
NONROOT_UID = 65532
NOBODY = 65534

RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}

_QUANTITY_FACTORS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def millicores(quantity: str) -> int:
    """A Kubernetes CPU quantity ("250m", "1", "1.5") in millicores."""
    return int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (as the settings accept them) in bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGT]i?)?", quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity")
    number, unit = match.groups()
    return int(float(number) * _QUANTITY_FACTORS[unit or ""])


def resources(cpu: str, memory: str, memory_limit: Optional[str] = None, cpu_limit: Optional[str] = None) -> dict:
    """Requests and limits: memory limited to the request unless given; CPU limited to `cpu_limit`, by default
    four times the request and at least 200m, so a container bursts through start-up and probes but one that
    spins cannot starve its node."""
    if cpu_limit is None:
        cpu_limit = f"{max(4 * millicores(cpu), 200)}m"
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit or memory}}


def pod_security_context(uid: Optional[int] = None, *, gid: Optional[int] = None,
                         fs_group: Optional[int] = None) -> dict:
    """A pod's security context under `restricted`: not root, the runtime's seccomp profile, and the user, group
    and volume group given (None leaves the image's)."""
    ids = {"runAsUser": uid, "runAsGroup": gid, "fsGroup": fs_group}
    return {**{key: value for key, value in ids.items() if value is not None}, "runAsNonRoot": True,
            "seccompProfile": RUNTIME_DEFAULT_SECCOMP}


def container_security_context(*, read_only_root: bool = False) -> dict:
    """A container's security context under `restricted`: not root, no privilege escalation, no capability, the
    runtime's seccomp profile; with `read_only_root` a read-only root file system too."""
    context = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": RUNTIME_DEFAULT_SECCOMP}
    return {**context, "readOnlyRootFilesystem": True} if read_only_root else context
