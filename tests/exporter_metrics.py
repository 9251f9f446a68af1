"""The series the exporters really publish (tests/fixtures/exporter-metrics.yaml, read from their sources at the
pinned tags, and CloudNativePG's default queries from its chart), and what a Prometheus scrape makes of them on
a given stack: the target labels its monitor adds, and the exporter's own labels renamed `exported_<name>` where
they collide and the monitor does not honour them (Prometheus `honor_labels: false`, the Prometheus Operator's
default). A PromQL selector is then judged by the name, labels and values it asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import promql_parser
import yaml

from harness import REPO

FIXTURE = REPO / "tests/fixtures/exporter-metrics.yaml"
SHARED_CHARTS = REPO.parent / "shared/charts"
CNPG_CHART_VALUES = SHARED_CHARTS / "cloudnative-pg/values.yaml"
DASHBOARDS = REPO / "components" / "dashboards"

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
                    raise AssertionError(f"{name} is listed twice in {FIXTURE.name}")
                found[name] = Published(name, f"{project} {part}", exporter["scraped_by"], labels, values)
    return found


def pod_monitor_scrape(monitor: dict) -> Scrape:
    """A PodMonitor's scrape: job <namespace>/<name> (the operator's default without jobLabel)."""
    metadata, spec = monitor["metadata"], monitor["spec"]
    endpoint, = spec["podMetricsEndpoints"]
    relabelled = {r["targetLabel"] for r in endpoint.get("relabelings", []) if r.get("targetLabel")}
    return Scrape(jobs=frozenset({f"{metadata['namespace']}/{metadata['name']}"}),
                  namespaces=frozenset(spec.get("namespaceSelector", {}).get("matchNames", [])),
                  target_labels=POD_MONITOR_TARGET_LABELS | relabelled,
                  honor_labels=bool(endpoint.get("honorLabels", False)))


def service_monitor_jobs(monitor: dict, services: list[dict]) -> frozenset[str]:
    """A ServiceMonitor's job: the selected Service's `jobLabel` label, or else its name (Prometheus Operator
    API docs, ServiceMonitorSpec.jobLabel). A Service the charts do not render (the operator's own kubelet
    Service) is known by the selector's value of the jobLabel label."""
    spec = monitor["spec"]
    wanted = spec.get("selector", {}).get("matchLabels", {})
    job_label = spec.get("jobLabel")
    if job_label and job_label in wanted:
        return frozenset({wanted[job_label]})
    selected = [svc for svc in services if wanted.items() <= (svc["metadata"].get("labels") or {}).items()]
    if not selected:
        raise AssertionError(f"ServiceMonitor {monitor['metadata']['name']}: no rendered Service matches {wanted}")
    return frozenset((svc["metadata"].get("labels") or {}).get(job_label) if job_label else svc["metadata"]["name"]
                     for svc in selected)


def service_monitor_scrape(monitor: dict, services: list[dict]) -> Scrape:
    """A ServiceMonitor's scrape (every endpoint of it)."""
    endpoints = monitor["spec"]["endpoints"]
    relabelled = {r["targetLabel"] for e in endpoints for r in e.get("relabelings", []) if r.get("targetLabel")}
    honor = {bool(e.get("honorLabels", False)) for e in endpoints}
    if len(honor) != 1:
        raise AssertionError(f"{monitor['metadata']['name']}: endpoints differ in honorLabels")
    return Scrape(jobs=service_monitor_jobs(monitor, services),
                  namespaces=frozenset(monitor["spec"].get("namespaceSelector", {}).get("matchNames", [])),
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


def selectors(expression: str) -> list[Selector]:
    """Every series selector of a PromQL expression, as Prometheus parses it."""
    found: list[Selector] = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = tuple((m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers)
            name = node.name or next((v for label, op, v in matchers if label == "__name__" and op == "Equal"), "")
            found.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def problems(selector: Selector, stack_scrapes: dict[tuple[str, str], Scrape],
             labels_present: Optional[dict[str, str]] = None) -> list[str]:
    """Why this selector (or, with `labels_present`, this exact series) cannot come from a scrape on the stack:
    an unknown metric, a label neither the exporter nor the scrape sets, a value the label does not take, a job or
    namespace no monitor of the metric has. Empty when it can."""
    metric = published().get(selector.name)
    if metric is None:
        return [f"{selector.name}: no exporter in {FIXTURE.name} publishes it"]
    if metric.scraped_by.get("any_monitor"):
        candidates = list(stack_scrapes.values())
        exporter_labels: frozenset[str] = frozenset()
    else:
        (kind, name), = metric.scraped_by.items()
        scrape = stack_scrapes.get((kind, name))
        if scrape is None:
            return [f"{selector.name}: published by {metric.exporter}, which no {kind} {name!r} scrapes on this stack"]
        candidates = [scrape]
        exporter_labels = metric.labels
    checks = ([(label, "Equal", value) for label, value in labels_present.items()] if labels_present is not None
              else list(selector.matchers))
    errors = []
    for label, op, value in checks:
        if not any(label_allowed(label, op, value, metric, exporter_labels, scrape) for scrape in candidates):
            errors.append(f"{selector.name}: label {label} {op} {value!r} is not one {metric.exporter} and its "
                          f"scrape give (exporter labels: {sorted(exporter_labels)})")
    return errors


def label_allowed(label: str, op: str, value: str, metric: Published, exporter_labels: frozenset[str],
                  scrape: Scrape) -> bool:
    renamed = {f"exported_{name}" for name in exporter_labels & scrape.target_labels} if not scrape.honor_labels \
        else set()
    own = (exporter_labels - scrape.target_labels) | renamed if not scrape.honor_labels else exporter_labels
    source_label = label.removeprefix("exported_") if label in renamed else label
    if label in own:
        known = metric.values.get(source_label)
        return not (op == "Equal" and known is not None and value not in known)
    if label in scrape.target_labels:
        if op != "Equal":
            return True
        if label == "job":
            return value in scrape.jobs
        if label == "namespace" and scrape.namespaces:
            return value in scrape.namespaces
        return True
    # A matcher that asks for the label to be empty holds on every series without it.
    return op in ("NotEqual", "NotRe") or (op == "Equal" and value == "")


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
