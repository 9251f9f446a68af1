"""tests/support/statsd_mapping.py held to statsd_exporter v0.28.0's own expectations: each case below is a scenario of the
exporter's tests at that tag (pkg/mapper/mapper_test.go, TestMetricMapperYAML; pkg/mapper/escape_test.go), named
after it, with the mappings, names and results those tests expect. The alerts and dashboards trust this model to
say which series Airflow's metrics become (tests/e2e/test_metrics_e2e.py, tests/test_observability.py)."""

from __future__ import annotations

import pytest

from support.statsd_mapping import COUNTER, GAUGE, OBSERVER, MappingConfig, escape_metric_name

# (upstream scenario, mappings.yml, [(statsd name, metric type, expected Prometheus name, expected labels)]);
# expected name None: the event is dropped.
SCENARIOS = [
    ("Config with backtracking, the non-matched rule has star(s)", """
mappings:
- match: '*.dummy.*'
  name: metric_one
  labels: {system: $1, attribute: $2}
- match: 'full.name.*'
  name: metric_two
  labels: {system: static, attribute: $1}
""", [("whatever.dummy.test", COUNTER, "metric_one", {"system": "whatever", "attribute": "test"}),
      ("full.name.anothertest", COUNTER, "metric_two", {"system": "static", "attribute": "anothertest"})]),
    ("Config with super sets, keeps ordering", """
mappings:
- match: order.*.*
  name: testa
  labels: {label: "${1}_foo"}
- match: order.*.bbb
  name: testb
  labels: {label: "${1}_foo"}
""", [("order.good.bbb", COUNTER, "testa", {"label": "good_foo"})]),
    ("Config with bad regex reference", """
mappings:
- match: test.*
  name: name
  labels: {label: "$1_foo"}
""", [("test.a", COUNTER, "name", {"label": ""})]),
    ("Config with good regex reference", """
mappings:
- match: test.*
  name: name
  labels: {label: "${1}_foo"}
""", [("test.a", COUNTER, "name", {"label": "a_foo"})]),
    ("Match metric segment starting with a number", """
mappings:
- match: test.99test.myapp.*
  name: name
  labels: {label: "${1}_foo"}
""", [("test.99test.myapp.create", COUNTER, "name", {"label": "create_foo"})]),
    ("Single segment match", """
mappings:
- match: '*'
  name: single_segment
  labels: {label: "${1}"}
""", [("test", COUNTER, "single_segment", {"label": "test"})]),
    ("Config with multiple dashes in metric name", """
mappings:
- match: "foo--bar.*"
  name: "foo_bar_${1}"
""", [("foo--bar.count", COUNTER, "foo_bar_count", {})]),
    ("Config with dynamic metric name", r"""
mappings:
- match: test1.*.*
  name: "$1"
- match: test2.*.*
  name: "${1}_$2"
- match: test3\.(\w+)\.(\w+)
  match_type: regex
  name: "${2}_$1"
""", [("test1.total_requests.count", COUNTER, "total_requests", {}),
      ("test2.total_requests.count", COUNTER, "total_requests_count", {}),
      ("test3.total_requests.count", COUNTER, "count_total_requests", {})]),
    ("Config with multiple explicit metric types", """
mappings:
- match: test.foo.*
  name: test_foo_sum
  match_metric_type: counter
- match: test.foo.*
  name: test_foo_current
  match_metric_type: gauge
""", [("test.foo.test", COUNTER, "test_foo_sum", {}), ("test.foo.test", GAUGE, "test_foo_current", {})]),
    ("Config with labels from glob", """
mappings:
- match: p.*.*.c.*
  match_type: glob
  name: issue_256
  labels: {one: $1, two: $2, three: $3}
""", [("p.one.two.c.three", COUNTER, "issue_256", {"one": "one", "two": "two", "three": "three"})]),
    ("Example from the README", """
mappings:
- match: test.dispatcher.*.*.*
  name: dispatcher_events_total
  labels: {processor: "$1", action: "$2", outcome: "$3", job: test_dispatcher}
- match: "*.signup.*.*"
  name: signup_events_total
  labels: {provider: "$2", outcome: "$3", job: "${1}_server"}
""", [("test.dispatcher.FooProcessor.send.success", COUNTER, "dispatcher_events_total",
       {"processor": "FooProcessor", "action": "send", "outcome": "success", "job": "test_dispatcher"}),
      ("foo_product.signup.facebook.failure", COUNTER, "signup_events_total",
       {"provider": "facebook", "outcome": "failure", "job": "foo_product_server"}),
      ("test.web-server.foo.bar", COUNTER, "test_web_server_foo_bar", {})]),
    ("Config that drops all", """
mappings:
- match: .
  match_type: regex
  name: drop
  action: drop
""", [("test.a", COUNTER, None, {}), ("abc", OBSERVER, None, {})]),
    ("Config that has a catch-all to drop all", """
mappings:
- match: web.*
  name: web
  labels: {site: "$1"}
- match: .
  match_type: regex
  name: drop
  action: drop
""", [("test.a", COUNTER, None, {}), ("web.localhost", COUNTER, "web", {"site": "localhost"})]),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario[0] for scenario in SCENARIOS])
def test_the_model_maps_as_the_exporters_own_tests_expect(scenario):
    _, config, cases = scenario
    mapping = MappingConfig.from_yaml(config)
    for statsd_name, metric_type, name, labels in cases:
        result = mapping.map(statsd_name, metric_type)
        if name is None:
            assert result.dropped, statsd_name
        else:
            assert (result.dropped, result.name, result.labels) == (False, name, labels), statsd_name


