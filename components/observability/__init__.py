"""Observability: Prometheus, Alertmanager and Grafana (kube-prometheus-stack), the monitors that scrape
Airflow, PostgreSQL, PgBouncer, Redis and KEDA, the platform's alert rules, and its dashboards.

Nothing else waits for it: the Airflow release never depends on Observability, and the other releases
create no monitor of their own (a monitor needs this release's CRDs); every monitor is created here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components import workloads as w
from components.handles import CertificateAuthority, ClusterHandle, Ingress
from components.helm import chart_release
from components.ingress import alb_ingress
from components.observability.alerts import ObservedStores, alert_groups, prometheus_rule_spec
from components.observability.settings import ObservabilitySettings
from components.pods import resources

KPS_CHARTS = "https://prometheus-community.github.io/helm-charts"
GRAFANA_SERVICE = f"{w.PROMETHEUS_RELEASE}-grafana"
GRAFANA_ADMIN_SECRET = "grafana-admin"
GRAFANA_ADMIN_MOUNT = "/etc/secrets/grafana-admin"
GRAFANA_CONFIG_READER_ROLE = "grafana-config-reader"
# The grafana subchart's service account: its fullname, `<release>-grafana`.
GRAFANA_SERVICE_ACCOUNT = f"{w.PROMETHEUS_RELEASE}-grafana"
ALERTMANAGER_CONFIG_SECRET = "alertmanager-platform"
DASHBOARDS_DIR = Path(__file__).parent / "dashboards"
# kube-prometheus-stack's Prometheus selects monitors and rules labelled for its release.
SELECTED = {"release": w.PROMETHEUS_RELEASE}


def kube_prometheus_stack_values(settings: ObservabilitySettings, storage_class: Optional[str],
                                 dashboard_namespaces: Optional[list[pulumi.Input[str]]] = None) -> dict:
    ha = settings.is_aws
    placement = settings.system_placement
    storage_class_spec = {"storageClassName": storage_class} if storage_class else {}
    return {
        "crds": {"enabled": True},
        # EKS runs the control plane: etcd, the controller manager, the scheduler and kube-proxy's metrics
        # endpoints are not reachable, and their rules would only report them down.
        **{component: {"enabled": False} for component in ("kubeEtcd", "kubeControllerManager", "kubeScheduler",
                                                           "kubeProxy")},
        "defaultRules": {"rules": {"etcd": False, "kubeControllerManager": False, "kubeSchedulerAlerting": False,
                                   "kubeSchedulerRecording": False, "kubeProxy": False}},
        "prometheusOperator": {
            "resources": resources("100m", "128Mi", "512Mi"),
            "prometheusConfigReloader": {"resources": resources("10m", "32Mi", "64Mi")},
            # cert-manager (Security's) issues the admission webhook's certificate: no patch Jobs, and no
            # ClusterRole that may rewrite webhook configurations.
            "admissionWebhooks": {"certManager": {"enabled": True},
                                  "patch": {"enabled": False, "resources": resources("10m", "32Mi", "64Mi"),
                                            **placement}},
            **placement,
        },
        "prometheus": {
            # The chart's own minAvailable: 1 (setting maxUnavailable too would make the PDB invalid).
            "podDisruptionBudget": {"enabled": ha},
            "prometheusSpec": {
                "replicas": 2 if ha else 1,
                "retention": f"{settings.prometheus_retention_days}d",
                # Prometheus drops old blocks beyond this (its GB are GiB), well below the volume and below the
                # 85 % at which PersistentVolumeFillingUp fires.
                "retentionSize": f"{int(settings.prometheus_storage_gib * 0.75)}GB",
                "storageSpec": {"volumeClaimTemplate": {"spec": {
                    **storage_class_spec, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": f"{settings.prometheus_storage_gib}Gi"}}}}},
                "resources": resources("500m" if ha else "200m", "2Gi" if ha else "1Gi", "4Gi" if ha else "2Gi"),
                # Monitors and rules are picked up by the release label (SELECTED), from every namespace.
                "serviceMonitorSelector": {"matchLabels": SELECTED},
                "podMonitorSelector": {"matchLabels": SELECTED},
                "ruleSelector": {"matchLabels": SELECTED},
                **placement,
            },
        },
        "alertmanager": {
            "podDisruptionBudget": {"enabled": ha},
            "alertmanagerSpec": {
                "replicas": 2 if ha else 1,
                # The whole configuration, receivers' credentials included, lives in a Secret this component
                # writes; the Helm values only name it.
                "configSecret": ALERTMANAGER_CONFIG_SECRET,
                "resources": resources("20m", "64Mi", "256Mi"),
                "storage": {"volumeClaimTemplate": {"spec": {
                    **storage_class_spec, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "2Gi"}}}}},
                **placement,
            },
        },
        "grafana": {
            "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            # The admin password as a file (Grafana's `__FILE` variables), not an environment variable. The
            # config sidecars then cannot call Grafana's reload API: Grafana polls the dashboards itself, and a
            # new datasource needs a Grafana restart.
            "env": {"GF_SECURITY_ADMIN_USER": "admin",
                    "GF_SECURITY_ADMIN_PASSWORD__FILE": f"{GRAFANA_ADMIN_MOUNT}/admin-password"},
            "extraSecretMounts": [{"name": "grafana-admin", "secretName": GRAFANA_ADMIN_SECRET,
                                   "mountPath": GRAFANA_ADMIN_MOUNT, "readOnly": True, "defaultMode": 0o440}],
            # Grafana writes its database and plugins to the volume, temporary files and logs to emptyDirs.
            "containerSecurityContext": {"readOnlyRootFilesystem": True},
            "extraEmptyDirMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "logs", "mountPath": "/var/log/grafana"}],
            "persistence": {"enabled": True, "size": "10Gi", **storage_class_spec},
            # One pod on a ReadWriteOnce volume: a surge pod on another node could never attach it.
            "deploymentStrategy": {"type": "Recreate"},
            # The sidecars read ConfigMaps in the monitoring namespace only, through a Role of the program's
            # that grants nothing else (the chart's own also reads every Secret of the namespace).
            "rbac": {"namespaced": True, "useExistingRole": GRAFANA_CONFIG_READER_ROLE},
            "resources": resources("100m", "256Mi", "512Mi"),
            "sidecar": {"resources": resources("10m", "64Mi", "128Mi"),
                        "securityContext": {"readOnlyRootFilesystem": True},
                        "dashboards": {"enabled": True, "label": "grafana_dashboard", "labelValue": "1",
                                       "searchNamespace": [w.MONITORING_NAMESPACE, *(dashboard_namespaces or [])],
                                       "resource": "configmap",
                                       "skipReload": True},
                        # Grafana reads datasources once, at start: without reload, the sidecar writes them
                        # before it, as an init container.
                        "datasources": {"resource": "configmap", "skipReload": True, "initDatasources": True}},
            **({"grafana.ini": {"server": {"root_url": f"https://{settings.grafana_host}"}}}
               if settings.is_aws and settings.grafana_host else {}),
            "ingress": {"enabled": False},
            # The volume's group comes from fsGroup; the chart's chown init container would run as root.
            "initChownData": {"enabled": False},
            **placement,
        },
        "kube-state-metrics": {"resources": resources("20m", "64Mi", "256Mi"), **placement},
        # A DaemonSet on every node: no node selector. Host access (network, PID namespace, /proc, /sys, /) is
        # what it is for (docs/observability.md); everything else is as tight as `restricted`.
        "prometheus-node-exporter": {
            "resources": resources("20m", "32Mi", "64Mi"),
            "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]},
                                         "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }


def alertmanager_config(settings: ObservabilitySettings) -> dict:
    """alertmanager.yaml: every alert to the configured receivers (Slack and/or e-mail), or to a null
    receiver when none is set. Holds credentials: it goes into a Secret only."""
    receiver: dict = {"name": "platform"}
    if settings.alert_slack_webhook_url:
        slack: dict = {"api_url": settings.alert_slack_webhook_url, "send_resolved": True,
                       "title": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }}',
                       "text": '{{ range .Alerts }}{{ .Annotations.summary }}: {{ .Annotations.description }}\n'
                               'Runbook: {{ .Annotations.runbook_url }}\n{{ end }}'}
        if settings.alert_slack_channel:
            slack["channel"] = settings.alert_slack_channel
        receiver["slack_configs"] = [slack]
    if settings.alert_email_to:
        receiver["email_configs"] = [{"to": settings.alert_email_to, "send_resolved": True}]
    configured = len(receiver) > 1
    config: dict = {
        "route": {
            "receiver": "platform" if configured else "null",
            "group_by": ["alertname", "namespace"],
            "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
            # kube-prometheus-stack's always-firing Watchdog (no dead-man's switch is wired: docs/observability.md), its
            # InfoInhibitor and the default rules' info-level alerts go nowhere.
            "routes": [{"receiver": "null", "matchers": ['alertname =~ "Watchdog|InfoInhibitor"']},
                       {"receiver": "null", "matchers": ['severity = "info"']}],
        },
        "inhibit_rules": [
            {"source_matchers": ['severity = "critical"'], "target_matchers": ['severity = "warning"'],
             "equal": ["alertname", "namespace"]},
            # The chart's convention: InfoInhibitor fires while info alerts fire alone in a namespace.
            {"source_matchers": ['alertname = "InfoInhibitor"'], "target_matchers": ['severity = "info"'],
             "equal": ["namespace"]},
        ],
        "receivers": [{"name": "null"}, *([receiver] if configured else [])],
    }
    if settings.alert_email_to:
        config["global"] = {"smtp_smarthost": settings.alert_smtp_smarthost, "smtp_from": settings.alert_email_from,
                            "smtp_require_tls": True,
                            **({"smtp_auth_username": settings.alert_smtp_username} if settings.alert_smtp_username else {}),
                            **({"smtp_auth_password": settings.alert_smtp_password} if settings.alert_smtp_password else {})}
    return config


def pod_monitor(name: str, selector: dict, port: str, namespace: str, relabelings: Optional[list] = None) -> dict:
    """A PodMonitor (in the monitoring namespace) for pods of `namespace`."""
    endpoint: dict = {"port": port, "path": "/metrics"}
    if relabelings:
        endpoint["relabelings"] = relabelings
    return {"name": name, "kind": "PodMonitor", "spec": {
        "namespaceSelector": {"matchNames": [namespace]},
        "selector": {"matchLabels": selector}, "podMetricsEndpoints": [endpoint]}}


def monitors(settings: ObservabilitySettings) -> list[dict]:
    """What Prometheus scrapes, by port name as the charts and operators name the ports. All of them live
    in the monitoring namespace and name the namespace they watch. The in-cluster engines' monitors exist only
    when those engines run; Aurora, RDS and ElastiCache report to CloudWatch."""
    cluster_label = [{"sourceLabels": ["__meta_kubernetes_pod_label_cnpg_io_cluster"], "targetLabel": "cluster"}]
    found = [
        {"name": "airflow-statsd", "kind": "ServiceMonitor",
         "spec": {"namespaceSelector": {"matchNames": [w.AIRFLOW_NAMESPACE]},
                  "selector": {"matchLabels": w.AIRFLOW_STATSD},
                  "endpoints": [{"port": "statsd-scrape", "path": "/metrics"}]}},
    ]
    if settings.managed_database:
        # The Airflow chart's PgBouncer and its metrics exporter (port `metrics`).
        found.append(pod_monitor(w.CHART_PGBOUNCER, w.CHART_PGBOUNCER_PODS, "metrics", w.AIRFLOW_NAMESPACE))
    else:
        found += [
            pod_monitor("airflow-db", w.POSTGRES_INSTANCES, "metrics", w.AIRFLOW_NAMESPACE, cluster_label),
            pod_monitor("airflow-db-pooler", w.POSTGRES_POOLER_PODS, "metrics", w.AIRFLOW_NAMESPACE, cluster_label),
            pod_monitor("cloudnative-pg", w.CNPG_OPERATOR_PODS, "metrics", w.CNPG_NAMESPACE),
        ]
    if not settings.managed_broker:
        found += [
            pod_monitor("airflow-redis", w.REDIS_SERVERS, "exporter-port", w.AIRFLOW_NAMESPACE),
            pod_monitor("airflow-redis-haproxy", w.REDIS_HAPROXY, "metrics-port", w.AIRFLOW_NAMESPACE),
        ]
    found.append(pod_monitor("keda-operator", w.KEDA_OPERATOR_PODS, "metrics", w.KEDA_NAMESPACE))
    return found


@dataclass
class ObservabilityArgs:
    settings: ObservabilitySettings
    cluster: ClusterHandle
    # The monitoring namespace (Security's; Pod Security `privileged` for node-exporter).
    namespace: pulumi.Output[str]
    # cert-manager issues the operator's admission webhook certificate.
    certificate_authority: CertificateAuthority
    # The alert thresholds follow the in-cluster stores' shape (instances, replicas, client limit).
    stores: ObservedStores
    # target=aws: the shared ALB's settings and certificate, for Grafana's Ingress.
    ingress: Optional[Ingress] = None
    # Other namespaces whose dashboard ConfigMaps Grafana loads, by a short name (CloudNativePG's operator's).
    dashboard_namespaces: dict[str, pulumi.Output[str]] = field(default_factory=dict)


class Observability(pulumi.ComponentResource):
    """kube-prometheus-stack, monitors, alert rules, dashboards, and the way to Grafana."""

    release: k8s.helm.v3.Release
    grafana_url: pulumi.Output[str]
    grafana_admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: ObservabilityArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Observability", name, None, opts)
        settings = args.settings
        # Every object names args.namespace: it waits for the namespace through that input.
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider)

        password = random.RandomPassword(f"{name}-grafana-admin", length=32, special=False, min_lower=2,
                                         min_upper=2, min_numeric=2, opts=pulumi.ResourceOptions(parent=self))
        self.grafana_admin_password = pulumi.Output.secret(password.result)
        grafana_admin = k8s.core.v1.Secret(
            f"{name}-grafana-admin",
            metadata={"name": GRAFANA_ADMIN_SECRET, "namespace": args.namespace},
            string_data={"admin-user": "admin", "admin-password": self.grafana_admin_password},
            opts=k8s_opts)
        config_reader = k8s.rbac.v1.Role(
            f"{name}-grafana-config-reader",
            metadata={"name": GRAFANA_CONFIG_READER_ROLE, "namespace": args.namespace},
            rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
            opts=k8s_opts)
        readers: list[k8s.rbac.v1.RoleBinding] = []
        # The sidecars read ConfigMaps in the other dashboard namespaces too, through the same narrow Role there.
        for short_name, namespace in args.dashboard_namespaces.items():
            reader = k8s.rbac.v1.Role(
                f"{name}-grafana-config-reader-{short_name}",
                metadata={"name": GRAFANA_CONFIG_READER_ROLE, "namespace": namespace},
                rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
                opts=k8s_opts)
            readers.append(k8s.rbac.v1.RoleBinding(
                f"{name}-grafana-config-reader-{short_name}",
                metadata={"name": GRAFANA_CONFIG_READER_ROLE, "namespace": namespace},
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reader.metadata.name},
                subjects=[{"kind": "ServiceAccount", "name": GRAFANA_SERVICE_ACCOUNT,
                           "namespace": args.namespace}],
                opts=k8s_opts))
        alertmanager = k8s.core.v1.Secret(
            f"{name}-alertmanager-config",
            metadata={"name": ALERTMANAGER_CONFIG_SECRET, "namespace": args.namespace},
            string_data={"alertmanager.yaml": pulumi.Output.secret(
                yaml.safe_dump(alertmanager_config(settings), sort_keys=False))},
            opts=k8s_opts)

        self.release = chart_release(
            f"{name}-kube-prometheus-stack", release_name=w.PROMETHEUS_RELEASE, chart="kube-prometheus-stack",
            version=settings.kube_prometheus_stack_chart_version, repo=KPS_CHARTS, namespace=args.namespace,
            values=kube_prometheus_stack_values(settings, args.cluster.storage_class_name,
                                                list(args.dashboard_namespaces.values())),
            # Prometheus and Grafana wait for their volumes on fresh nodes.
            timeout=900,
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                depends_on=[grafana_admin, config_reader, *readers, alertmanager,
                            args.certificate_authority.cert_manager])))
        with_crds = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[self.release]))

        for monitor in monitors(settings):
            k8s.apiextensions.CustomResource(
                f"{name}-{monitor['name']}",
                api_version="monitoring.coreos.com/v1", kind=monitor["kind"],
                metadata={"name": monitor["name"], "namespace": args.namespace, "labels": SELECTED},
                spec=monitor["spec"], opts=with_crds)
        for area, alerts in alert_groups(settings, args.stores).items():
            k8s.apiextensions.CustomResource(
                f"{name}-rules-{area}",
                api_version="monitoring.coreos.com/v1", kind="PrometheusRule",
                metadata={"name": f"airflow-platform-{area}", "namespace": args.namespace,
                          "labels": SELECTED},
                spec=prometheus_rule_spec(area, alerts, settings.alert_runbook_base_url), opts=with_crds)
        for dashboard in sorted(DASHBOARDS_DIR.glob("*.json")):
            # Grafana's sidecar loads every ConfigMap with this label, from every namespace.
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{dashboard.stem}",
                metadata={"name": f"dashboard-{dashboard.stem}", "namespace": args.namespace,
                          "labels": {"grafana_dashboard": "1"}},
                data={dashboard.name: json.dumps(json.loads(dashboard.read_text()))},
                opts=k8s_opts)

        if args.ingress is not None:
            controller = args.ingress.load_balancer_controller
            self.grafana_url = alb_ingress(
                f"{name}-grafana", ingress=args.ingress, namespace=args.namespace, host=settings.grafana_host,
                service=GRAFANA_SERVICE, port=80, health_check_path="/api/health", group_order=20,
                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[
                    self.release, *([controller] if controller else [])])))
        else:
            # A laptop cluster: `kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80`.
            self.grafana_url = pulumi.Output.from_input("http://localhost:3000")
        self.register_outputs({"grafana_url": self.grafana_url})
