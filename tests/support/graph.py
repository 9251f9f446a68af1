"""A stack's graph, condensed for a recorded comparison: per URN its parent and a digest of its inputs, of what it
waits for and of its options; per Helm release a digest of each top-level section of its values (so a change
names the section); and a digest of the stack's outputs. Digests of redacted documents (plan's): no secret."""

from __future__ import annotations

import hashlib
import json
from typing import Any

PARTS = {"inputs": ("inputs",), "waits": ("waitsFor", "provider"),
         "options": ("protect", "retainOnDelete", "ignoreChanges", "replaceOnChanges", "deleteBeforeReplace",
                     "aliases")}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(doc: dict, renamed_from: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Per URN: its parent, and a digest of its inputs, of what it waits for, and of its options. A resource
    renamed later (an alias names its URN in `renamed_from`) is keyed by that URN, as Pulumi takes it over."""
    def key(resource: dict) -> str:
        return next((alias for alias in resource["aliases"] if alias in renamed_from), resource["urn"])
    return {key(r): {"parent": r["parent"], **{part: digest({k: r[k] for k in keys}) for part, keys in PARTS.items()}}
            for r in doc["resources"]}


def release_sections(doc: dict) -> dict[str, dict[str, str]]:
    """Per Helm release: a digest of each top-level key of its values, and of its values files."""
    return {release["urn"]: {**{section: digest(value) for section, value in release["values"].items()},
                             "valueYamlFiles": digest(release["valueYamlFiles"])}
            for release in doc["helmReleases"]}


def stack_fingerprint(doc: dict) -> dict:
    return {"resources": fingerprint(doc), "releases": release_sections(doc), "outputs": digest(doc["outputs"])}
