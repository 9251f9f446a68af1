"""Two documents of one stack compared: what is added, removed, updated and replaced (and why), down to the
input paths, with replacements followed through every input taken from a replaced resource."""

from __future__ import annotations

import json
from typing import Any, Optional

from plan.common import HELM_RELEASE
from plan.replacements import (
    DEFERRED_INPUTS,
    KUBERNETES_REPLACED_ON_CHANGE,
    REPLACED_ON_CHANGE,
    REPLACED_WHEN,
    SET_INPUTS,
    refusal,
)


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaves of a value by path (`values.workers.replicas`, `subnetIds[1]`); empty containers are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{path}[{index}]"))
        return out
    return {path: value}


def comparable_inputs(entry: dict) -> dict:
    """The inputs with every set-typed list sorted (a new order is no change)."""
    inputs = json.loads(json.dumps(entry["inputs"]))
    for path in SET_INPUTS.get(entry["type"], ()):
        *parents, last = path.split(".")
        holder = inputs
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(last), list):
            holder[last] = sorted(holder[last], key=lambda item: json.dumps(item, sort_keys=True))
    return inputs


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")


def replacement_reason(entry: dict, path: str, old: Any, new: Any) -> Optional[str]:
    """Why changing `path` of this resource makes Pulumi replace it, or None when it updates in place."""
    type_ = entry["type"]
    if any(_under(path, p) for p in entry["replaceOnChanges"]):
        return "replaceOnChanges"
    for prefix, when, why in REPLACED_WHEN.get(type_, ()):
        if _under(path, prefix) and when(entry, path, old, new):
            return why
    if type_.startswith("kubernetes:") and type_ != HELM_RELEASE and type_.count(":") == 2 \
            and any(_under(path, p) for p in KUBERNETES_REPLACED_ON_CHANGE):
        return "Kubernetes objects are replaced when renamed or moved"
    if any(_under(path, p) for p in REPLACED_ON_CHANGE.get(type_, ())):
        return f"{path.split('[')[0]} cannot change in place"
    return None


def inherited_replacement(entry: dict, key: str, source: dict) -> tuple[str, Optional[str]]:
    """The path, and the reason to replace if any, of an input `key` taken from a replaced resource `source`:
    the paths below `key` that hold the source's identity (its ID, ARN or name, which its replacement
    changes) decide (a node group's `launchTemplate.id`, not all of `launchTemplate`)."""
    identity = set(source.get("identity", ()))
    held = [path for path, value in flatten({key: entry["inputs"].get(key)}).items()
            if isinstance(value, str) and value in identity]
    for path in held:
        reason = replacement_reason(entry, path, None, None)
        if reason:
            return path, reason
    return (held[0] if len(held) == 1 else key), replacement_reason(entry, key, None, None)


def _ignored(entry: dict, path: str) -> bool:
    return any(_under(path, p) for p in entry["ignoreChanges"])


def compare(old_doc: Optional[dict], new_doc: dict) -> dict:
    """Resources added, removed and changed between two documents of one stack (changes by input path)."""
    old = {r["urn"]: r for r in (old_doc or {"resources": []})["resources"]}
    new = {r["urn"]: r for r in new_doc["resources"]}
    added = [u for u in new if u not in old]
    removed = [u for u in old if u not in new]
    # A resource that moved (new name or parent) with an alias to its old identity is the same resource.
    moved: dict[str, str] = {}
    for urn in added:
        for old_urn in removed:
            if old_urn in new[urn]["aliases"] and old_urn not in moved.values():
                moved[urn] = old_urn
                break
    added = [u for u in added if u not in moved]
    removed = [u for u in removed if u not in moved.values()]

    changed = []
    for urn, entry in new.items():
        before = old.get(moved.get(urn, urn))
        if before is None:
            continue
        before_inputs, after_inputs = flatten(comparable_inputs(before)), flatten(comparable_inputs(entry))
        paths = []
        for path in sorted(set(before_inputs) | set(after_inputs)):
            was, now = before_inputs.get(path, None), after_inputs.get(path, None)
            if was == now or _ignored(entry, path):
                continue
            change = {"path": path, "old": was, "new": now, "replaces": replacement_reason(entry, path, was, now)}
            refused = refusal(entry, path, was, now)
            if refused:
                change["refused"] = refused
            paths.append(change)
        options = [key for key in ("protect", "retainOnDelete", "deleteBeforeReplace")
                   if before[key] != entry[key]]
        provider = new.get(entry["provider"] or "", {})
        if before["provider"] != entry["provider"] and before["provider"] not in provider.get("aliases", ()):
            # Pulumi asks the provider (DiffConfig) whether the move replaces the resource.
            options.append("provider")
        if not paths and not options and urn not in moved:
            continue
        changed.append({"urn": urn, "type": entry["type"], "name": entry["name"], "movedFrom": moved.get(urn),
                        "protected": entry["protect"], "options": options, "paths": paths,
                        "maintenanceWindow": deferred_to_maintenance(entry)})
    _follow_replacements(new, changed)
    return {
        "stack": new_doc["stack"],
        "added": [{"urn": u, "type": new[u]["type"], "name": new[u]["name"]} for u in sorted(added)],
        "removed": [{"urn": u, "type": old[u]["type"], "name": old[u]["name"], "protected": old[u]["protect"]}
                    for u in sorted(removed)],
        "changed": sorted(changed, key=lambda c: c["urn"]),
    }


