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



