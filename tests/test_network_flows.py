"""The flow matrix over every pod the platform runs.

The pods are not a list kept by hand: they are the workloads of every chart the program installs, rendered
by real Helm with the values the program produced, plus the pods the CloudNativePG operator creates
(instances, poolers, bootstrap Jobs; labels from its source, see tests/support/rendering.py). Every such pod
must have a role (support/flows.py's ROLES), or the test fails. The policies evaluated are the program's own and the ones the charts
render. The Kubernetes API is modelled as its ClusterIP and as the API server's own addresses.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Optional

import pytest

from components import workloads as w
from components.cluster import subnet_plan
from mock_engine import FAKE_ZONES, run_program
from support.flows import (
    STACK_VARIANTS,
    all_policies,
    chart_policies_of,
    endpoints,
    policies_of,
    role_of,
    variant_run,
    vpc_of,
)
from support.netpol import Endpoint, Policy, Service, allowed, allowed_through_service, selects
from support.rendering import chart_services, operator_services, platform_pods

AIRFLOW = w.AIRFLOW_NAMESPACE

AIRFLOW_ROLES = ("scheduler", "worker", "triggerer", "dag-processor", "api-server", "flower", "statsd",
                 "migrate-job", "create-user-job", "database-cleanup", "redis", "haproxy", "postgres", "pgbouncer",
                 "initdb-job", "join-job", "full-recovery-job", "major-upgrade-job")
AIRFLOW_CLIENTS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server", "flower", "migrate-job",
                   "create-user-job", "database-cleanup")
LOG_WRITERS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server")
# Who opens the broker and who calls the execution API (Airflow 3.1.8: the triggerer and the DAG processor serve
# the execution API in process; the e2e tier runs every component that is not listed with an unreachable URL).
BROKER_CLIENTS = ("worker", "scheduler", "flower")
EXECUTION_API_CLIENTS = ("worker",)
NOT_BROKER_CLIENTS = ("api-server", "triggerer", "dag-processor", "migrate-job", "create-user-job", "database-cleanup")
NOT_EXECUTION_API_CLIENTS = ("scheduler", "triggerer", "dag-processor", "flower", "migrate-job", "create-user-job")
CNPG_JOBS = ("initdb-job", "join-job", "full-recovery-job", "major-upgrade-job")
# CloudNativePG's pods read their Cluster.
API_CALLERS = ("postgres", "pgbouncer", *CNPG_JOBS)
# The workers patch their own pods' deletion cost (workerScaleInIdleFirst, on by default) at the `kubernetes`
# Service's address only: on AWS the VPC CNI judges that address, so they need no way to the endpoint's
# interfaces (port 443 anywhere in the private subnets); a laptop's plugin judges after translation.
SERVICE_ONLY_API_CALLERS = ("worker",)

COMMON_REQUIRED = [
    *[(role, "coredns", 53, proto) for role in AIRFLOW_ROLES for proto in ("UDP", "TCP")],
    *[(role, "pgbouncer", 5432, "TCP") for role in (*AIRFLOW_CLIENTS, "keda-operator")],
    *[(role, "api-server", 8080, "TCP") for role in EXECUTION_API_CLIENTS],
    *[(role, "haproxy", 6379, "TCP") for role in BROKER_CLIENTS],
    *[(role, "statsd", 9125, "UDP") for role in LOG_WRITERS],
    ("api-server", "worker", 8793, "TCP"),
    ("api-server", "triggerer", 8794, "TCP"),
    ("pgbouncer", "postgres", 5432, "TCP"),
    ("postgres", "postgres", 5432, "TCP"),
    # The primary's liveness isolation check asks the other instances' status port (/failsafe).
    ("postgres", "postgres", 8000, "TCP"),
    ("join-job", "postgres", 5432, "TCP"),
    ("cnpg-operator", "postgres", 8000, "TCP"),
    *[(src, "redis", port, "TCP") for src in ("haproxy", "redis") for port in (6379, 26379)],
    ("prometheus", "statsd", 9102, "TCP"),
    ("prometheus", "postgres", 9187, "TCP"),
    ("prometheus", "pgbouncer", 9127, "TCP"),
    ("prometheus", "redis", 9121, "TCP"),
    ("prometheus", "haproxy", 9101, "TCP"),
    *[(role, "kubernetes-service", 443, "TCP") for role in (*API_CALLERS, *SERVICE_ONLY_API_CALLERS)],
]
AWS_REQUIRED = [
    *[(f"load-balancer-{zone}", "api-server", 8080, "TCP") for zone in range(3)],
    *[(role, "kubernetes-api", 443, "TCP") for role in API_CALLERS],
    *[(role, "s3", 443, "TCP") for role in (*LOG_WRITERS, "postgres", "full-recovery-job")],
    *[(role, "pod-identity-agent", 80, "TCP") for role in (*LOG_WRITERS, "postgres", "full-recovery-job")],
]
LOCAL_REQUIRED = [
    ("ingress-controller", "api-server", 8080, "TCP"),
    *[(role, "kubernetes-api", 6443, "TCP") for role in (*API_CALLERS, *SERVICE_ONLY_API_CALLERS)],
]
COMMON_FORBIDDEN = [
    *[("stranger", target, port, "TCP") for target, port in (
        ("api-server", 8080), ("haproxy", 6379), ("redis", 6379), ("pgbouncer", 5432), ("postgres", 5432),
        ("worker", 8793), ("triggerer", 8794), ("scheduler", 8974), ("dag-processor", 8793))],
    ("stranger", "statsd", 9125, "UDP"),
    *[("stranger-posing-as-worker", target, port, "TCP") for target, port in (
        ("pgbouncer", 5432), ("haproxy", 6379), ("api-server", 8080))],
    # The database only through PgBouncer, Redis only through HAProxy.
    *[(role, "postgres", 5432, "TCP") for role in ("worker", "api-server", "scheduler", "keda-operator",
                                                   "migrate-job")],
    *[(role, "redis", 6379, "TCP") for role in ("worker", "scheduler", "api-server")],
    ("api-server", "redis", 26379, "TCP"),
    # Each Airflow component reaches only the services it uses.
    *[(role, "haproxy", 6379, "TCP") for role in NOT_BROKER_CLIENTS],
    *[(role, "api-server", 8080, "TCP") for role in NOT_EXECUTION_API_CLIENTS],
    *[(role, "statsd", 9125, "UDP") for role in ("flower", "migrate-job", "create-user-job")],
    # The database cleanup reaches the database and nothing else of the platform.
    *[("database-cleanup", target, port, "TCP") for target, port in (("haproxy", 6379), ("api-server", 8080))],
    ("database-cleanup", "statsd", 9125, "UDP"),
    # statsd is not an Airflow client: it ingests metrics and is scraped, nothing else.
    *[("statsd", target, port, "TCP") for target, port in (
        ("pgbouncer", 5432), ("haproxy", 6379), ("api-server", 8080), ("postgres", 5432), ("redis", 26379),
        ("kubernetes-service", 443), ("s3", 443), ("pod-identity-agent", 80), ("internet-host", 443))],
    # Only the CloudNativePG pods and the workers call the Kubernetes API.
    *[(role, "kubernetes-service", 443, "TCP") for role in ("triggerer", "api-server", "scheduler", "redis",
                                                            "haproxy", "migrate-job")],
    ("scheduler", "kubernetes-api", 6443, "TCP"),
    # The internet on database ports, either way; and the internet at large.
    *[("internet-host", target, 5432, "TCP") for target in ("pgbouncer", "postgres")],
    *[(role, "internet-host", 5432, "TCP") for role in ("postgres", "pgbouncer", "worker")],
    *[(role, "internet-host", 443, "TCP") for role in ("worker", "postgres", "initdb-job", "scheduler")],
    ("worker", "worker", 8793, "TCP"),
    ("scheduler", "worker", 8793, "TCP"),
    ("prometheus", "api-server", 8080, "TCP"),
    ("prometheus", "worker", 8793, "TCP"),
    ("keda-operator", "haproxy", 6379, "TCP"),
    ("worker", "coredns", 80, "TCP"),
    ("worker", "flower", 5555, "TCP"),
    *[(role, "s3", 443, "TCP") for role in ("haproxy", "redis", "pgbouncer", "flower", "migrate-job")],
    ("redis", "pod-identity-agent", 80, "TCP"),
    ("initdb-job", "haproxy", 6379, "TCP"),
]
AWS_FORBIDDEN = [
    ("worker", "vpc-neighbour", 443, "TCP"),
    ("worker", "kubernetes-api", 443, "TCP"),
    ("postgres", "vpc-neighbour", 5432, "TCP"),
    ("load-balancer-0", "worker", 8793, "TCP"),
    ("load-balancer-1", "api-server", 8793, "TCP"),
    ("load-balancer-2", "pgbouncer", 5432, "TCP"),
]


# Aurora / RDS behind the chart's PgBouncer, ElastiCache, Secrets Manager (Pulumi.prod-managed.yaml). The managed
# services are addresses in the private subnets; the Secrets Manager endpoint has fixed ones.
MANAGED_CLIENTS = (*AIRFLOW_CLIENTS,)
MANAGED_REQUIRED = [
    *[(role, "coredns", 53, proto) for role in (*AIRFLOW_CLIENTS, "statsd", "chart-pgbouncer")
      for proto in ("UDP", "TCP")],
    *[(role, "chart-pgbouncer", 6543, "TCP") for role in (*MANAGED_CLIENTS, "keda-operator")],
    ("prometheus", "chart-pgbouncer", 9127, "TCP"),
    ("chart-pgbouncer", "database", 5432, "TCP"),
    ("db-bootstrap", "database", 5432, "TCP"),
    *[("db-bootstrap", "coredns", 53, proto) for proto in ("UDP", "TCP")],
    *[(role, "broker", 6379, "TCP") for role in BROKER_CLIENTS],
    *[(role, "secrets-manager", 443, "TCP") for role in LOG_WRITERS],
    *[(role, "api-server", 8080, "TCP") for role in EXECUTION_API_CLIENTS],
    *[(role, "statsd", 9125, "UDP") for role in LOG_WRITERS],
    ("api-server", "worker", 8793, "TCP"),
    ("api-server", "triggerer", 8794, "TCP"),
    ("prometheus", "statsd", 9102, "TCP"),
    *[(f"load-balancer-{zone}", "api-server", 8080, "TCP") for zone in range(3)],
    # The workers patch their own pods' deletion cost (at the Service's address only).
    ("worker", "kubernetes-service", 443, "TCP"),
    *[(role, "s3", 443, "TCP") for role in LOG_WRITERS],
    *[(role, "pod-identity-agent", 80, "TCP") for role in LOG_WRITERS],
]
MANAGED_FORBIDDEN = [
    *[("stranger", target, port, "TCP") for target, port in (
        ("chart-pgbouncer", 6543), ("api-server", 8080), ("worker", 8793), ("triggerer", 8794), ("scheduler", 8974),
        ("dag-processor", 8793))],
    ("stranger-posing-as-worker", "chart-pgbouncer", 6543, "TCP"),
    # The database only through PgBouncer; PgBouncer reaches nothing but the database.
    *[(role, "database", 5432, "TCP") for role in ("worker", "api-server", "scheduler", "migrate-job", "statsd")],
    *[("chart-pgbouncer", target, port, "TCP") for target, port in (
        ("broker", 6379), ("secrets-manager", 443), ("kubernetes-service", 443), ("kubernetes-api", 443),
        ("internet-host", 5432), ("s3", 443), ("pod-identity-agent", 80))],
    # The bootstrap Job reaches the database and nothing else.
    *[("db-bootstrap", target, port, "TCP") for target, port in (
        ("broker", 6379), ("secrets-manager", 443), ("chart-pgbouncer", 6543), ("kubernetes-service", 443),
        ("internet-host", 443), ("s3", 443))],
    ("stranger", "db-bootstrap", 5432, "TCP"),
    # Only the Airflow pods that run tasks and parse DAGs read secrets; the Secrets Manager endpoint is not the
    # EKS API's interfaces nor any other HTTPS server in the subnets.
    *[(role, "secrets-manager", 443, "TCP")
      for role in ("statsd", "flower", "migrate-job", "create-user-job", "database-cleanup")],
    *[(role, "kubernetes-api", 443, "TCP") for role in ("worker", "scheduler", "api-server")],
    ("worker", "vpc-neighbour", 443, "TCP"),
    # (Pods of namespaces without policies reach the private subnets: the security groups decide there.)
    *[(role, "broker", 6379, "TCP") for role in ("statsd", "chart-pgbouncer")],
    ("worker", "internet-host", 443, "TCP"),
    ("worker", "vpc-neighbour", 22, "TCP"),
    ("load-balancer-0", "chart-pgbouncer", 6543, "TCP"),
    *[(role, "broker", 6379, "TCP") for role in NOT_BROKER_CLIENTS],
    *[(role, "api-server", 8080, "TCP") for role in NOT_EXECUTION_API_CLIENTS],
]


def matrix(stack: str) -> tuple[list[tuple], list[tuple]]:
    if stack == "local":
        return COMMON_REQUIRED + LOCAL_REQUIRED, COMMON_FORBIDDEN
    if stack == "prod-managed":
        return MANAGED_REQUIRED, MANAGED_FORBIDDEN
    return COMMON_REQUIRED + AWS_REQUIRED, COMMON_FORBIDDEN + AWS_FORBIDDEN


# With gitSyncRepository: the pods the chart gives git-sync containers (test_git_sync_goes_out_from_the_pods_..
# checks these against the rendered chart) reach the git host over HTTPS, and nothing more of the world.
GIT_SYNC_ROLES = ("dag-processor", "triggerer", "worker")
GIT_SYNC_REQUIRED = [(role, "internet-host", 443, "TCP") for role in GIT_SYNC_ROLES]
GIT_SYNC_FORBIDDEN = [
    *[(role, "internet-host", 443, "TCP") for role in ("scheduler", "api-server", "statsd", "migrate-job")],
    *[(role, target, port, "TCP") for role in GIT_SYNC_ROLES for target, port in (
        ("internet-host", 22), ("vpc-neighbour", 443), ("public-subnet-host", 443), ("secrets-manager", 443))],
    *[(role, "kubernetes-api", 443, "TCP") for role in ("dag-processor", "triggerer")],
]


def matrix_of(variant: str) -> tuple[list[tuple], list[tuple]]:
    stack, overrides = STACK_VARIANTS[variant]
    required, forbidden = matrix(stack)
    if overrides.get("gitSyncRepository"):
        required = required + GIT_SYNC_REQUIRED
        forbidden = [flow for flow in forbidden if flow not in GIT_SYNC_REQUIRED] + GIT_SYNC_FORBIDDEN
    return required, forbidden


def expand(variant: str, flows: list[tuple]) -> list[tuple[Endpoint, Endpoint, int, str]]:
    """Role-level flows as endpoint pairs; a role the stack does not run (the join Job of a one-instance
    cluster) has no endpoints and no flows."""
    found = endpoints(variant)
    return [(source, destination, port, protocol) for src, dst, port, protocol in flows
            for source in found.get(src, []) for destination in found.get(dst, [])]


def refused(policies, pairs) -> list[str]:
    return [f"{s.name} -> {d.name}:{port}/{protocol}" for s, d, port, protocol in pairs
            if not allowed(policies, s, d, port, protocol)]


def admitted(policies, pairs) -> list[str]:
    return [f"{s.name} -> {d.name}:{port}/{protocol}" for s, d, port, protocol in pairs
            if allowed(policies, s, d, port, protocol)]


# --- the tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", STACK_VARIANTS)
def test_every_pod_the_platform_runs_has_a_role_in_the_flow_matrix(variant):
    pods = platform_pods(variant_run(variant))
    assert len(pods) >= 15
    unknown = [f"{pod.source} in {pod.namespace} {pod.labels}" for pod in pods if role_of(pod) is None]
    assert unknown == [], "pods the flow matrix does not know"


MANAGED_SERVICE_FLOWS = [
    *[(role, "airflow-pgbouncer", 6543, "TCP") for role in (*AIRFLOW_CLIENTS, "keda-operator")],
    *[(role, "airflow-api-server", 8080, "TCP") for role in EXECUTION_API_CLIENTS],
    *[(role, "airflow-statsd", 9125, "UDP") for role in LOG_WRITERS],
]


def test_with_managed_engines_the_pgbouncer_service_is_reached_as_the_vpc_cni_evaluates_it():
    admitted_flows, refused_flows = through_services("prod-managed", MANAGED_SERVICE_FLOWS, before_translation=True)
    assert refused_flows == []
    assert {service for _, service, _, _ in admitted_flows} == {"airflow-pgbouncer", "airflow-api-server",
                                                                "airflow-statsd"}
    admitted_forbidden, _ = through_services(
        "prod-managed", [("statsd", "airflow-pgbouncer", 6543, "TCP"), ("stranger", "airflow-pgbouncer", 6543, "TCP")],
        before_translation=True)
    assert admitted_forbidden == []


def test_with_managed_engines_no_in_cluster_engine_runs_and_pgbouncer_is_the_charts():
    roles = set(endpoints("prod-managed"))
    assert "chart-pgbouncer" in roles and len(endpoints("prod-managed")["chart-pgbouncer"]) == 1
    assert not roles & {"postgres", "pgbouncer", "redis", "haproxy", "initdb-job", "join-job", "cnpg-operator",
                        "barman-cloud-plugin"}
    assert "chart-pgbouncer" not in set(endpoints("prod"))


def test_the_matrix_knows_the_operator_made_pods():
    roles = {variant: set(endpoints(variant)) for variant in STACK_VARIANTS}
    assert {"postgres", "pgbouncer", "initdb-job", "join-job"} <= roles["prod"]
    assert "full-recovery-job" in roles["prod-restore"] and "initdb-job" not in roles["prod-restore"]
    assert "join-job" not in roles["local"], "one instance: no join Job"
    assert {"cert-manager-startupapicheck", "migrate-job", "create-user-job", "keda-operator"} <= roles["local"]


@pytest.mark.parametrize("variant", STACK_VARIANTS)
def test_every_required_flow_is_allowed_and_every_forbidden_flow_is_denied(variant):
    required, forbidden = matrix_of(variant)
    policies = all_policies(variant)
    required_pairs, forbidden_pairs = expand(variant, required), expand(variant, forbidden)
    assert len(required_pairs) > len(required) / 2 and len(forbidden_pairs) > len(forbidden) / 2
    assert refused(policies, required_pairs) == []
    assert admitted(policies, forbidden_pairs) == []


@pytest.mark.parametrize("variant", ["local", "prod", "prod-restore", "prod-managed", "prod-git-sync"])
def test_every_allow_rule_of_the_program_is_needed_by_some_required_flow(variant):
    run = variant_run(variant)
    own, charts = policies_of(run), chart_policies_of(run)
    required, forbidden = matrix_of(variant)
    required_pairs, forbidden_pairs = expand(variant, required), expand(variant, forbidden)
    for index, policy in enumerate(own):
        others = own[:index] + own[index + 1:] + charts
        rules = policy.spec.get("ingress") or policy.spec.get("egress") or []
        if not rules:
            assert policy.name == "default-deny-all"
            assert admitted(others, forbidden_pairs), "without the default deny, forbidden flows open"
            continue
        key = "ingress" if "ingress" in policy.spec else "egress"
        for rule_index in range(len(rules)):
            weakened = Policy(policy.name, policy.namespace,
                              {**policy.spec, key: rules[:rule_index] + rules[rule_index + 1:]})
            assert refused(others + [weakened], required_pairs), f"{policy.name} rule {rule_index} is not needed"


def test_the_kubernetes_api_is_admitted_at_its_service_address_and_its_own_addresses_only(prod):
    by_name = {p.name: p.spec for p in policies_of(prod)}
    service = by_name["pgbouncer-to-kubernetes-service-egress"]["egress"][0]
    assert service["to"] == [{"ipBlock": {"cidr": "172.20.0.1/32"}}]
    assert service["ports"] == [{"port": 443, "protocol": "TCP"}]
    servers = by_name["pgbouncer-to-kubernetes-api-egress"]["egress"][0]
    assert [peer["ipBlock"]["cidr"] for peer in servers["to"]] == subnet_plan(ipaddress.ip_network("10.20.0.0/16"), FAKE_ZONES[:3])[0]
    eks = prod.one("aws:eks/cluster:Cluster").values
    assert eks["kubernetesNetworkConfig"]["serviceIpv4Cidr"] == "172.20.0.0/16"


@pytest.mark.parametrize("variant", [v for v, (stack, _) in STACK_VARIANTS.items() if stack != "local"])
def test_no_aws_rule_relies_on_except(variant):
    """The VPC CNI's policy agent has open reports of ignoring `except`: no AWS policy (the program's or a
    chart's) may carry one, so the matrix above, judged with `except` stripped, is what EKS enforces."""
    run = variant_run(variant)
    for policy in policies_of(run) + chart_policies_of(run):
        for rule in [*(policy.spec.get("egress") or []), *(policy.spec.get("ingress") or [])]:
            for peer in [*(rule.get("to") or []), *(rule.get("from") or [])]:
                assert "except" not in peer.get("ipBlock", {}), policy.name