def _follow_replacements(resources: dict[str, dict], changed: list[dict]) -> None:
    """A replaced resource gets a new ID (and new outputs): every input taken from it changes too, and where
    that input cannot change in place, its resource is replaced in turn (a new VPC, new subnets)."""
    by_urn = {c["urn"]: c for c in changed}
    replaced = {u for u, c in by_urn.items() if any(p["replaces"] for p in c["paths"])}
    while True:
        found = False
        for urn, entry in resources.items():
            inputs_from = dict(entry.get("inputsFrom", {}))
            if entry.get("provider"):
                inputs_from["(provider)"] = [entry["provider"]]
            for key, sources in inputs_from.items():
                source = next((s for s in sources if s in replaced), None)
                if source is None or _ignored(entry, key):
                    continue
                change = by_urn.get(urn)
                if change is None:
                    change = by_urn[urn] = {"urn": urn, "type": entry["type"], "name": entry["name"],
                                            "movedFrom": None, "protected": entry["protect"], "options": [],
                                            "paths": [], "maintenanceWindow": deferred_to_maintenance(entry)}
                    changed.append(change)
                reason: Optional[str]
                if key == "(provider)":
                    path, reason = key, f"its provider {resources[source]['name']} is replaced"
                else:
                    path, reason = inherited_replacement(entry, key, resources[source])
                if any(p["path"] == path for p in change["paths"]):
                    continue
                change["paths"].append({"path": path, "old": f"from {resources[source]['name']}",
                                        "new": f"from the new {resources[source]['name']}", "replaces": reason})
                if reason and urn not in replaced:
                    replaced.add(urn)
                    found = True
        if not found:
            break
    for change in changed:
        change["paths"].sort(key=lambda p: p["path"])
        change["action"] = "replace" if any(p["replaces"] for p in change["paths"]) else "update"
    changed.sort(key=lambda c: c["urn"])


def data_loss_warnings(diff: dict, new_doc: dict) -> list[str]:
    """Changes the plan allows but that lose data, named for the reviewer."""
    warnings = []
    for change in diff["changed"]:
        if change["action"] == "replace" and change["type"] == "random:index/randomBytes:RandomBytes" \
                and change["name"].endswith("fernet-key") and "airflow:previousFernetKey" not in new_doc["settings"]:
            warnings.append(f"{change['name']}: a new Fernet key without airflow:previousFernetKey leaves every "
                            "connection, variable and trigger encrypted with the old key unreadable (docs/operations.md, "
                            "Rotate secrets); never lower or remove airflow:fernetKeyRotation")
    return warnings


def has_changes(diff: dict) -> bool:
    return bool(diff["added"] or diff["removed"] or diff["changed"])


def deferred_to_maintenance(entry: dict) -> Optional[str]:
    """The window an update of these inputs of a managed data store waits for (applyImmediately off)."""
    if entry["type"] not in DEFERRED_INPUTS or entry["inputs"].get("applyImmediately"):
        return None
    window = DEFERRED_INPUTS[entry["type"]][1]
    return entry["inputs"].get(window) or "its own, which AWS picked"
