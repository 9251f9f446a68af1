"""The documents and diffs for people: text, a Mermaid graph of the components, JSON."""

from __future__ import annotations

import json
from typing import Any

import yaml

from plan.common import COMPONENT_PREFIX
from plan.diff import has_changes
from plan.replacements import DEFERRED_INPUTS


def short(urn: str) -> str:
    """`name (type)` of a URN, for people."""
    type_, name = urn.split("::")[-2].split("$")[-1], urn.split("::")[-1]
    return f"{name} ({type_})"


def show(value: Any, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def yaml_block(value: Any, indent: str) -> str:
    text = yaml.safe_dump(value, sort_keys=True, default_flow_style=False, width=100).rstrip()
    return "\n".join(indent + line for line in text.splitlines())


def text_report(doc: dict) -> str:
    by_urn = {r["urn"]: r for r in doc["resources"]}
    lines = [f"Stack {doc['stack']} (project {doc['project']}): {len(doc['resources'])} resources in "
             f"{len(doc['components'])} components, {len(doc['helmReleases'])} Helm releases; the longest chain "
             f"of waits has {max(r['step'] for r in doc['resources'])} steps.",
             f"A cold `up` is modelled at {doc['coldUp']['minutes']:g} minutes on its longest chain: "
             f"{' -> '.join(doc['coldUp']['chain']) or 'nothing slow'}.", "", "Components"]
    for c in doc["components"]:
        lines.append(f"  {c['type'].removeprefix(COMPONENT_PREFIX)} ({c['name']}): {c['resources']} resources; "
                     f"waits for {', '.join(c['waitsFor']) or 'nothing'}")
    lines += ["", "Resources in dependency order (step: type name [parent] <- what it waits for)"]
    for r in doc["resources"]:
        if r["type"].startswith(COMPONENT_PREFIX):
            continue
        parent = f" [{by_urn[r['parent']]['name']}]" if r["parent"] in by_urn else ""
        flags = "".join(f" {flag}" for flag, on in (("protected", r["protect"]), ("retained", r["retainOnDelete"]))
                        if on)
        waits = ", ".join(by_urn[u]["name"] for u in r["waitsFor"])
        lines.append(f"  {r['step']:2d}: {r['type']} {r['name']}{parent}{flags}" + (f" <- {waits}" if waits else ""))
    lines += ["", "Helm releases"]
    for release in doc["helmReleases"]:
        lines.append(f"  {release['release']} ({release['resource']}): chart {release['chart']} "
                     f"{release['version']} from {release['repository']}, namespace {release['namespace']}")
        lines.append(yaml_block(release["values"], "      "))
        for index, text in enumerate(release["valueYamlFiles"]):
            lines.append(f"    valueYamlFiles[{index}]:")
            lines.append("\n".join("      " + line for line in str(text).rstrip().splitlines()))
    lines += ["", policy_text(doc)]
    return "\n".join(lines)


def policy_text(doc: dict) -> str:
    policy = doc["policy"]
    violations = policy["violations"]
    lines = [f"Policy: {policy['rules']} rules, {len(violations)} violations"
             + (f" ({sum(v['enforcement'] == 'mandatory' for v in violations)} mandatory)" if violations else "")]
    for v in violations:
        lines.append(f"  [{v['enforcement']}] {v['policy']}: {short(v['urn'])}: {v['message']}")
    return "\n".join(lines)


def mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;")


def mermaid_report(doc: dict) -> str:
    """Components as nodes (with their Helm releases); an arrow from what is waited for to what waits."""
    ids = {c["name"]: f"c{index}" for index, c in enumerate(doc["components"])}
    charts = {r["resource"]: f"{r['chart']} {r['version']}" for r in doc["helmReleases"]}
    lines = ["flowchart TD"]
    for c in doc["components"]:
        label = f"{c['type'].removeprefix(COMPONENT_PREFIX)} ({c['name']})<br/>{c['resources']} resources"
        if c["helmReleases"]:
            label += "<br/>" + "<br/>".join(charts[r] for r in c["helmReleases"])
        lines.append(f'  {ids[c["name"]]}["{mermaid_label(label)}"]')
    for c in doc["components"]:
        for other in c["waitsFor"]:
            lines.append(f"  {ids[other]} --> {ids[c['name']]}")
    return "\n".join(lines)


def diff_text(diff: dict, ref: str) -> str:
    replaced = [c for c in diff["changed"] if c["action"] == "replace"]
    lines = [f"Stack {diff['stack']}, {ref} → working tree: {len(diff['added'])} to add, "
             f"{len(diff['changed']) - len(replaced)} to update, {len(replaced)} to replace, "
             f"{len(diff['removed'])} to remove."]
    for a in diff["added"]:
        lines.append(f"  + {a['type']} {a['name']}")
    for r in diff["removed"]:
        lines.append(f"  - {r['type']} {r['name']}" + (" (protected: the delete will fail)" if r["protected"] else ""))
    for c in diff["changed"]:
        mark = "+-" if c["action"] == "replace" else "~ "
        note = f" (moved from {short(c['movedFrom'])}, aliased)" if c["movedFrom"] else ""
        if c["action"] == "replace" and c["protected"]:
            note += " (protected: the replacement will fail)"
        lines.append(f"  {mark}{c['type']} {c['name']}{note}")
        for option in c["options"]:
            lines.append(f"      option {option} changes")
        for p in c["paths"]:
            why = f"   [replace: {p['replaces']}]" if p["replaces"] else ""
            why += f"   [refused: {p['refused']}]" if p.get("refused") else ""
            if c["action"] == "update" and c.get("maintenanceWindow") and p["path"] in DEFERRED_INPUTS[c["type"]][0]:
                why += f"   [waits for the maintenance window, {c['maintenanceWindow']}: managedApplyImmediately is off]"
            lines.append(f"      {p['path']}: {show(p['old'], 60)} → {show(p['new'], 60)}{why}")
    if not has_changes(diff):
        lines.append("  no change")
    lines.extend(f"WARNING: {warning}" for warning in diff.get("warnings", ()))
    return "\n".join(lines)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)