def test_an_internal_load_balancer_is_admitted_from_the_private_subnets_only():
    run = run_program("prod", overrides={"ingressScheme": "internal"})
    private, public = subnet_plan(ipaddress.ip_network("10.20.0.0/16"), FAKE_ZONES[:3])
    policies = policies_of(run) + chart_policies_of(run)
    api_server = endpoints("prod")["api-server"][0]
    internal_alb = Endpoint("internal-alb", None, str(list(ipaddress.ip_network(private[2]).hosts())[5]))
    public_alb = Endpoint("public-alb", None, str(list(ipaddress.ip_network(public[0]).hosts())[7]))
    assert allowed(policies, internal_alb, api_server, 8080)
    assert not allowed(policies, public_alb, api_server, 8080)
    chart_sources = [p["ipBlock"]["cidr"] for p in
                     run.one("kubernetes:helm.sh/v3:Release", "airflow-airflow").values["values"]["apiServer"]
                     ["networkPolicy"]["ingress"]["from"] if "ipBlock" in p]
    assert chart_sources == private


def test_worker_egress_to_data_sources_is_opt_in():
    run = run_program("prod", overrides={"workerEgressCidrs": ["192.0.2.0/24"]})
    found = endpoints("prod")
    warehouse = Endpoint("warehouse", None, "192.0.2.10")
    assert allowed(policies_of(run), found["worker"][0], warehouse, 5439)
    assert not allowed(policies_of(run), found["scheduler"][0], warehouse, 5439)
    assert not allowed(all_policies("prod"), found["worker"][0], warehouse, 5439)


