"""Observability: kube-prometheus-stack rendered by real Helm, monitors that select what really runs,
Alertmanager's configuration checked by amtool, Grafana behind the shared ALB, and nothing on the path to
the Airflow release."""

from __future__ import annotations

import json

import pytest
import yaml

from components import workloads as w
from components.observability import ALERTMANAGER_CONFIG_SECRET, GRAFANA_ADMIN_SECRET
from mock_engine import REPO, STACKS, ProgramFailed, is_secret, run_program, unwrap
from support.flows import all_policies, endpoints, variant_run
from support.netpol import allowed, selects
from support.prometheus_tools import amtool_check
from support.rendering import platform_pods, render_all

RELEASE = "kubernetes:helm.sh/v3:Release"
MONITOR_TYPES = ("kubernetes:monitoring.coreos.com/v1:ServiceMonitor", "kubernetes:monitoring.coreos.com/v1:PodMonitor")
SLACK_URL = "https://hooks.slack.com/services/T000/B000/not-a-real-token"


def monitors(run) -> list:
    return [r for type_ in MONITOR_TYPES for r in run.of_type(type_)]


def rendered_prometheus(run) -> dict:
    return next(d for d in render_all(run)["kube-prometheus-stack"] if d["kind"] == "Prometheus")


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_runs_observability_with_the_pinned_chart(stack_runs, stack):
    run = stack_runs[stack]
    assert run.one("airflow:platform:Observability")
    release = run.one(RELEASE, "observability-kube-prometheus-stack")
    assert release.values["chart"] == "kube-prometheus-stack" and release.values["version"] == "88.5.3"
    assert release.values["namespace"] == w.MONITORING_NAMESPACE
    managed = stack == "prod-managed"
    # statsd and KEDA everywhere; CloudNativePG's three or the chart's PgBouncer; redis-ha's two or none.
    assert len(monitors(run)) == (3 if managed else 7)
    # airflow and platform everywhere; postgresql and redis only with the in-cluster engines, pgbouncer (the
    # chart's) only with a managed database.
    assert len(run.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")) == (3 if managed else 4)
    prometheus = rendered_prometheus(run)["spec"]
    assert prometheus["replicas"] == (1 if stack == "local" else 2)
    assert prometheus["retention"] == "15d"


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_this_prometheus_selects_every_monitor_and_rule_the_program_creates(stack_runs, stack):
    run = stack_runs[stack]
    spec = rendered_prometheus(run)["spec"]
    for registration in [*monitors(run), *run.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")]:
        kind = registration.type.rsplit(":", 1)[1]
        selector = spec[{"ServiceMonitor": "serviceMonitorSelector", "PodMonitor": "podMonitorSelector",
                         "PrometheusRule": "ruleSelector"}[kind]]
        namespaces = spec[{"ServiceMonitor": "serviceMonitorNamespaceSelector", "PodMonitor": "podMonitorNamespaceSelector",
                           "PrometheusRule": "ruleNamespaceSelector"}[kind]]
        labels = registration.values["metadata"]["labels"]
        assert selects(selector, labels), f"{registration.name} is not selected by {selector}"
        assert namespaces == {}, "every namespace"


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_every_monitor_selects_something_that_runs_with_the_port_it_scrapes(stack_runs, stack):
    run = stack_runs[stack]
    rendered = render_all(run)
    services = [d for documents in rendered.values() for d in documents if d["kind"] == "Service"]
    pods = platform_pods(run)
    for monitor in monitors(run):
        spec = monitor.values["spec"]
        [namespace] = spec["namespaceSelector"]["matchNames"]
        if monitor.type.endswith("ServiceMonitor"):
            [port] = [e["port"] for e in spec["endpoints"]]
            found = [s for s in services if s["metadata"]["namespace"] == namespace
                     and selects(spec["selector"], s["metadata"].get("labels") or {})
                     and port in [p.get("name") for p in s["spec"]["ports"]]]
        else:
            [port] = [e["port"] for e in spec["podMetricsEndpoints"]]
            found = [p for p in pods if p.namespace == namespace and selects(spec["selector"], p.labels)
                     and port in [cp.get("name") for c in p.containers for cp in c.get("ports") or []]]
        assert found, f"{monitor.name}: nothing in {namespace} matches {spec['selector']} with port {port}"


@pytest.mark.parametrize("variant", ["local", "prod"])
def test_prometheus_may_reach_every_target_in_the_airflow_namespace(variant):
    """Every PodMonitor target behind the Airflow namespace's default deny is admitted by a flow."""
    run = variant_run(variant)
    policies = all_policies(variant)
    [prometheus] = endpoints(variant)["prometheus"][:1]
    for monitor in monitors(run):
        spec = monitor.values["spec"]
        if spec["namespaceSelector"]["matchNames"] != [w.AIRFLOW_NAMESPACE]:
            continue
        port_name = (spec.get("podMetricsEndpoints") or spec.get("endpoints"))[0]["port"]
        targets = [e for role in endpoints(variant).values() for e in role
                   if e.namespace == w.AIRFLOW_NAMESPACE and selects(spec["selector"], e.labels)]
        assert targets, monitor.name
        pods = {p.source: p for p in platform_pods(run)}
        for target in targets:
            pod = pods[target.name]
            [number] = {cp["containerPort"] for c in pod.containers for cp in c.get("ports") or []
                        if cp.get("name") == port_name}
            assert allowed(policies, prometheus, target, number), f"{monitor.name}: {target.name}:{number}"


def test_observability_is_off_the_path_to_the_airflow_release(prod):
    airflow = prod.one(RELEASE, "airflow-airflow")
    inside = [r for r in prod.registrations if any(a.type == "airflow:platform:Observability" for a in prod.ancestors(r))]
    assert inside and not any(prod.depends_transitively(airflow, r) for r in inside)
    assert not prod.depends_transitively(airflow, prod.one("airflow:platform:Observability"))
    release = prod.one(RELEASE, "observability-kube-prometheus-stack")
    for other in ("database-cloudnative-pg", "broker-redis-ha", "airflow-keda"):
        assert not prod.depends_transitively(release, prod.one(RELEASE, other)), other
        assert not prod.depends_transitively(prod.one(RELEASE, other), release), other


def alertmanager_yaml(run) -> str:
    secret = next(s for s in run.of_type("kubernetes:core/v1:Secret")
                  if s.values["metadata"]["name"] == ALERTMANAGER_CONFIG_SECRET)
    assert is_secret(secret.inputs["stringData"]) or is_secret(secret.inputs["stringData"]["alertmanager.yaml"])
    return secret.values["stringData"]["alertmanager.yaml"]


EMAIL = {"alertEmailTo": "oncall@example.com", "alertEmailFrom": "alertmanager@example.com",
         "alertSmtpSmarthost": "smtp.example.com:587", "alertSmtpUsername": "alertmanager"}


@pytest.mark.parametrize("receivers", ["none", "slack", "email", "both"])
def test_amtool_accepts_the_alertmanager_configuration(receivers):
    secrets, overrides = {}, {}
    if receivers in ("slack", "both"):
        secrets["alertSlackWebhookUrl"] = SLACK_URL
        overrides["alertSlackChannel"] = "#airflow-alerts"
    if receivers in ("email", "both"):
        overrides.update(EMAIL)
        secrets["alertSmtpPassword"] = "smtp-password-for-the-test"
    run = run_program("prod", overrides=overrides, secret_config=secrets)
    text = alertmanager_yaml(run)
    checked = amtool_check(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(text)
    receiver = config["route"]["receiver"]
    platform = next(r for r in config["receivers"] if r["name"] == receiver)
    assert bool(platform.get("slack_configs")) == (receivers in ("slack", "both"))
    assert bool(platform.get("email_configs")) == (receivers in ("email", "both"))
    assert receiver == ("null" if receivers == "none" else "platform")
    # The credentials live in the Secret only, never in the release's values.
    values_text = yaml.safe_dump(run.one(RELEASE, "observability-kube-prometheus-stack").values)
    assert SLACK_URL not in values_text and "smtp-password-for-the-test" not in values_text


def test_receiver_credentials_must_be_set_as_secrets():
    with pytest.raises(ProgramFailed, match=r"airflow:alertSlackWebhookUrl: must be set with `pulumi config set --secret"):
        run_program("prod", overrides={"alertSlackWebhookUrl": SLACK_URL})


def test_grafana_admin_password_is_generated_kept_in_a_secret_and_output_as_a_secret(prod):
    secret = next(s for s in prod.of_type("kubernetes:core/v1:Secret")
                  if s.values["metadata"]["name"] == GRAFANA_ADMIN_SECRET)
    assert secret.values["metadata"]["namespace"] == w.MONITORING_NAMESPACE
    data = secret.inputs["stringData"]
    assert is_secret(data) or is_secret(data["admin-password"])
    assert is_secret(prod.outputs["grafana_admin_password"])
    grafana = prod.one(RELEASE, "observability-kube-prometheus-stack").values["values"]["grafana"]
    assert grafana["admin"] == {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user",
                                "passwordKey": "admin-password"}
    password = unwrap(prod.outputs["grafana_admin_password"])
    assert len(password) == 32
    for registration in prod.registrations:
        if registration.type.startswith("random:"):
            continue
        assert password not in yaml.safe_dump(unwrap({k: v for k, v in registration.inputs.items()
                                                      if not is_secret(v)})), registration.name


def test_grafana_shares_the_airflow_load_balancer_and_certificate(prod):
    ingresses = {r.name: r.values for r in prod.of_type("kubernetes:networking.k8s.io/v1:Ingress")}
    airflow, grafana = ingresses["airflow-api-server"], ingresses["observability-grafana"]
    group = "alb.ingress.kubernetes.io/group.name"
    assert airflow["metadata"]["annotations"][group] == grafana["metadata"]["annotations"][group]
    # Settings of the load balancer itself must agree, or the controller refuses to merge the group.
    for key in ("scheme", "listen-ports", "certificate-arn", "ssl-policy", "load-balancer-attributes"):
        key = f"alb.ingress.kubernetes.io/{key}"
        assert airflow["metadata"]["annotations"][key] == grafana["metadata"]["annotations"][key], key
    assert grafana["spec"]["rules"][0]["host"] == "grafana.example.com"
    assert grafana["metadata"]["annotations"]["alb.ingress.kubernetes.io/healthcheck-path"] == "/api/health"
    certificate = prod.one("aws:acm/certificate:Certificate").values
    assert certificate["subjectAlternativeNames"] == ["grafana.example.com"]
    assert len(prod.where(lambda r: r.name.startswith("security-ingress-validation"))) == 2
    assert unwrap(prod.outputs["grafana_url"]) == "https://grafana.example.com"


def test_local_grafana_is_reached_by_port_forward(local):
    assert unwrap(local.outputs["grafana_url"]) == "http://localhost:3000"
    assert not [r for r in local.of_type("kubernetes:networking.k8s.io/v1:Ingress")]


def test_dashboards_are_loaded_by_the_grafana_sidecar(prod):
    maps = [r for r in prod.of_type("kubernetes:core/v1:ConfigMap") if r.values["metadata"].get("labels", {})
            .get("grafana_dashboard") == "1"]
    assert {m.values["metadata"]["name"] for m in maps} == {"dashboard-airflow"}
    cnpg = [d for d in render_all(prod)["cloudnative-pg"]
            if d["kind"] == "ConfigMap" and (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    assert cnpg, "the operator chart's official CloudNativePG dashboard"
    sidecar = prod.one(RELEASE, "observability-kube-prometheus-stack").values["values"]["grafana"]["sidecar"]
    assert sidecar["dashboards"]["searchNamespace"] == [w.MONITORING_NAMESPACE, w.CNPG_NAMESPACE]
    assert sidecar["dashboards"]["label"] == "grafana_dashboard"
    # The operator's chart renders it in the operator's namespace (its release's), which the sidecar searches...
    assert {d["metadata"].get("namespace") or prod.one(RELEASE, "database-cloudnative-pg").values["namespace"]
            for d in cnpg} == {w.CNPG_NAMESPACE}
    # ...and may read: the program's reader Role there, bound to the service account Grafana's pod runs as.
    rendered = render_all(prod)["kube-prometheus-stack"]
    [grafana] = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("grafana")]
    [env] = [e for c in grafana["spec"]["template"]["spec"]["containers"] if c["name"] == "grafana-sc-dashboard"
             for e in c["env"] if e["name"] == "NAMESPACE"]
    assert env["value"].split(",") == [w.MONITORING_NAMESPACE, w.CNPG_NAMESPACE]
    [binding] = [r.values for r in prod.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
                 if r.values["metadata"]["namespace"] == w.CNPG_NAMESPACE]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": w.MONITORING_NAMESPACE,
                                    "name": grafana["spec"]["template"]["spec"]["serviceAccountName"]}]
    [role] = [r.values for r in prod.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role")
              if r.values["metadata"]["namespace"] == w.CNPG_NAMESPACE]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]
    # Without CloudNativePG (a managed database) there is nothing to read there.
    managed = run_program("prod-managed")
    assert managed.one(RELEASE, "observability-kube-prometheus-stack").values["values"]["grafana"]["sidecar"][
        "dashboards"]["searchNamespace"] == [w.MONITORING_NAMESPACE]


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_grafana_cannot_read_secrets_outside_its_namespace(stack_runs, stack):
    rendered = render_all(stack_runs[stack])["kube-prometheus-stack"]
    for document in rendered:
        if document["kind"] != "ClusterRole" or "grafana" not in document["metadata"]["name"]:
            continue
        for rule in document.get("rules") or []:
            assert "secrets" not in rule.get("resources", []), document["metadata"]["name"]
    # The sidecars' Role is the program's: ConfigMaps of the monitoring namespace, read only, no Secrets.
    assert not [d for d in rendered if d["kind"] == "Role" and "grafana" in d["metadata"]["name"]]
    [binding] = [d for d in rendered if d["kind"] == "RoleBinding" and "grafana" in d["metadata"]["name"]]
    role = stack_runs[stack].one("kubernetes:rbac.authorization.k8s.io/v1:Role", "observability-grafana-config-reader")
    assert binding["roleRef"]["name"] == role.values["metadata"]["name"]
    assert role.values["metadata"]["namespace"] == binding["metadata"]["namespace"] == w.MONITORING_NAMESPACE
    assert role.values["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]
    # And the admin password reaches Grafana as a file, not through its environment.
    [grafana] = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("grafana")]
    for container in [*grafana["spec"]["template"]["spec"].get("initContainers", []),
                      *grafana["spec"]["template"]["spec"]["containers"]]:
        assert not [e for e in container.get("env") or [] if "secretKeyRef" in json.dumps(e)], container["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_pod_disruption_budget_is_valid(stack_runs, stack):
    """The API server refuses a PDB with both minAvailable and maxUnavailable (helm template does not)."""
    budgets = [d for documents in render_all(stack_runs[stack]).values() for d in documents
               if d["kind"] == "PodDisruptionBudget"]
    assert budgets or stack == "local"
    for budget in budgets:
        spec = budget["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), budget["metadata"]["name"]


def stack_settings(stack: str) -> dict[str, str]:
    from mock_engine import load_stack_config
    return {key.split(":", 1)[1]: value for key, value in load_stack_config(stack, REPO, []).items()
            if key.startswith("airflow:")}


def test_every_label_an_airflow_series_is_filtered_by_is_one_the_statsd_mapping_makes(prod):
    """The alerts and dashboards select Airflow's series by label (`airflow_pool_queued_slots{pool!=""}`): each
    such label must be one the release's statsd mapping (the chart's, as Helm renders it, plus the platform's)
    gives that series, or the selector matches nothing and the alert can never fire."""
    import re

    from components.config import load_settings
    from components.observability.alerts import alert_groups
    from support.statsd_mapping import MappingConfig
    configmaps = [d for d in render_all(prod)["airflow"] if d["kind"] == "ConfigMap"
                  and "mappings.yml" in (d.get("data") or {})]
    [mappings_yml] = [d["data"]["mappings.yml"] for d in configmaps]
    labels_of: dict[str, set[str]] = {}
    config = MappingConfig.from_yaml(mappings_yml)
    for mapping in config.mappings:
        if mapping.action == "map":
            # A timer becomes an observer, to which statsd_exporter adds `quantile` (a summary, its default) or
            # `le` (a histogram). Airflow's timers are its durations and delays (its metrics reference, "Timers",
            # by the statsd name the mapping matches: `dagrun.duration.failed.*` becomes airflow_dagrun_failed);
            # its counters and gauges get neither.
            timer = re.search(r"(duration|delay)", mapping.match)
            observer = mapping.observer_type or config.default_observer_type or "summary"
            made = ({"le"} if observer == "histogram" else {"quantile"}) if timer else set()
            labels_of.setdefault(mapping.name, set()).update(mapping.labels, made)
    stacks = [load_settings(stack_settings(stack), stack=stack) for stack in ("local", "prod", "prod-managed")]
    expressions = [alert.expr for settings in stacks
                   for alerts in alert_groups(settings.observability, settings.observed_stores).values()
                   for alert in alerts]

    def panel_expressions(node):
        if isinstance(node, dict):
            own = [node["expr"]] if isinstance(node.get("expr"), str) else []
            return own + [e for value in node.values() for e in panel_expressions(value)]
        return [e for value in node for e in panel_expressions(value)] if isinstance(node, list) else []
    for dashboard in (REPO / "components" / "observability" / "dashboards").glob("*.json"):
        expressions += panel_expressions(json.loads(dashboard.read_text()))
    selected = [(metric, label) for expression in expressions
                for metric, matchers in re.findall(r"(airflow_[a-z0-9_]+)\{([^}]*)\}", expression)
                for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers)]
    assert len(selected) >= 5, selected
    unmade = sorted({f"{metric}{{{label}}}" for metric, label in selected
                     if metric in labels_of and label not in labels_of[metric]})
    assert unmade == [], "selected by a label the mapping does not make"
    assert {metric for metric, _ in selected} - set(labels_of) <= set(), "a series no mapping makes"
