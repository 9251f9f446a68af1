"""Namespaces under Pod Security Admission: each component creates its own this one way."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s


def namespace_with_pod_security(resource_name: str, namespace: str, level: str,
                                opts: pulumi.ResourceOptions,
                                labels: Optional[dict[str, str]] = None) -> k8s.core.v1.Namespace:
    """A namespace that enforces a Pod Security Admission level and warns about and audits `restricted`."""
    return k8s.core.v1.Namespace(
        resource_name,
        metadata={"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": level,
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted",
            **(labels or {}),
        }},
        opts=opts)