def test_triggerer_and_dag_processor_egress_are_opt_in_each_on_its_own():
    """Deferred tasks' triggers poll from the triggerer, Airflow 3's DAG callbacks (and their e-mail) run in the
    DAG processor: each gets its own destinations, and neither the workers' nor the other's."""
    run = run_program("prod", overrides={"triggererEgressCidrs": ["192.0.2.0/24"],
                                         "dagProcessorEgressCidrs": ["198.51.100.0/24"]})
    found, policies = endpoints("prod"), policies_of(run) + chart_policies_of(run)
    api, smtp = Endpoint("polled-api", None, "192.0.2.10"), Endpoint("smtp-relay", None, "198.51.100.5")
    assert allowed(policies, found["triggerer"][0], api, 443)
    assert allowed(policies, found["dag-processor"][0], smtp, 587)
    assert not allowed(policies, found["triggerer"][0], smtp, 587)
    assert not allowed(policies, found["dag-processor"][0], api, 443)
    assert not [role for role in ("worker", "scheduler", "api-server") for target in (api, smtp)
                if allowed(policies, found[role][0], target, 443)]
    for role, target in (("triggerer", api), ("dag-processor", smtp)):
        assert not allowed(all_policies("prod"), found[role][0], target, 443), f"{role}: closed by default"


