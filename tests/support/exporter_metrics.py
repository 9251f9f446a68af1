"""The series the exporters really publish (tests/fixtures/exporter-metrics.yaml, read from their sources at the
pinned tags, and CloudNativePG's default queries from its chart), and what a Prometheus scrape makes of them on
a given stack: the target labels its monitor adds, and the exporter's own labels renamed `exported_<name>` where
they collide and the monitor does not honour them (Prometheus `honor_labels: false`, the Prometheus Operator's
default). A PromQL selector is then judged by the name, labels and values it asks for.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import promql_parser
import yaml

from mock_engine import REPO

FIXTURE = REPO / "tests/fixtures/exporter-metrics.yaml"
SHARED_CHARTS = REPO.parent / "shared/charts"
CNPG_CHART_VALUES = SHARED_CHARTS / "cloudnative-pg/values.yaml"
DASHBOARDS = REPO / "components" / "observability" / "dashboards"

# What the Prometheus Operator puts on every target (its relabelling of a PodMonitor / ServiceMonitor endpoint:
# pkg/prometheus/promcfg.go), besides the `job` and `instance` Prometheus itself sets.
POD_MONITOR_TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"})
SERVICE_MONITOR_TARGET_LABELS = POD_MONITOR_TARGET_LABELS | {"service"}


@dataclass(frozen=True)
class Published:
    """One metric as its exporter sets it: the labels it sets, and values some of them are known to take."""
    name: str
    exporter: str
    scraped_by: dict
    labels: frozenset[str]
    values: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scrape:
    """What one monitor on a stack does to the series it scrapes."""
    jobs: frozenset[str]             # the values its `job` label takes
    namespaces: frozenset[str]       # the namespaces its targets are in (empty: any)
    target_labels: frozenset[str]
    honor_labels: bool


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]     # (label, operator, value)


def cnpg_default_query_metrics() -> dict[str, frozenset[str]]:
    """CloudNativePG's default monitoring queries as the operator names them: cnpg_<query>_<column>, LABEL
    columns as labels (pkg/management/postgres/metrics/mappings.go ToMetricMap at v1.30.0)."""
    queries = yaml.safe_load(yaml.safe_load(CNPG_CHART_VALUES.read_text())["monitoringQueriesConfigMap"]["queries"])
    found: dict[str, frozenset[str]] = {}
    for query_name, query in queries.items():
        columns = [(column, spec) for mapping in query["metrics"] for column, spec in mapping.items()]
        labels = frozenset(column for column, spec in columns if spec["usage"] == "LABEL")
        prefix = f"cnpg_{query.get('name') or query_name}"
        for column, spec in columns:
            usage = spec["usage"]
            base = f"{prefix}_{spec.get('name') or column}"
            if usage in ("COUNTER", "GAUGE", "MAPPEDMETRIC"):
                found[base] = labels
            elif usage == "DURATION":
                found[f"{base}_milliseconds"] = labels
            elif usage == "HISTOGRAM":
                for suffix in ("_bucket", "_sum", "_count"):
                    found[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return found


@lru_cache(maxsize=None)
def fixture() -> dict:
    return yaml.safe_load(FIXTURE.read_text())


@lru_cache(maxsize=None)
def published() -> dict[str, Published]:
    """Every metric of every exporter the fixture lists, by name."""
    found: dict[str, Published] = {}
    for project, entry in fixture().items():
        for part, exporter in entry["exporters"].items():
            metrics = {name: (frozenset(spec["labels"]), {k: frozenset(v) for k, v in spec.get("values", {}).items()})
                       for name, spec in (exporter.get("metrics") or {}).items()}
            if exporter.get("default_queries"):
                metrics |= {name: (labels, {}) for name, labels in cnpg_default_query_metrics().items()}
            for name, (labels, values) in metrics.items():
                if name in found:
                    raise ValueError(f"{name} is listed twice in {FIXTURE.name}")
                found[name] = Published(name, f"{project} {part}", exporter["scraped_by"], labels, values)
    return found


def pod_monitor_scrape(monitor: dict) -> Scrape:
    """A PodMonitor's scrape: job <namespace>/<name> (the operator's default without jobLabel)."""
    metadata, spec = monitor["metadata"], monitor["spec"]
    endpoint, = spec["podMetricsEndpoints"]
    relabelled = {r["targetLabel"] for r in endpoint.get("relabelings", []) if r.get("targetLabel")}
    return Scrape(jobs=frozenset({f"{metadata['namespace']}/{metadata['name']}"}),
                  namespaces=monitored_namespaces(monitor),
                  target_labels=POD_MONITOR_TARGET_LABELS | relabelled,
                  honor_labels=bool(endpoint.get("honorLabels", False)))


def service_monitor_jobs(monitor: dict, services: list[dict]) -> frozenset[str]:
    """A ServiceMonitor's job: the selected Service's `jobLabel` label where it has one, or else its name
    (prometheus-operator pkg/prometheus/promcfg.go). A Service the charts do not render (the operator's own kubelet
    Service) is known by the selector's value of the jobLabel label."""
    spec = monitor["spec"]
    wanted = spec.get("selector", {}).get("matchLabels", {})
    job_label = spec.get("jobLabel")
    if job_label and job_label in wanted:
        return frozenset({wanted[job_label]})
    selected = [svc for svc in services if wanted.items() <= (svc["metadata"].get("labels") or {}).items()]
    if not selected:
        raise LookupError(f"ServiceMonitor {monitor['metadata']['name']}: no rendered Service matches {wanted}")
    return frozenset((svc["metadata"].get("labels") or {}).get(job_label or "") or svc["metadata"]["name"]
                     for svc in selected)