def test_a_name_no_mapping_matches_is_escaped_and_unlabelled():
    """Upstream: "Config with non-matched metric" (not present in the mapper; the exporter escapes the name)."""
    result = MappingConfig.from_yaml("mappings:\n- match: foo.*.*\n  observer_type: summary\n  name: foo\n").map(
        "test.1.2", OBSERVER)
    assert (result.matched, result.name, result.labels) == (False, "test_1_2", {})


@pytest.mark.parametrize("config", [
    # Upstream: "Config with bad metric line", "Config with bad metric name", "Config with no metric name",
    # "Config with bad metric type matcher", "Config with uncompilable regex", "Config with no name".
    "mappings:\n- match: bad!!metric-line.*.*\n  name: foo\n",
    "mappings:\n- match: test.*.*\n  name: 0foo\n",
    "mappings:\n- match: test.*.*\n  labels: {this: $1}\n",
    "mappings:\n- match: test.*.*\n  match_metric_type: wrong\n  name: foo\n",
    "mappings:\n- match: '*\\\\.foo'\n  match_type: regex\n  name: foo\n",
    "mappings:\n- match: '*\\\\.foo'\n  match_type: regex\n  labels: {bar: foo}\n",
])
def test_configurations_the_exporter_refuses_are_refused(config):
    with pytest.raises(ValueError):
        MappingConfig.from_yaml(config)


@pytest.mark.parametrize("pattern", [r"(a)\1", r"airflow(?=\.)", r"(?<!x)airflow"])
def test_regexes_go_would_refuse_are_refused_though_python_takes_them(pattern):
    """Go's regexp is RE2: no backreferences, no lookarounds. Python's `re` compiles these; the exporter would
    not start with them, and the model must not accept a mapping the exporter refuses."""
    import re
    re.compile(pattern)
    with pytest.raises(ValueError, match="invalid regex"):
        MappingConfig.from_yaml(f"mappings:\n- match: '{pattern}'\n  match_type: regex\n  name: x\n")


def test_a_regex_class_matches_ascii_only_as_in_go():
    r"""Go's `\w` is [0-9A-Za-z_]; Python's `re` also matches letters like `ü`, so a host or DAG name with one
    would map under `re` and fall through under the exporter."""
    mapping = MappingConfig.from_yaml("mappings:\n- match: '^dag\\.(\\w+)$'\n  match_type: regex\n  name: dag_$1\n")
    assert mapping.map("dag.etl", COUNTER).name == "dag_etl"
    assert mapping.map("dag.grün", COUNTER).matched is False


@pytest.mark.parametrize("name, escaped", [
    # pkg/mapper/escape_test.go, TestEscapeMetricName.
    ("clean", "clean"), ("0starts_with_digit", "_0starts_with_digit"), ("with_underscore", "with_underscore"),
    ("with--doubledash", "with_doubledash"), ("with---multiple-dashes", "with_multiple_dashes"),
    ("with.dot", "with_dot"), ("with😱emoji", "with_emoji"), ("with.*.multiple", "with___multiple"),
    ("test.web-server.foo.bar", "test_web_server_foo_bar"), ("", ""),
])
def test_names_are_escaped_as_the_exporter_escapes_them(name, escaped):
    assert escape_metric_name(name) == escaped