KPO_POD = {"dag_id": "etl", "task_id": "load", "run_id": "manual__1", "kubernetes_pod_operator": "True",
           "try_number": "1", "airflow_version": "3.1.8", "airflow_kpo_in_cluster": "True"}


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_with_the_pod_operator_workers_reach_the_kubernetes_api_and_its_pods_reach_the_data(stack):
    """kubernetesPodOperator gives the workers a token and the chart's pod-launching Role: they must reach the
    API at its Service address and at the API server's own addresses, and nothing else more; the pods they
    launch (labels of cncf.kubernetes's KubernetesPodOperator) reach DNS and the workers' data sources."""
    run = run_program(stack, overrides={"kubernetesPodOperator": True, "workerEgressCidrs": ["192.0.2.0/24"]})
    found, policies = endpoints(stack), policies_of(run) + chart_policies_of(run)
    worker, scheduler = found["worker"][0], found["scheduler"][0]
    api_port = 443 if stack == "prod" else 6443
    assert allowed(policies, worker, found["kubernetes-service"][0], 443)
    assert all(allowed(policies, worker, server, api_port) for server in found["kubernetes-api"])
    assert not allowed(policies, scheduler, found["kubernetes-service"][0], 443)
    # A deferred KubernetesPodOperator's trigger watches its pod from the triggerer.
    assert allowed(policies, found["triggerer"][0], found["kubernetes-service"][0], 443)
    assert not allowed(policies, worker, found["internet-host"][0], 443)
    if stack == "prod":
        # The EKS endpoint's interfaces take addresses anywhere in the private subnets: 443 there is admitted (as
        # for CloudNativePG's pods), nothing else in the VPC.
        assert not allowed(policies, worker, found["vpc-neighbour"][0], 5432)
        assert not allowed(policies, worker, found["kubernetes-api"][0], 22)
        assert not allowed(policies, worker, found["load-balancer-0"][0], 443)
    task_pod = Endpoint("task-pod", AIRFLOW, "10.244.99.9" if stack == "local" else "10.20.99.9", KPO_POD)
    warehouse = Endpoint("warehouse", None, "192.0.2.10")
    assert allowed(policies, task_pod, found["coredns"][0], 53, "UDP")
    assert allowed(policies, task_pod, warehouse, 5439)
    assert not [target for target in ("pgbouncer", "haproxy", "api-server", "kubernetes-service")
                if allowed(policies, task_pod, found[target][0], {"pgbouncer": 5432, "haproxy": 6379,
                                                                  "api-server": 8080}.get(target, 443))]
    # Off (the default): the pods launched get nothing; the workers reach the API at its Service only (their
    # deletion cost), and on AWS not the endpoint's interfaces, i.e. not port 443 across the private subnets.
    assert not allowed(all_policies(stack), task_pod, warehouse, 5439)
    assert allowed(all_policies(stack), worker, found["kubernetes-service"][0], 443)
    if stack == "prod":
        assert not [server.name for server in found["kubernetes-api"] if allowed(all_policies(stack), worker, server, 443)]
        assert not allowed(all_policies(stack), worker, found["vpc-neighbour"][0], 443)


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_without_scale_in_steering_the_workers_have_no_way_to_the_kubernetes_api(stack):
    run = run_program(stack, overrides={"workerScaleInIdleFirst": False})
    found, policies = endpoints(stack), policies_of(run) + chart_policies_of(run)
    api_port = 443 if stack == "prod" else 6443
    assert not allowed(policies, found["worker"][0], found["kubernetes-service"][0], 443)
    assert not [server.name for server in found["kubernetes-api"] if allowed(policies, found["worker"][0], server, api_port)]