def monitored_namespaces(monitor: dict) -> frozenset[str]:
    """Where a monitor's targets are: its namespaceSelector's names, any namespace with `any: true`, and its own
    namespace without a selector (the operator's default). Empty: any."""
    selector = monitor["spec"].get("namespaceSelector") or {}
    if selector.get("any"):
        return frozenset()
    return frozenset(selector.get("matchNames") or [monitor["metadata"]["namespace"]])


def service_monitor_scrape(monitor: dict, services: list[dict]) -> Scrape:
    """A ServiceMonitor's scrape (every endpoint of it)."""
    endpoints = monitor["spec"]["endpoints"]
    relabelled = {r["targetLabel"] for e in endpoints for r in e.get("relabelings", []) if r.get("targetLabel")}
    honor = {bool(e.get("honorLabels", False)) for e in endpoints}
    if len(honor) != 1:
        raise ValueError(f"{monitor['metadata']['name']}: endpoints differ in honorLabels")
    return Scrape(jobs=service_monitor_jobs(monitor, services), namespaces=monitored_namespaces(monitor),
                  target_labels=SERVICE_MONITOR_TARGET_LABELS | relabelled, honor_labels=honor.pop())


def scrapes(program_monitors: list[dict], chart_documents: list[dict]) -> dict[tuple[str, str], Scrape]:
    """The monitors of one stack, by (kind of source, name): the program's, and the ServiceMonitors its charts
    render; Services from the charts' documents."""
    services = [d for d in chart_documents if d.get("kind") == "Service"]
    found = {("pod_monitor", m["metadata"]["name"]): pod_monitor_scrape(m)
             for m in program_monitors if m["kind"] == "PodMonitor"}
    found |= {("service_monitor", m["metadata"]["name"]): service_monitor_scrape(m, services)
              for m in program_monitors if m["kind"] == "ServiceMonitor"}
    found |= {("chart_service_monitor", m["metadata"]["name"]): service_monitor_scrape(m, services)
              for m in chart_documents if m.get("kind") == "ServiceMonitor"}
    return found


