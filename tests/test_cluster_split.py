"""The Cluster component split into modules (components/cluster/) changes nothing Pulumi sees: every stack
registers the same resources, under the same URNs and parents, with the same inputs, dependencies, provider
and options as before the split (tests/fixtures/graph-before-cluster-split.json, recorded from the commit
before it with `python tests/test_cluster_split.py --record`)."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from harness import REPO, STACKS

sys.path.insert(0, str(REPO))

import plan  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "graph-before-cluster-split.json"
PARTS = {"inputs": ("inputs",), "waits": ("waitsFor", "provider"),
         "options": ("protect", "retainOnDelete", "ignoreChanges", "replaceOnChanges", "deleteBeforeReplace",
                     "aliases")}


def fingerprint(doc: dict) -> dict[str, dict[str, str]]:
    """Per URN: its parent, and a digest of its inputs, of what it waits for, and of its options."""
    def digest(resource: dict, keys: tuple[str, ...]) -> str:
        return hashlib.sha256(json.dumps({k: resource[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]
    return {r["urn"]: {"parent": r["parent"], **{part: digest(r, keys) for part, keys in PARTS.items()}}
            for r in doc["resources"]}


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("stack", STACKS)
def test_the_split_changes_no_resource(before, stack):
    now = fingerprint(plan.stack_document(stack))
    was = before[stack]
    assert sorted(set(was) - set(now)) == [], "resources gone (a new URN without an alias replaces them)"
    assert sorted(set(now) - set(was)) == [], "resources added by a refactoring"
    changed = {urn: [part for part in was[urn] if was[urn][part] != now[urn][part]] for urn in was}
    assert {urn: parts for urn, parts in changed.items() if parts} == {}


def test_the_comparison_sees_a_change(before):
    doc = plan.stack_document("local")
    doc["resources"][0]["inputs"]["extra"] = 1
    now = fingerprint(doc)
    assert now[doc["resources"][0]["urn"]]["inputs"] != before["local"][doc["resources"][0]["urn"]]["inputs"]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    FIXTURE.write_text(json.dumps({stack: fingerprint(plan.stack_document(stack)) for stack in STACKS},
                                  indent=1, sort_keys=True) + "\n")