def test_git_sync_goes_out_from_the_pods_the_chart_gives_git_sync_containers():
    """The git-sync rule's pods are the rendered chart's pods with a git-sync container (chart 1.19.0), and the
    flow matrix's git-sync roles are the same pods."""
    run = variant_run("prod-git-sync")
    with_git_sync = {pod.labels["component"] for pod in platform_pods(run) if pod.source.startswith("chart airflow:")
                     and any(c["name"].startswith("git-sync") for c in pod.spec.get("containers", []) +
                             pod.spec.get("initContainers", []))}
    assert with_git_sync == set(GIT_SYNC_ROLES) == set(w.AIRFLOW_GIT_SYNC_COMPONENTS)
    selector, = [policy.spec["podSelector"] for policy in policies_of(run)
                 if policy.name == "git-sync-to-repository-egress"]
    assert {e["key"]: set(e["values"]) for e in selector["matchExpressions"]}["component"] == with_git_sync


def test_git_sync_reaches_the_internet_and_no_address_of_the_vpc_even_with_except_ignored():
    """Public addresses at either end of the space are reached on 443 only; nothing inside the VPC, link-local
    (the metadata service) or the shared address space, on the VPC CNI, which may ignore `except`."""
    found, policies = endpoints("prod-git-sync"), all_policies("prod-git-sync")
    dag_processor = found["dag-processor"][0]
    for address in ("1.1.1.1", "140.82.121.4", "223.255.255.254", "100.63.255.1", "100.128.0.1"):
        assert allowed(policies, dag_processor, Endpoint("host", None, address), 443), address
        assert not allowed(policies, dag_processor, Endpoint("host", None, address), 22), address
    for address in ("10.20.7.7", "169.254.169.254", "100.64.0.1", "172.20.0.1", "192.168.1.1", "127.0.0.1"):
        assert not allowed(policies, dag_processor, Endpoint("host", None, address), 443), address