def selector_of(node: promql_parser.VectorSelector) -> Selector:
    matchers = tuple((m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers)
    name = node.name or next((v for label, op, v in matchers if label == "__name__" and op == "Equal"), "")
    return Selector(name, tuple(m for m in matchers if m[0] != "__name__"))


def selectors_in(node) -> list[Selector]:
    """Every series selector under a parsed PromQL node."""
    found: list[Selector] = []
    promql_parser.walk(node, lambda child: found.append(selector_of(child))
                       if isinstance(child, promql_parser.VectorSelector) else None)
    return found


def selectors(expression: str) -> list[Selector]:
    """Every series selector of a PromQL expression, as Prometheus parses it."""
    return selectors_in(promql_parser.parse(expression))


def scrapes_of(metric: Published, stack_scrapes: dict[tuple[str, str], Scrape]) -> list[Scrape]:
    """The scrapes that can carry this metric on the stack, as they shape its labels."""
    if metric.scraped_by.get("any_monitor"):
        return list(stack_scrapes.values())
    kind, name = next((k, v) for k, v in metric.scraped_by.items() if k != "targets")
    scrape = stack_scrapes.get((kind, name))
    if scrape is None:
        return []
    if metric.scraped_by.get("targets") == "nodes":
        # Endpoints that are Nodes (the kubelet's): the operator labels them `node`, and they have no pod
        # (prometheus-operator pkg/prometheus/promcfg.go, the ServiceMonitor's endpoint relabelling).
        scrape = dataclasses.replace(scrape, target_labels=(scrape.target_labels - {"pod", "container"}) | {"node"})
    return [scrape]


def series_labels(metric: Published, scrape: Scrape) -> dict[str, Optional[frozenset[str]]]:
    """The labels a series of this metric carries after this scrape, each with the values it can take where they
    are known (None: any)."""
    labels: dict[str, Optional[frozenset[str]]] = {
        "job": scrape.jobs, "namespace": scrape.namespaces or None,
        **{label: None for label in scrape.target_labels - {"job", "namespace"}}}
    for label in metric.labels:
        known = metric.values.get(label)
        if label in scrape.target_labels and not scrape.honor_labels:
            labels[f"exported_{label}"] = known
        else:
            labels[label] = known
    return labels


def matcher_holds(labels: dict[str, Optional[frozenset[str]]], label: str, op: str, value: str) -> bool:
    """Whether some series with these labels (and values) satisfies the matcher. Regular expressions are
    anchored, as Prometheus anchors them."""
    if label not in labels:
        # A series without the label has it empty.
        return op in ("NotEqual", "NotRe") or (op == "Equal" and value == "") or \
            (op == "Re" and re.fullmatch(value, "") is not None)
    known = labels[label]
    if known is None:
        return True
    if op == "Equal":
        return value in known
    if op == "Re":
        return any(re.fullmatch(value, candidate) for candidate in known)
    return True


def problems(selector: Selector, stack_scrapes: dict[tuple[str, str], Scrape],
             labels_present: Optional[dict[str, str]] = None) -> list[str]:
    """Why this selector (or, with `labels_present`, this exact series) cannot come from one scrape on the stack:
    an unknown metric, a label neither the exporter nor the scrape sets, a value the label does not take, a job or
    namespace no monitor of the metric has. Every matcher must hold on the same scrape. Empty when it can."""
    metric = published().get(selector.name)
    if metric is None:
        return [f"{selector.name}: no exporter in {FIXTURE.name} publishes it"]
    candidates = scrapes_of(metric, stack_scrapes)
    if not candidates:
        return [f"{selector.name}: published by {metric.exporter}, which no monitor "
                f"{dict(metric.scraped_by)} scrapes on this stack"]
    checks = ([(label, "Equal", value) for label, value in labels_present.items()] if labels_present is not None
              else list(selector.matchers))
    if labels_present is not None:
        # The exact series: every label it has is one a scrape gives.
        candidates = [scrape for scrape in candidates if set(labels_present) <= set(series_labels(metric, scrape))]
    if matching_series(metric, checks, candidates):
        return []
    return [f"{selector.name}{{{', '.join(f'{l} {o} {v!r}' for l, o, v in checks)}}}: no scrape of "
            f"{metric.exporter} gives a series like that (it sets {sorted(metric.labels)}; the scrapes add "
            f"{sorted({label for scrape in candidates for label in scrape.target_labels})})"]


def available_labels(selector: Selector, stack_scrapes: dict[tuple[str, str], Scrape]) -> frozenset[str]:
    """The labels the selector's series can carry: over the scrapes its matchers hold on."""
    metric = published().get(selector.name)
    if metric is None:
        return frozenset()
    return frozenset(label for labels in matching_series(metric, selector.matchers, scrapes_of(metric, stack_scrapes))
                     for label in labels)


def matching_series(metric: Published, checks, scrapes: list[Scrape]) -> list[dict[str, Optional[frozenset[str]]]]:
    """The metric's series, one label set per scrape, on which every matcher holds."""
    shaped = (series_labels(metric, scrape) for scrape in scrapes)
    return [labels for labels in shaped if all(matcher_holds(labels, *check) for check in checks)]


# Functions whose result is a scalar; and those of a date, a vector without labels when given no argument.
_SCALAR_FUNCTIONS = {"time", "scalar", "pi"}
_DATE_FUNCTIONS = {"minute", "hour", "day_of_week", "day_of_month", "day_of_year", "days_in_month", "month", "year"}


# Stands for "any label" in a label set: the series of a metric outside the fixture (Airflow's, checked against
# real Airflow in tests/e2e/test_metrics_e2e.py).
ANY_LABEL = "*"


def expression_labels(expression: str,
                      stack_scrapes: dict[tuple[str, str], Scrape]) -> tuple[Optional[frozenset[str]], list[str]]:
    """The labels an expression's result series can carry (None for a scalar; ANY_LABEL among them where an
    operand is not the fixture's), and the label names its grouping and matching (`by`, `on`, `ignoring`,
    `group_left/right`) use that its operands cannot have."""
    errors: list[str] = []

    def of_selector(node) -> frozenset[str]:
        selector = selector_of(node)
        if selector.name not in published():
            return frozenset({ANY_LABEL})
        return available_labels(selector, stack_scrapes)

    def need(labels: list[str], have: Optional[frozenset[str]], where: str) -> None:
        if have is not None and ANY_LABEL not in have:
            errors.extend(f"{where}: no operand carries label {label!r} (it has {sorted(have)})"
                          for label in labels if label not in have)

    def walk(node) -> Optional[frozenset[str]]:
        if isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
            return None
        if isinstance(node, promql_parser.VectorSelector):
            return of_selector(node)
        if isinstance(node, promql_parser.MatrixSelector):
            return of_selector(node.vector_selector)
        if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            return walk(node.expr)
        if isinstance(node, promql_parser.Call):
            name, args = node.func.name, list(node.args)
            inner = [walk(arg) for arg in args]
            if name in ("absent", "absent_over_time"):
                # Prometheus (createLabelsForAbsentFunction): the equality matchers' labels, but none matched twice
                # and none set empty.
                matchers = [m for s in selectors_in(args[0]) for m in s.matchers]
                names = [label for label, _, _ in matchers]
                return frozenset(label for label, op, value in matchers
                                 if op == "Equal" and value and names.count(label) == 1)
            if name == "vector" or (name in _DATE_FUNCTIONS and not args):
                return frozenset()
            if name in _SCALAR_FUNCTIONS:
                return None
            labels = next((labels for labels in inner if labels is not None), None)
            if name in ("label_replace", "label_join") and labels is not None:
                return labels | {str(args[1]).strip('"')}
            if name == "histogram_quantile" and labels is not None:
                return labels - {"le"}
            return labels
        if isinstance(node, promql_parser.AggregateExpr):
            inner = walk(node.expr)
            modifier = node.modifier
            labels = list(modifier.labels) if modifier is not None else []
            by = modifier is not None and str(modifier.type).endswith("By")
            if by:
                need(labels, inner, f"{node.op} by ({', '.join(labels)})")
            if str(node.op) in ("topk", "bottomk", "limitk", "limit_ratio"):
                return inner     # whole series of each group
            grouped = frozenset(labels) if by else (frozenset() if modifier is None or inner is None
                                                     else inner - set(labels))
            if str(node.op) == "count_values" and node.param is not None:
                return grouped | {str(node.param).strip('"')}
            return grouped
        if isinstance(node, promql_parser.BinaryExpr):
            return binary(node, walk(node.lhs), walk(node.rhs))
        raise NotImplementedError(f"unexpected PromQL node {type(node).__name__} in {expression!r}")

    def binary(node, lhs: Optional[frozenset[str]], rhs: Optional[frozenset[str]]) -> Optional[frozenset[str]]:
        """Prometheus's vector matching (promql/engine.go: VectorAnd/Or/Unless, VectorBinop, resultMetric)."""
        if lhs is None or rhs is None:
            return lhs if rhs is None else rhs
        op, modifier = str(node.op), node.modifier
        matching = modifier.matching if modifier is not None else None
        labels = list(matching.labels) if matching is not None else []
        on = matching is not None and str(matching.type).endswith("Include")
        where = f"{op} {'on' if on else 'ignoring'} ({', '.join(labels)})"
        if op in ("and", "unless"):
            if on:
                need(labels, lhs, where + ", left side")
                need(labels, rhs, where + ", right side")
            return lhs
        if op == "or":
            if on:
                need(labels, lhs, where + ", left side")
            return lhs | rhs
        if on:
            need(labels, lhs, where + ", left side")
            need(labels, rhs, where + ", right side")
        elif labels:
            need(labels, lhs | rhs, where)
        card = str(modifier.card) if modifier is not None else "OneToOne"
        group = list(modifier.group_labels or []) if modifier is not None else []
        if card.endswith("ManyToOne"):
            need(group, rhs, f"{op} group_left ({', '.join(group)})")
            return lhs | frozenset(group)
        if card.endswith("OneToMany"):
            need(group, lhs, f"{op} group_right ({', '.join(group)})")
            return rhs | frozenset(group)
        if on:
            return frozenset(labels)
        return lhs - set(labels)

    labels = walk(promql_parser.parse(expression))
    return labels, errors


def chart_app_version(chart: str) -> str:
    return str(yaml.safe_load(Path(SHARED_CHARTS, chart, "Chart.yaml").read_text())["appVersion"])


def _panels(panels: Iterable[dict]) -> Iterable[dict]:
    for panel in panels or []:
        yield panel
        yield from _panels(panel.get("panels") or [])        # rows (collapsed rows keep their panels)


def dashboard_exprs(directory: Path = DASHBOARDS) -> list[tuple[str, str]]:
    """(where, expr) of every target of every panel (rows included) and every query variable of the dashboards."""
    exprs = []
    for path in sorted(directory.glob("*.json")):
        dashboard = json.loads(path.read_text())
        dashboard = dashboard.get("dashboard", dashboard)    # also accept an API envelope
        panels = [*(dashboard.get("panels") or []),
                  *(panel for row in dashboard.get("rows") or [] for panel in row.get("panels") or [])]
        for panel in _panels(panels):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    exprs.append((f"{path.name}: panel {panel.get('title')!r}", str(target["expr"])))
        for variable in (dashboard.get("templating") or {}).get("list") or []:
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if variable.get("type") == "query" and query:
                exprs.append((f"{path.name}: variable {variable.get('name')!r}", str(query)))
    return exprs
