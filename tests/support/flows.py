"""The world of the flow matrix (tests/test_network_flows.py), which the observability and security tests use
too: every pod the platform runs with its role, the addresses around it (the Kubernetes API, AWS, the internet),
per stack variant, and the NetworkPolicies evaluated (the program's and the charts').

The pods are not a list kept by hand: they are the workloads of every chart the program installs, rendered by real
Helm with the values the program produced, plus the pods the CloudNativePG operator creates (instances, poolers,
bootstrap Jobs; labels from its source, see support/rendering.py).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Optional

from components import workloads as w
from components.cluster import subnet_plan
from components.cluster.network import secrets_manager_addresses
from mock_engine import FAKE_S3_CIDRS, FAKE_ZONES, ProgramRun, run_program
from support.netpol import Endpoint, Policy, selects
from support.rendering import Pod, platform_pods, rendered_network_policies

AIRFLOW = w.AIRFLOW_NAMESPACE

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


# Role of every pod the platform runs: (role, namespace, label selector); the first match wins.
ROLES: list[tuple[str, str, dict]] = [
    # The Airflow chart's PgBouncer, in front of Aurora / RDS.
    ("chart-pgbouncer", AIRFLOW, {"matchLabels": w.airflow_component("pgbouncer")}),
    # The Job that creates Airflow's role in Aurora / RDS.
    ("db-bootstrap", AIRFLOW, {"matchLabels": w.DB_BOOTSTRAP_PODS}),
    *[(role, AIRFLOW, {"matchLabels": {**w.AIRFLOW_PODS, "component": component}}) for role, component in (
        ("scheduler", "scheduler"), ("worker", "worker"), ("triggerer", "triggerer"),
        ("dag-processor", "dag-processor"), ("api-server", "api-server"), ("flower", "flower"),
        ("statsd", "statsd"), ("migrate-job", "run-airflow-migrations"), ("create-user-job", "create-user-job"),
        ("database-cleanup", "database-cleanup"))],
    ("redis", AIRFLOW, {"matchLabels": w.REDIS_SERVERS}),
    ("haproxy", AIRFLOW, {"matchLabels": w.REDIS_HAPROXY}),
    ("postgres", AIRFLOW, {"matchLabels": w.POSTGRES_INSTANCES}),
    ("pgbouncer", AIRFLOW, {"matchLabels": w.POSTGRES_POOLER_PODS}),
    *[(f"{job}-job", AIRFLOW, {"matchLabels": {**w.POSTGRES_JOBS_CLUSTER_LABEL, w.POSTGRES_JOB_ROLE_LABEL: job}})
      for job in ("initdb", "join", "full-recovery", "major-upgrade")],
    ("cnpg-operator", w.CNPG_NAMESPACE, {"matchLabels": w.CNPG_OPERATOR_PODS}),
    ("barman-cloud-plugin", w.CNPG_NAMESPACE, {"matchLabels": {"app.kubernetes.io/name": "plugin-barman-cloud"}}),
    *[(f"cert-manager-{component}", w.CERT_MANAGER_NAMESPACE,
       {"matchLabels": {"app.kubernetes.io/instance": "cert-manager", "app.kubernetes.io/component": component}})
      for component in ("controller", "webhook", "cainjector", "startupapicheck")],
    ("keda-operator", w.KEDA_NAMESPACE, {"matchLabels": w.KEDA_OPERATOR_PODS}),
    ("keda-metrics-apiserver", w.KEDA_NAMESPACE, {"matchLabels": {"app": "keda-operator-metrics-apiserver"}}),
    ("keda-admission-webhooks", w.KEDA_NAMESPACE, {"matchLabels": {"app": "keda-admission-webhooks"}}),
    ("lb-controller", "kube-system", {"matchLabels": {"app.kubernetes.io/name": "aws-load-balancer-controller"}}),
    ("karpenter", "kube-system", {"matchLabels": {"app.kubernetes.io/name": "karpenter"}}),
    ("prometheus", w.MONITORING_NAMESPACE, {"matchLabels": w.PROMETHEUS_PODS}),
    ("alertmanager", w.MONITORING_NAMESPACE, {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}),
    ("grafana", w.MONITORING_NAMESPACE, {"matchLabels": {"app.kubernetes.io/name": "grafana"}}),
    ("kube-state-metrics", w.MONITORING_NAMESPACE, {"matchLabels": {"app.kubernetes.io/name": "kube-state-metrics"}}),
    ("node-exporter", w.MONITORING_NAMESPACE, {"matchLabels": {"app.kubernetes.io/name": "prometheus-node-exporter"}}),
    ("prometheus-operator", w.MONITORING_NAMESPACE,
     {"matchLabels": {"app.kubernetes.io/name": "kube-prometheus-stack-prometheus-operator"}}),
]


def role_of(pod: Pod | Endpoint) -> Optional[str]:
    return next((role for role, namespace, selector in ROLES
                 if namespace == pod.namespace and selects(selector, pod.labels)), None)


STACK_VARIANTS = {
    "local": ("local", {}),
    "staging": ("staging", {}),
    "prod": ("prod", {}),
    # A point-in-time restore: the recovery Job instead of initdb.
    "prod-restore": ("prod", {"postgresRestoreTargetTime": "2026-11-27T23:00:00Z",
                              "postgresBackupServerName": "airflow-db-r1"}),
    "prod-managed": ("prod-managed", {}),
    # DAGs from git: HTTPS to the internet from the pods that run git-sync.
    "prod-git-sync": ("prod", {"gitSyncRepository": "https://github.com/example/dags.git"}),
}


@functools.lru_cache(maxsize=None)
def variant_run(variant: str) -> ProgramRun:
    stack, overrides = STACK_VARIANTS[variant]
    return run_program(stack, overrides=overrides)


def vpc_of(stack: str) -> ipaddress.IPv4Network:
    """The VPC the flow matrix places an AWS stack's addresses in."""
    return ipaddress.ip_network("10.20.0.0/16" if stack == "prod" else "10.30.0.0/16")