def test_git_sync_goes_only_where_git_sync_egress_cidrs_says_and_never_into_a_vpc_of_public_addresses():
    """gitSyncEgressCidrs replaces the whole internet with the git host's networks; without it, a VPC on public
    addresses (not RFC 1918) is left out as a whole, its unused ranges included."""
    repository = "https://github.com/example/dags.git"
    found = endpoints("prod")
    narrowed = policies_of(run_program("prod", overrides={"gitSyncRepository": repository,
                                                          "gitSyncEgressCidrs": ["140.82.112.0/20"]}))
    dag_processor = found["dag-processor"][0]
    assert allowed(narrowed, dag_processor, Endpoint("github", None, "140.82.121.4"), 443)
    assert not allowed(narrowed, dag_processor, Endpoint("elsewhere", None, "1.1.1.1"), 443)
    public_vpc = policies_of(run_program("prod", overrides={"gitSyncRepository": repository,
                                                            "vpcCidr": "44.20.0.0/16"}))
    assert not allowed(public_vpc, dag_processor, Endpoint("unused-vpc-range", None, "44.20.250.1"), 443)
    assert allowed(public_vpc, dag_processor, Endpoint("next-door", None, "44.21.0.1"), 443)


# --- through Services -------------------------------------------------------------------------------------
# Who dials which Service (the address clients are configured with): role, Service, port, protocol.
SERVICE_FLOWS = [
    *[(role, w.POSTGRES_POOLER, 5432, "TCP") for role in (*AIRFLOW_CLIENTS, "keda-operator")],
    # PgBouncer's [databases], the standbys' primary_conninfo and the join Job's pg_basebackup: the -rw Service.
    *[(role, f"{w.POSTGRES_CLUSTER}-rw", 5432, "TCP") for role in ("pgbouncer", "postgres", "join-job")],
    *[(role, "airflow-redis-haproxy", 6379, "TCP") for role in BROKER_CLIENTS],
    *[(role, "airflow-api-server", 8080, "TCP") for role in EXECUTION_API_CLIENTS],
    *[(role, "airflow-statsd", 9125, "UDP") for role in LOG_WRITERS],
    # redis-ha's servers and HAProxy find each other through the per-server announce Services.
    *[(role, f"airflow-redis-announce-{index}", port, "TCP") for role in ("haproxy", "redis")
      for index in range(3) for port in (6379, 26379)],
]
SERVICE_FORBIDDEN = [
    ("statsd", w.POSTGRES_POOLER, 5432, "TCP"),
    ("statsd", "airflow-redis-haproxy", 6379, "TCP"),
    ("stranger", w.POSTGRES_POOLER, 5432, "TCP"),
    ("worker", f"{w.POSTGRES_CLUSTER}-rw", 5432, "TCP"),
    ("api-server", f"{w.POSTGRES_CLUSTER}-r", 5432, "TCP"),
    ("worker", "airflow-redis-announce-0", 6379, "TCP"),
    ("api-server", "airflow-redis-haproxy", 6379, "TCP"),
    ("triggerer", "airflow-api-server", 8080, "TCP"),
]


