"""The restructuring of issue 25 (settings per area, handles, packages, tooling out of tests) changes nothing Pulumi
sees: on every stack the same resources under the same URNs and parents, with the same inputs, waits, provider and
options, the same values in every section of every Helm release, and the same outputs, as the commit before it
(tests/fixtures/graph-before-restructure.json, recorded by `PYTHONPATH=tests python -m scripts.record_graph cb0376b
tests/fixtures/graph-before-restructure.json`). A later change that alters the graph on purpose names what it
changes in LATER_CHANGES, with why."""

from __future__ import annotations

import copy
import json

import pytest

import plan
from mock_engine import REPO, STACKS
from support.graph import stack_fingerprint

FIXTURE = REPO / "tests" / "fixtures" / "graph-before-restructure.json"

# Changes made on purpose since the recording, per stack: resource name -> the parts that changed.
# The alert runbooks moved from the README to docs/alerts.md: every rule's runbook_url (its PrometheusRule).
RUNBOOK_MOVED = ["inputs"]


def rule_names(stack: str) -> list[str]:
    recorded = json.loads(FIXTURE.read_text())["stacks"][stack]["resources"]
    return [name for name in (urn.rsplit("::", 1)[1] for urn in recorded) if name.startswith("observability-rules-")]


LATER_CHANGES: dict[str, dict[str, list[str]]] = {
    stack: {name: RUNBOOK_MOVED for name in rule_names(stack)} for stack in STACKS}


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())["stacks"]


def differences(was: dict, now: dict) -> dict:
    """What differs, readably: resources gone or added; per resource the parts that changed; per release the
    values sections that changed; the outputs."""
    name = lambda urn: urn.rsplit("::", 1)[1]  # noqa: E731
    found: dict = {}
    gone, added = set(was["resources"]) - set(now["resources"]), set(now["resources"]) - set(was["resources"])
    if gone or added:
        found["resources gone"], found["resources added"] = sorted(map(name, gone)), sorted(map(name, added))
    for urn in set(was["resources"]) & set(now["resources"]):
        parts = [part for part, value in was["resources"][urn].items() if now["resources"][urn][part] != value]
        if parts:
            found[name(urn)] = parts
    for urn in set(was["releases"]) & set(now["releases"]):
        sections = sorted(key for key in set(was["releases"][urn]) | set(now["releases"][urn])
                          if was["releases"][urn].get(key) != now["releases"][urn].get(key))
        if sections:
            found[f"{name(urn)} values"] = sections
    if was["outputs"] != now["outputs"]:
        found["outputs"] = ["changed"]
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_the_restructuring_changes_nothing_pulumi_sees(before, stack):
    now = stack_fingerprint(plan.stack_document(stack, secret_digests=True))
    assert differences(before[stack], now) == LATER_CHANGES[stack]


def test_the_comparison_sees_a_change_in_one_section_of_the_airflow_values(before):
    doc = plan.stack_document("prod-managed", secret_digests=True)
    release = next(r for r in doc["helmReleases"] if r["release"] == "airflow")
    resource = next(r for r in doc["resources"] if r["urn"] == release["urn"])
    changed = copy.deepcopy(doc)
    next(r for r in changed["helmReleases"] if r["urn"] == release["urn"])["values"]["workers"]["replicas"] += 1
    next(r for r in changed["resources"] if r["urn"] == release["urn"])["inputs"]["values"]["workers"]["replicas"] += 1
    assert differences(before["prod-managed"], stack_fingerprint(changed)) == {
        **LATER_CHANGES["prod-managed"], resource["name"]: ["inputs"], f"{resource['name']} values": ["workers"]}


def test_the_recorded_graph_sees_a_secret_value_change():
    """Secrets enter the comparison as digests of their (mock) values: a changed password shows, while plan's own
    output keeps them as `[secret]`."""
    from mock_engine import SECRET_SIG, SIG_KEY
    from plan.document import redact

    def secret(value: str) -> dict:
        return {SIG_KEY: SECRET_SIG, "value": value}
    assert redact({"password": secret("one")}) == redact({"password": secret("two")}) == {"password": "[secret]"}
    one, two = redact(secret("one"), secret_digests=True), redact(secret("two"), secret_digests=True)
    assert one != two and one.startswith("[secret ") and "one" not in one
