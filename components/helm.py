"""The one way this project installs a third-party chart."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s


def chart_release(resource_name: str, *, chart: str, version: str, repo: str, namespace: pulumi.Input[str],
                  values: dict, opts: pulumi.ResourceOptions, release_name: Optional[str] = None,
                  timeout: int = 600) -> k8s.helm.v3.Release:
    """A Helm release with a fixed name that rolls itself back on a failed install or upgrade
    (`atomic`), cleans up what a failed upgrade created, and keeps a short history. A repository
    `oci://…` names an OCI registry: Helm takes the chart as `oci://…/<chart>` then, without a repository."""
    oci = repo.startswith("oci://")
    return k8s.helm.v3.Release(
        resource_name,
        name=release_name or chart,
        chart=f"{repo}/{chart}" if oci else chart,
        version=version,
        repository_opts=None if oci else {"repo": repo},
        namespace=namespace,
        values=values,
        atomic=True,
        cleanup_on_fail=True,
        max_history=5,
        timeout=timeout,
        opts=opts,
    )


def pinned(tag: str, digest: str) -> str:
    """An image tag, with its digest when one is set: the runtime pulls by digest, people read the tag."""
    return f"{tag}@{digest}" if digest else tag


def millicores(quantity: str) -> int:
    """A Kubernetes CPU quantity ("250m", "1", "1.5") in millicores."""
    return int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)


def resources(cpu: str, memory: str, memory_limit: Optional[str] = None, cpu_limit: Optional[str] = None) -> dict:
    """Requests and limits: memory limited to the request unless given; CPU limited to `cpu_limit`, by default
    four times the request and at least 200m, so a container bursts through start-up and probes but one that
    spins cannot starve its node."""
    if cpu_limit is None:
        cpu_limit = f"{max(4 * millicores(cpu), 200)}m"
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit or memory}}


# The user of distroless "nonroot" images (the load balancer controller, cert-manager, KEDA): set explicitly,
# so a pod runs under a UID outside the range of host users (10000 and up) whatever the image says.
NONROOT_UID = 65532