@functools.lru_cache(maxsize=None)
def services(variant: str) -> dict[str, tuple[Service, list[Endpoint]]]:
    """Services of the Airflow namespace by name, each with its ClusterIP and the endpoints behind it."""
    run = variant_run(variant)
    found = endpoints(variant)
    pods = [endpoint for role_endpoints in found.values() for endpoint in role_endpoints
            if endpoint.namespace == AIRFLOW]
    ips = iter(ipaddress.ip_network("172.20.16.0/20").hosts())
    named = [(name, selector) for namespace, name, selector in chart_services(run) if namespace == AIRFLOW]
    result = {}
    for name, selector in named + operator_services(run):
        service = Service(name, AIRFLOW, str(next(ips)), tuple(sorted(selector.items())))
        result[name] = (service, [pod for pod in pods if selects({"matchLabels": selector}, pod.labels)])
    return result


def through_services(variant: str, flows: list[tuple], before_translation: bool) -> tuple[list[tuple], list[tuple]]:
    """(flows admitted, flows refused) as (source, Service, backend, port): each source pod to each backend."""
    found, known = endpoints(variant), services(variant)
    policies = all_policies(variant)
    admitted_flows, refused_flows = [], []
    for role, name, port, protocol in flows:
        assert name in known, f"no Service {name} in {sorted(known)}"
        service, backends = known[name]
        assert backends, f"Service {name} selects no pod the platform runs"
        for source in found.get(role, []):
            for backend in backends:
                # Only the pods that serve the port (the major-upgrade Job also carries the primary's labels).
                if role_of(backend) in ("major-upgrade-job",):
                    continue
                ok = allowed_through_service(policies, source, service, backend, port, protocol, before_translation)
                (admitted_flows if ok else refused_flows).append((source.name, name, backend.name, port))
    return admitted_flows, refused_flows


def replicas_of_redis(variant: str) -> int:
    return len(endpoints(variant)["redis"])


@pytest.mark.parametrize("variant", [variant for variant in STACK_VARIANTS if variant != "prod-managed"])
def test_every_flow_through_a_service_is_allowed_as_the_network_plugin_evaluates_it(variant):
    """The VPC CNI (AWS stacks) checks egress at the ClusterIP; kind's kube-network-policies after translation."""
    before_translation = STACK_VARIANTS[variant][0] != "local"
    known = services(variant)
    assert {w.POSTGRES_POOLER, f"{w.POSTGRES_CLUSTER}-rw", "airflow-redis-haproxy", "airflow-api-server"} <= set(known)
    assert all(backends for name, (_, backends) in known.items()
               if name in (w.POSTGRES_POOLER, f"{w.POSTGRES_CLUSTER}-rw", "airflow-redis-haproxy")), known
    flows = [flow for flow in SERVICE_FLOWS
             if not flow[1].startswith("airflow-redis-announce-") or int(flow[1][-1]) < replicas_of_redis(variant)]
    admitted_flows, refused_flows = through_services(variant, flows, before_translation)
    assert refused_flows == []
    # Every flow is evaluated for at least one source and backend.
    assert {service for _, service, _, _ in admitted_flows} == {flow[1] for flow in flows}
    admitted_forbidden, refused_forbidden = through_services(variant, SERVICE_FORBIDDEN, before_translation)
    assert admitted_forbidden == [] and len(refused_forbidden) >= len(SERVICE_FORBIDDEN)


def test_a_peer_that_does_not_match_the_rw_services_selector_loses_the_primary_on_eks():
    """What the VPC CNI did to the program before the -rw selector was named: PgBouncer, the standbys and the
    join Job selected the instances by cnpg.io/podRole, which the -rw Service's selector does not carry."""
    policies = [Policy(p.name, p.namespace, {**p.spec, "egress": [
        {**rule, "to": [peer for peer in rule["to"] if peer.get("podSelector", {}).get("matchLabels")
                        != w.POSTGRES_PRIMARY_SERVICE_SELECTOR]} for rule in p.spec.get("egress") or []]})
        for p in all_policies("prod")]
    service, backends = services("prod")[f"{w.POSTGRES_CLUSTER}-rw"]
    pgbouncer = endpoints("prod")["pgbouncer"][0]
    assert not allowed_through_service(policies, pgbouncer, service, backends[0], 5432)
    assert allowed_through_service(policies, pgbouncer, service, backends[0], 5432, egress_before_translation=False)


