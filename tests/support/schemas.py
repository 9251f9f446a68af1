"""Validation against the official schemas: Kubernetes built-ins, chart values, CRDs."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from mock_engine import SCHEMAS, Registration

KUBERNETES_VERSION = "1.35.0"
# Helm releases are recorded as resources too, but what they render is checked against the chart schemas.
NOT_A_KUBERNETES_OBJECT = ("kubernetes:helm.sh/v3:Release",)


def kubernetes_object(registration: Registration) -> dict[str, Any]:
    """The object Pulumi would send to the API server, rebuilt from the recorded inputs."""
    obj = dict(registration.values)
    _, group_version, kind = registration.type.split(":")
    obj.setdefault("apiVersion", group_version.removeprefix("core/"))
    obj.setdefault("kind", kind)
    obj.setdefault("metadata", {}).setdefault("name", registration.name)
    return obj


def validate_kubernetes_object(registration: Registration) -> None:
    """Raises kubernetes_validate.ValidationError for an object the API server would refuse."""
    kubernetes_validate.validate(kubernetes_object(registration), KUBERNETES_VERSION, strict=True)


@lru_cache(maxsize=None)
def chart_defaults(chart: str) -> dict[str, Any]:
    return yaml.safe_load((SCHEMAS / chart / "values.yaml").read_text())


def missing_value_paths(values: Any, defaults: Any, free_form: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """Key paths set in `values` that the chart's default values.yaml does not have.

    Maps that the chart documents as free-form (annotations, labels, resources, selectors) are named in
    `free_form` as dotted paths and not descended into.
    """
    missing: list[str] = []
    if not isinstance(values, dict):
        return missing
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path in free_form:
            continue
        if not isinstance(defaults, dict) or key not in defaults:
            missing.append(path)
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            missing.extend(missing_value_paths(value, defaults[key], free_form, path))
    return missing


def validate_against_json_schema(instance: Any, schema_path: str) -> None:
    schema = json.loads((SCHEMAS / schema_path).read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(instance)


# Custom resources whose CRD schema is not among the official schemas in ../shared (cert-manager's).
CRDS_WITHOUT_SHARED_SCHEMA = ("cert-manager.io",)


def crd_schema_path(registration: Registration):
    """The shared CRD schema of a custom resource, or None for a built-in Kubernetes type."""
    _, group_version, kind = registration.type.split(":")
    if "/" not in group_version or "." not in group_version.split("/")[0]:
        return None
    group, version = group_version.split("/")
    if group.endswith(".k8s.io") or group in ("apps", "batch", "policy", "autoscaling"):
        return None
    return SCHEMAS / "crds" / group / f"{kind}_{version}.json"


def validate_custom_resource(registration: Registration) -> None:
    """Validates the whole object against its CRD's openAPIV3Schema (structural, unknown fields refused)."""
    _validate_closed(kubernetes_object(registration), crd_schema_path(registration))


def validate_against_crd(obj: dict, group: str, version: str) -> None:
    """The same for an object a chart renders (by its kind, in the CRD schemas of ../shared)."""
    _validate_closed(obj, SCHEMAS / "crds" / group / f"{obj['kind']}_{version}.json")


def _validate_closed(obj: dict, schema_path) -> None:
    schema = json.loads(schema_path.read_text())
    jsonschema.validators.validator_for(schema)(_closed(schema)).validate(obj)


def _closed(schema: Any) -> Any:
    """Kubernetes prunes unknown fields of structural schemas; refuse them instead, so a typo fails a test."""
    if isinstance(schema, dict):
        closed = {k: _closed(v) for k, v in schema.items()}
        if closed.get("type") == "object" and "properties" in closed \
                and "additionalProperties" not in closed and not closed.get("x-kubernetes-preserve-unknown-fields"):
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def validate_chart_values_strictly(values: dict, schema_path: str) -> None:
    """The chart's schema, plus what it leaves open at the top level: every top-level key must be one the
    schema declares (the Airflow chart's schema accepts unknown top-level keys, so a typo there would pass)."""
    validate_against_json_schema(values, schema_path)
    schema = json.loads((SCHEMAS / schema_path).read_text())
    unknown = sorted(set(values) - set(schema.get("properties", {})))
    if unknown:
        raise jsonschema.ValidationError(f"unknown top-level keys {unknown}")
