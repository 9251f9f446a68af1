"""One stack as a document: the program run under the mock engine, every resource with its inputs (secrets
redacted), options and dependencies, the components, Helm releases, a cold `up`'s longest chain and the policy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import pulumi
import yaml

import mock_engine
from plan.common import COMPONENT_PREFIX, HELM_RELEASE, REDACTED, ROOT, PlanError
from policy import rules as policy_rules


def redact(value: Any, secret_digests: bool = False) -> Any:
    """Inputs as plain data: secrets as `[secret]`, string assets as their text. With `secret_digests`, a secret is
    `[secret <digest>]` instead, so a recorded graph sees its value change (under the mocks every secret is a
    stand-in or a seeded fake, never the stack's own; the digest is kept, not the value)."""
    if mock_engine.is_secret(value):
        if secret_digests:
            plain = json.dumps(redact(mock_engine.unwrap(value)), sort_keys=True, default=str)
            return f"{REDACTED[:-1]} {hashlib.sha256(plain.encode()).hexdigest()[:16]}]"
        return REDACTED
    if isinstance(value, pulumi.StringAsset):
        return {"stringAsset": value.text}
    if isinstance(value, dict):
        return {k: redact(v, secret_digests) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secret_digests) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def steps(resources: dict[str, dict]) -> dict[str, int]:
    """For each resource, its place in the longest chain of waits that leads to it (1 = waits for nothing)."""
    memo: dict[str, int] = {}

    def step(urn: str) -> int:
        if urn not in memo:
            memo[urn] = 0  # a cycle cannot happen in a Pulumi graph; guard anyway
            waits = [u for u in resources[urn]["waitsFor"] if u in resources]
            memo[urn] = 1 + max((step(u) for u in waits), default=0)
        return memo[urn]

    return {urn: step(urn) for urn in resources}


# A cold `up`, modelled: typical minutes to create one resource (a Helm release: of its chart, until its pods are
# ready, as `atomic` waits; a CloudNativePG Cluster: until Ready, as its `pulumi.com/waitFor` says). Estimates to
# compare the graph's shapes, not a forecast; anything not listed is an API call (MODELLED_DEFAULT_MINUTES).
MODELLED_CREATE_MINUTES: dict[str, float] = {
    "aws:eks/cluster:Cluster": 10, "aws:eks/nodeGroup:NodeGroup": 4, "aws:eks/addon:Addon": 1.5,
    "aws:ec2/natGateway:NatGateway": 2, "aws:efs/mountTarget:MountTarget": 1.5, "aws:efs/fileSystem:FileSystem": 0.5,
    "aws:rds/cluster:Cluster": 8, "aws:rds/clusterInstance:ClusterInstance": 10, "aws:rds/instance:Instance": 15,
    "aws:elasticache/replicationGroup:ReplicationGroup": 15, "aws:acm/certificateValidation:CertificateValidation": 3,
    "aws:route53/record:Record": 1, "aws:ec2/vpcEndpoint:VpcEndpoint": 1.5,
    "kubernetes:postgresql.cnpg.io/v1:Cluster": 4,
}
MODELLED_CHART_MINUTES: dict[str, float] = {
    "airflow": 6, "kube-prometheus-stack": 3, "redis-ha": 3, "cert-manager": 1.5, "cloudnative-pg": 1,
    "plugin-barman-cloud": 1, "keda": 1, "aws-load-balancer-controller": 1.5, "karpenter": 1.5,
}
MODELLED_DEFAULT_MINUTES = 0.1


def modelled_minutes(resource: dict) -> float:
    if resource["type"] == HELM_RELEASE:
        chart = str(resource["inputs"].get("chart", "")).rsplit("/", 1)[-1]
        return MODELLED_CHART_MINUTES.get(chart, 1)
    if not resource["custom"] or resource["type"].startswith("pulumi:providers:"):
        return 0
    return MODELLED_CREATE_MINUTES.get(resource["type"], MODELLED_DEFAULT_MINUTES)


def longest_chain(resources: dict[str, dict]) -> tuple[float, list[str]]:
    """The chain of waits that paces a cold `up` (each resource starts when all it waits for are done), with its
    modelled minutes: (minutes, URNs from first to last)."""
    memo: dict[str, tuple[float, list[str]]] = {}

    def finish(urn: str) -> tuple[float, list[str]]:
        if urn not in memo:
            waits = [finish(u) for u in resources[urn]["waitsFor"] if u in resources]
            before = max(waits, key=lambda chain: chain[0], default=(0.0, []))
            memo[urn] = (before[0] + modelled_minutes(resources[urn]), [*before[1], urn])
        return memo[urn]

    return max((finish(urn) for urn in sorted(resources)), key=lambda chain: chain[0], default=(0.0, []))


def stack_document(stack: str, root: Path = ROOT, overrides: Optional[dict[str, Any]] = None,
                   secret_digests: bool = False) -> dict:
    """Run the stack file of the program at `root` under the mocks (with config `overrides`, as the tests
    give them); everything a reader or a diff needs (`secret_digests`: see `redact`)."""
    if not (root / f"Pulumi.{stack}.yaml").exists():
        raise PlanError(f"no stack file Pulumi.{stack}.yaml in {root}")
    # A fixed seed: generated values (and what is derived from them) are equal between two runs.
    try:
        # An encrypted value of the stack file runs as its setting's stand-in: the plan never has the secrets.
        run = mock_engine.run_program(stack, overrides, root=root, password_seed=0)
    except mock_engine.ProgramFailed as failed:
        raise PlanError(f"the program failed for stack {stack}: {failed.cause}") from failed
    stack_urn = f"urn:pulumi:{stack}::{mock_engine.PROJECT}::pulumi:pulumi:Stack::{mock_engine.PROJECT}-{stack}"
    by_urn = {r.urn: r for r in run.registrations}
    resources: dict[str, dict] = {}
    for r in run.registrations:
        waits = set(r.dependencies) | {u for deps in r.property_dependencies.values() for u in deps}
        if r.provider:
            waits.add(r.provider.rsplit("::", 1)[0])
        waits.discard(r.parent)
        resources[r.urn] = {
            "urn": r.urn, "type": r.type, "name": r.name,
            "parent": None if r.parent in ("", stack_urn) else r.parent,
            "custom": r.custom, "provider": r.provider.rsplit("::", 1)[0] if r.provider else None,
            "waitsFor": sorted(u for u in waits if u in by_urn),
            "inputsFrom": {key: sorted(deps) for key, deps in sorted(r.property_dependencies.items()) if deps},
            # What other resources hold of this one (a replacement changes it): its ID, ARN and name.
            "identity": sorted({f"{r.name}-id", *(str(v) for v in (
                r.state.get("arn"), r.state.get("name"), r.state.get("bucket"),
                (r.state.get("metadata") or {}).get("name")) if isinstance(v, str))}),
            "protect": r.protect, "retainOnDelete": r.retain_on_delete,
            "ignoreChanges": sorted(r.ignore_changes), "replaceOnChanges": sorted(r.replace_on_changes),
            "deleteBeforeReplace": r.delete_before_replace, "aliases": sorted(set(r.alias_urns)),
            "inputs": redact(r.inputs, secret_digests),
        }
    for urn, step in steps(resources).items():
        resources[urn]["step"] = step
    chain_minutes, chain = longest_chain(resources)

    def component_of(urn: str) -> Optional[str]:
        while urn:
            entry = resources.get(urn)
            if entry is None:
                return None
            if entry["type"].startswith(COMPONENT_PREFIX):
                return urn
            urn = entry["parent"]
        return None

    components = {u: r for u, r in resources.items() if r["type"].startswith(COMPONENT_PREFIX)}
    component_waits: dict[str, set[str]] = {u: set() for u in components}
    members: dict[str, int] = {u: 0 for u in components}
    for urn, entry in resources.items():
        owner = component_of(urn)
        if owner is None:
            continue
        members[owner] += urn != owner
        for dependency in entry["waitsFor"]:
            other = component_of(dependency)
            if other is not None and other != owner:
                component_waits[owner].add(other)

    releases = []
    for urn, entry in resources.items():
        if entry["type"] != HELM_RELEASE:
            continue
        inputs = entry["inputs"]
        owner = component_of(urn)
        if owner is None:
            raise PlanError(f"the Helm release {entry['name']} belongs to no component")
        releases.append({
            "urn": urn, "resource": entry["name"], "component": resources[owner]["name"],
            "release": inputs.get("name"), "version": inputs.get("version"), "namespace": inputs.get("namespace"),
            # An OCI chart names its registry in the chart reference (`oci://…/<chart>`).
            **dict(zip(("repository", "chart"), inputs["chart"].rsplit("/", 1) if inputs.get("chart", "").startswith(
                "oci://") else ((inputs.get("repositoryOpts") or {}).get("repo"), inputs.get("chart")), strict=True)),
            "values": inputs.get("values") or {},
            "valueYamlFiles": [f.get("stringAsset", f) if isinstance(f, dict) else f
                               for f in inputs.get("valueYamlFiles") or []],
        })
    # Components in the order they can complete: each after every component it waits for.
    component_order: list[str] = []
    pending = sorted(components, key=lambda u: components[u]["name"])
    while pending:
        ready = [u for u in pending if component_waits[u] <= set(component_order)] or pending[:1]
        component_order.append(ready[0])
        pending.remove(ready[0])
    stack_file = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {
        "stack": stack,
        "project": mock_engine.PROJECT,
        "settings": sorted((stack_file.get("config") or {})),    # the keys the stack file sets (no values)
        "resources": [resources[u] for u in sorted(resources, key=lambda u: (resources[u]["step"], u))],
        "components": [{"urn": u, "type": c["type"], "name": c["name"], "resources": members[u],
                        "waitsFor": sorted(resources[o]["name"] for o in component_waits[u]),
                        "helmReleases": sorted(r["resource"] for r in releases if r["component"] == c["name"])}
                       for u, c in ((u, components[u]) for u in component_order)],
        "helmReleases": sorted(releases, key=lambda r: r["urn"]),
        # What paces a cold `up`: the resources that take time on its longest chain (MODELLED_CREATE_MINUTES).
        "coldUp": {"minutes": round(chain_minutes, 1),
                   "chain": [resources[u]["name"] for u in chain if modelled_minutes(resources[u]) >= 1]},
        "outputs": redact(run.outputs, secret_digests),
        "policy": policy_report(run, stack, root),
    }


def policy_enforcement(stack: str, root: Path) -> dict[str, str]:
    """The stack's policy-pack config (policy/config/<stack>.json), as enforcement levels."""
    path = root / "policy" / "config" / f"{stack}.json"
    if not path.exists():
        return {}
    return {name: (spec["enforcementLevel"] if isinstance(spec, dict) else spec)
            for name, spec in json.loads(path.read_text()).items()}


def policy_resources(run: mock_engine.ProgramRun) -> list[policy_rules.Resource]:
    """The recorded graph as the policy pack sees it (inputs; protect; which input came from which resource)."""
    return [policy_rules.Resource(type=r.type, name=r.name, urn=r.urn, props=mock_engine.unwrap(r.inputs),
                                  protect=r.protect, property_dependencies=r.property_dependencies)
            for r in run.registrations]


def policy_report(run: mock_engine.ProgramRun, stack: str, root: Path) -> dict:
    violations = policy_rules.evaluate(policy_resources(run), policy_enforcement(stack, root))
    return {"rules": len(policy_rules.RULES), "violations": sorted(violations, key=lambda v: (v["policy"], v["urn"]))}