@functools.lru_cache(maxsize=None)
def endpoints(variant: str) -> dict[str, list[Endpoint]]:
    """Endpoints by role: one per pod template the platform runs, plus the world around it."""
    stack = STACK_VARIANTS[variant][0]
    if stack == "local":
        pod_net = iter(ipaddress.ip_network("10.244.0.0/16").hosts())
        service_ip, api_servers, lb_addresses = "10.96.0.1", ["172.18.0.2"], []
    else:
        private, public = subnet_plan(vpc_of(stack), FAKE_ZONES[:3])
        pod_net = iter(ipaddress.ip_network(private[1]).hosts())
        service_ip = "172.20.0.1"
        # The EKS endpoint's network interfaces sit in the private subnets.
        api_servers = [str(list(ipaddress.ip_network(cidr).hosts())[9]) for cidr in private]
        # An internet-facing ALB has a node in every zone's public subnet.
        lb_addresses = [str(list(ipaddress.ip_network(cidr).hosts())[7]) for cidr in public]

    found: dict[str, list[Endpoint]] = {}

    def add(role: str, endpoint: Endpoint) -> None:
        found.setdefault(role, []).append(endpoint)

    for pod in platform_pods(variant_run(variant)):
        role = role_of(pod)
        if role is not None:
            add(role, Endpoint(pod.source, pod.namespace, str(next(pod_net)), {**pod.labels, "pod-template-hash": "x"}))

    def pod(role, namespace, labels):
        add(role, Endpoint(role, namespace, str(next(pod_net)), labels))

    pod("coredns", "kube-system", {**w.KUBE_DNS_PODS, "eks.amazonaws.com/component": "coredns"})
    pod("stranger", "default", {"app": "curious"})
    pod("stranger-posing-as-worker", "default", dict(w.AIRFLOW_WORKER))
    add("kubernetes-service", Endpoint("kubernetes-service", None, service_ip))
    for index, address in enumerate(api_servers):
        add("kubernetes-api", Endpoint(f"kubernetes-api-{index}", None, address))
    s3_address = str(list(ipaddress.ip_network(FAKE_S3_CIDRS[2]).hosts())[100])
    add("s3", Endpoint("s3", None, s3_address))
    add("internet-host", Endpoint("internet-host", None, "140.82.121.4"))
    add("pod-identity-agent", Endpoint("pod-identity-agent", None, "169.254.170.23"))
    add("vpc-neighbour", Endpoint("vpc-neighbour", None, "10.20.7.7" if stack == "prod" else "10.30.7.7"))
    for zone, address in enumerate(lb_addresses):
        add(f"load-balancer-{zone}", Endpoint(f"load-balancer-{zone}", None, address))
    # Addresses nothing should reach on the platform's ports: the narrowness test probes them.
    add("link-local-host", Endpoint("link-local-host", None, "169.254.1.1"))
    add("other-private-range", Endpoint("other-private-range", None, "172.31.5.5"))
    if stack != "local":
        add("public-subnet-host", Endpoint("public-subnet-host", None, str(list(ipaddress.ip_network(public[0]).hosts())[50])))
    if stack == "local":
        # k3d's Traefik; the default of airflow:localIngressNamespace.
        pod("ingress-controller", "kube-system", {"app.kubernetes.io/name": "traefik"})
    if stack != "local":
        # Aurora's writer and ElastiCache's primary take addresses in the private subnets; the Secrets Manager
        # endpoint has its own fixed ones.
        add("database", Endpoint("database", None, str(list(ipaddress.ip_network(private[2]).hosts())[40])))
        add("broker", Endpoint("broker", None, str(list(ipaddress.ip_network(private[0]).hosts())[41])))
        for index, address in enumerate(secrets_manager_addresses(private)):
            add("secrets-manager", Endpoint(f"secrets-manager-{index}", None, address))
    return found


def policies_of(run: ProgramRun) -> list[Policy]:
    """The program's own NetworkPolicies."""
    return [Policy(r.values["metadata"]["name"], r.values["metadata"]["namespace"], r.values["spec"])
            for r in run.of_type(NETWORK_POLICY)]


def chart_policies_of(run: ProgramRun) -> list[Policy]:
    return [Policy(d["metadata"]["name"], d["metadata"]["namespace"], d["spec"]) for d in rendered_network_policies(run)]


def all_policies(variant: str) -> list[Policy]:
    """Every policy of the variant; on AWS as the VPC CNI may judge them: with `ipBlock.except` ignored
    (aws/amazon-vpc-cni-k8s#2592), so no flow can hold only thanks to it."""
    run = variant_run(variant)
    policies = policies_of(run) + chart_policies_of(run)
    return policies if STACK_VARIANTS[variant][0] == "local" else [without_except(policy) for policy in policies]


def without_except(policy: Policy) -> Policy:
    def peers(rules):
        return [{**rule, **{key: [{**peer, "ipBlock": {"cidr": peer["ipBlock"]["cidr"]}} if "ipBlock" in peer else peer
                                  for peer in rule[key]] for key in ("to", "from") if rule.get(key)}}
                for rule in rules]
    spec = {**policy.spec, **{key: peers(policy.spec[key]) for key in ("ingress", "egress") if policy.spec.get(key)}}
    return Policy(policy.name, policy.namespace, spec)