@pytest.mark.parametrize("variant", STACK_VARIANTS)
def test_dns_is_reached_at_the_kube_dns_address_as_the_network_plugin_evaluates_it(variant):
    """Pods resolve through the kube-dns Service's ClusterIP (the service CIDR's tenth address, which both EKS and
    kind give it), not at CoreDNS's pods: the VPC CNI judges egress at that address (AWS stacks), kind's
    kube-network-policies at the pod. Every role that needs DNS gets there, over UDP and TCP."""
    import ipaddress as ip
    stack = STACK_VARIANTS[variant][0]
    before_translation = stack != "local"
    run = variant_run(variant)
    # The service CIDR EKS is created with; kind's own on the laptop (the local stack file sets none).
    cidr = run.one("aws:eks/cluster:Cluster").values["kubernetesNetworkConfig"]["serviceIpv4Cidr"] \
        if before_translation else "10.96.0.0/16"
    kube_dns = Service("kube-dns", "kube-system", str(ip.ip_network(cidr)[10]), tuple(sorted(w.KUBE_DNS_PODS.items())))
    found, policies = endpoints(variant), all_policies(variant)
    required, _ = matrix(stack)
    roles = sorted({source for source, destination, port, _ in required if destination == "coredns" and port == 53})
    assert {"scheduler", "worker", "api-server"} <= set(roles)
    refused_lookups = [f"{source.name} -> kube-dns/{protocol}"
                       for role in roles for source in found.get(role, []) for backend in found["coredns"]
                       for protocol in ("UDP", "TCP")
                       if not allowed_through_service(policies, source, kube_dns, backend, 53, protocol,
                                                      before_translation)]
    assert refused_lookups == []


# What the policies admit beyond the required table, by class, and why; anything else they admit fails
# test_the_policies_admit_nothing_beyond_the_required_flows. Each class names a tightening left to do or a reason
# it cannot be narrower, and is bounded by address and port, not only by role.
API_CALLER_ROLES = ("postgres", "pgbouncer", *CNPG_JOBS)
MANAGED_DATABASE_CLIENTS = ("chart-pgbouncer", "db-bootstrap")
# Ports nothing of the platform serves, probed too: a rule opened on a new port shows.
PROBE_PORTS = ((22, "TCP"), (8443, "TCP"), (10250, "TCP"))


def private_cidrs(variant: str) -> list[ipaddress.IPv4Network]:
    stack = STACK_VARIANTS[variant][0]
    if stack == "local":
        return []
    return [ipaddress.ip_network(cidr) for cidr in subnet_plan(vpc_of(stack), FAKE_ZONES[:3])[0]]


def beyond_required_reason(variant: str, source: str, destination: str, address: str, port: int,
                           protocol: str) -> Optional[str]:
    stack = STACK_VARIANTS[variant][0]
    in_private = any(ipaddress.ip_address(address) in cidr for cidr in private_cidrs(variant))
    if source in API_CALLER_ROLES and protocol == "TCP" and (
            (stack != "local" and port == 443 and in_private) or (stack == "local" and port in w.LOCAL_API_SERVER_PORTS)):
        return ("the Kubernetes API's own addresses: EKS places its interfaces anywhere in the private subnets, so "
                "CloudNativePG's pods may reach those subnets (pods included) on 443; a laptop cluster's API server "
                "listens on a node address no setting knows, so there on its ports (kind, k3d, minikube) anywhere")
    if source in SERVICE_ONLY_API_CALLERS and stack == "local" and protocol == "TCP" and port in w.LOCAL_API_SERVER_PORTS:
        return ("the workers' way to a laptop cluster's API server (their deletion cost), which listens on a node "
                "address no setting knows: its ports anywhere; on AWS they dial the Service's address alone")
    if source == "public-subnet-host" and (destination, port, protocol) == ("api-server", 8080, "TCP"):
        return "an internet-facing ALB's nodes take any address of the public subnets, which the policy admits"
    if stack == "prod-managed" and in_private and protocol == "TCP" and (
            (port == 6379 and source in BROKER_CLIENTS) or (port == 5432 and source in MANAGED_DATABASE_CLIENTS)):
        return ("Aurora/RDS and ElastiCache take addresses anywhere in the private subnets: the policy admits the "
                "subnets on the store's port, the store's security group admits the cluster only")
    if source in CNPG_JOBS and (destination, port) in (("postgres", 5432), ("pod-identity-agent", 80), ("s3", 443)):
        return ("CloudNativePG's Jobs carry the instances' cluster label, which the instances' policies (to each "
                "other, to the backups in S3 through Pod Identity) admit")
    if stack == "local" and source == "coredns" and (destination, port) == ("api-server", 8080):
        return "the local ingress controller's namespace (localIngressNamespace, kube-system) is admitted whole"
    return None


@pytest.mark.parametrize("variant", STACK_VARIANTS)
def test_the_policies_admit_nothing_beyond_the_required_flows(variant):
    """Narrowness, not only necessity: for every pair of endpoints and every port the platform uses (and a few it
    does not), a flow the required table does not name must be refused where a side is in the Airflow namespace
    (the only one the program's policies isolate: asserted), unless it falls in a class above, with its reason. A
    rule widened to any pod on a port (DNS to every pod, say), or to the VPC instead of its private subnets, fails
    here though every required and forbidden flow still holds."""
    import itertools
    required, _ = matrix_of(variant)
    named = set(required)
    found, policies = endpoints(variant), all_policies(variant)
    assert {policy.namespace for policy in policies} == {AIRFLOW}
    ports = sorted({(port, protocol) for _, _, port, protocol in required} | set(PROBE_PORTS))
    unexplained = set()
    for source, destination in itertools.product(found, found):
        pairs = [(a, b) for a in found[source] for b in found[destination] if AIRFLOW in (a.namespace, b.namespace)]
        for port, protocol in ports:
            if (source, destination, port, protocol) in named:
                continue
            for a, b in pairs:
                if allowed(policies, a, b, port, protocol) and \
                        beyond_required_reason(variant, source, destination, b.ip, port, protocol) is None:
                    unexplained.add(f"{source} -> {destination}:{port}/{protocol}")
    assert sorted(unexplained) == []
