"""The mutation gate's list (`make mutate`) stays applicable: each mutation names a line that is there exactly
once, a change, a rule and tests that exist. (The gate itself runs the tests; it is not part of `make test`.)"""

from __future__ import annotations

import yaml

from mock_engine import REPO

MUTATIONS = yaml.safe_load((REPO / "tests" / "mutations" / "curated.yaml").read_text())


def test_every_mutation_applies_to_the_code_as_it_is():
    assert len(MUTATIONS) >= 13
    assert len({m["name"] for m in MUTATIONS}) == len(MUTATIONS)
    for mutation in MUTATIONS:
        assert set(mutation) == {"name", "file", "old", "new", "rule", "tests"}, mutation["name"]
        assert (REPO / mutation["file"]).read_text().count(mutation["old"]) == 1, mutation["name"]
        assert mutation["new"] != mutation["old"] and mutation["rule"], mutation["name"]
        assert mutation["tests"], mutation["name"]
        for test in mutation["tests"]:
            path, _, function = test.partition("::")
            assert function and f"def {function}(" in (REPO / path).read_text(), (mutation["name"], test)


def test_the_list_holds_what_the_issue_asks_for():
    """The three a mutation run once found only a snapshot catching, and one per kind of break."""
    names = {m["name"] for m in MUTATIONS}
    assert {"dns-egress-to-any-pod", "redis-min-replicas-two", "pgbouncer-without-prepared-statements"} <= names
    components = {m["file"].split("/")[1] for m in MUTATIONS}
    assert {"security", "storage", "database", "broker", "airflow", "delivery"} <= components
