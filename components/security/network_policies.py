"""The Airflow namespace's network-policy model: every flow the platform needs, as data (a source, a destination,
ports), and the NetworkPolicies that follow from it (a default deny, then one policy per flow end). Security
creates them; tests/test_network_flows.py judges them against the pods the charts render."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from components import workloads as w
from components.handles import ClusterHandle
from components.security.settings import SecuritySettings

# What is never an internet host's address (IANA special-purpose ranges: private, shared, loopback, link-local,
# "this network", multicast and reserved): public_internet() opens git-sync's way out to every address but
# these (and the VPC) unless gitSyncEgressCidrs says where.
NON_PUBLIC_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
                     "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/3")
# Of those, where no git host can be: loopback, link-local (the instance metadata service), "this network",
# multicast and reserved.
NEVER_A_GIT_HOST = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/3")
# How wide an entry of gitSyncEgressCidrs may be where it reaches into private addresses or the VPC: the git host's
# own addresses, not the network around it (which holds the EKS API's and the stores' interfaces).
GIT_SYNC_PRIVATE_PREFIX = 28



Expression = tuple[str, str, tuple[str, ...]]   # (label key, operator, values), as in matchExpressions


@dataclass(frozen=True)
class Peer:
    """One end of a flow: pods (in a namespace, or in any namespace when `namespace` is None) selected by
    labels and label expressions, or a set of CIDRs."""
    pods: Optional[dict[str, str]] = None
    namespace: Optional[str] = w.AIRFLOW_NAMESPACE
    expressions: tuple[Expression, ...] = ()
    cidrs: tuple[str, ...] = ()

    @property
    def in_airflow_namespace(self) -> bool:
        return not self.cidrs and self.namespace == w.AIRFLOW_NAMESPACE

    def pod_selector(self) -> dict:
        selector: dict = {}
        if self.pods:
            selector["matchLabels"] = dict(self.pods)
        if self.expressions:
            selector["matchExpressions"] = [
                {"key": key, "operator": operator, **({"values": list(values)} if values else {})}
                for key, operator, values in self.expressions]
        return selector

    def as_policy_peers(self) -> list[dict]:
        if self.cidrs:
            return [{"ipBlock": {"cidr": cidr}} for cidr in self.cidrs]
        peer: dict = {"podSelector": self.pod_selector()}
        if self.namespace != w.AIRFLOW_NAMESPACE:
            peer["namespaceSelector"] = (
                {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}} if self.namespace else {})
        return [peer]


@dataclass(frozen=True)
class Flow:
    """A connection the platform needs. It becomes an egress rule on the source when the source lives in
    the Airflow namespace, and an ingress rule on the destination when the destination does."""
    name: str
    source: Peer
    destination: Peer
    ports: tuple[tuple[int, str], ...]
    # The Airflow chart (networkPolicies.enabled) renders the destination's ingress rule itself: the API
    # server's from the sources handed to it (Security.api_server_sources), statsd's for the release's pods.
    ingress_by_chart: bool = False
    # The selector of the Service the source dials, where it differs from the destination's selector. The
    # VPC CNI checks egress at the Service's ClusterIP, and admits a ClusterIP only for a podSelector peer
    # that matches the Service's own selector (amazon-network-policy-controller-k8s,
    # pkg/resolvers/endpoints.go getMatchingServiceClusterIPs): the egress rule names it too.
    via_service: Optional[dict[str, str]] = None


def _tcp(*ports: int) -> tuple[tuple[int, str], ...]:
    return tuple((port, "TCP") for port in ports)


@dataclass(frozen=True)
class Workloads:
    """What runs in the Airflow namespace, as far as the flows depend on it (the other areas' settings)."""
    # Airflow: DAGs from git (git-sync containers), tasks that launch pods, workers that patch their deletion cost.
    git_sync: bool = False
    kubernetes_pod_operator: bool = False
    worker_deletion_cost: bool = False
    # The database: more than one instance (the join Job clones them), a restore in progress (the recovery Job).
    replicated_database: bool = False
    restoring_database: bool = False


def public_internet(*excluded: str) -> tuple[str, ...]:
    """The IPv4 internet as CIDRs that leave out the non-public ranges and `excluded`, with no `ipBlock.except`:
    older VPC CNI policy agents ignore `except` (aws/amazon-vpc-cni-k8s#2592; handled since aws-network-policy-agent
    v1.2.4), which would turn "the internet except the VPC" into "everything"."""
    remaining = [ipaddress.IPv4Network("0.0.0.0/0")]
    for hole in (ipaddress.IPv4Network(cidr) for cidr in (*NON_PUBLIC_RANGES, *excluded)):
        remaining = [part for network in remaining
                     for part in (network.address_exclude(hole) if hole.subnet_of(network)
                                  else () if network.subnet_of(hole) else (network,))]
    return tuple(str(network) for network in ipaddress.collapse_addresses(remaining))


# Peers several flows share.
PROMETHEUS = Peer(w.PROMETHEUS_PODS, namespace=w.MONITORING_NAMESPACE)
KEDA = Peer(w.KEDA_OPERATOR_PODS, namespace=w.KEDA_NAMESPACE)
POD_IDENTITY_AGENT = Peer(cidrs=(w.POD_IDENTITY_AGENT_CIDR,))


def required_flows(cluster: ClusterHandle, settings: SecuritySettings, workloads: Workloads) -> list[Flow]:
    """Every flow the platform needs in the Airflow namespace; anything else is denied."""
    # The ALB takes its addresses in the subnets its scheme puts it in.
    load_balancers = cluster.private_subnet_cidrs if settings.ingress_scheme == "internal" else cluster.public_subnet_cidrs
    database_clients = _airflow_components(w.AIRFLOW_DATABASE_CLIENT_COMPONENTS)
    broker_clients = _airflow_components(w.AIRFLOW_BROKER_CLIENT_COMPONENTS)
    log_writers = _airflow_components(w.AIRFLOW_LOG_WRITER_COMPONENTS)
    api_server = Peer(w.AIRFLOW_API_SERVER)
    statsd = Peer(w.AIRFLOW_STATSD)
    flows = [
        Flow("dns", Peer({}), Peer(w.KUBE_DNS_PODS, namespace="kube-system"), ((53, "UDP"), (53, "TCP"))),
        Flow("airflow-to-api-server", _airflow_components(w.AIRFLOW_EXECUTION_API_CLIENT_COMPONENTS), api_server,
             _tcp(w.API_SERVER_PORT), ingress_by_chart=True),
        Flow("airflow-to-statsd", _airflow_components(w.AIRFLOW_METRICS_SENDER_COMPONENTS), statsd,
             ((w.STATSD_INGEST_PORT, "UDP"),), ingress_by_chart=True),
        # Chart 1.19.0 only lets `component: webserver` fetch task logs; Airflow 3 serves them from the API server.
        Flow("api-server-to-worker-logs", api_server, Peer(w.AIRFLOW_WORKER), _tcp(w.WORKER_LOG_PORT)),
        Flow("api-server-to-triggerer-logs", api_server, Peer(w.AIRFLOW_TRIGGERER), _tcp(w.TRIGGERER_LOG_PORT)),
        Flow("prometheus-to-statsd", PROMETHEUS, statsd, _tcp(w.STATSD_METRICS_PORT)),
    ]
    flows += (_managed_database_flows(cluster, database_clients) if settings.managed_database
              else _cloudnative_pg_flows(cluster, database_clients, replicated=workloads.replicated_database,
                                         restoring=workloads.restoring_database))
    flows += _elasticache_flows(cluster, broker_clients) if settings.managed_broker else _redis_ha_flows(broker_clients)
    if workloads.git_sync:
        # The git host: where gitSyncEgressCidrs says, or anywhere on the internet; only the pods with git-sync
        # containers go there (the rule is the whole pod's).
        inside = (*filter(None, [cluster.vpc_cidr]), *cluster.private_subnet_cidrs, *load_balancers)
        flows.append(Flow("git-sync-to-repository", _airflow_components(w.AIRFLOW_GIT_SYNC_COMPONENTS),
                          Peer(cidrs=tuple(map(str, settings.git_sync_egress_cidrs)) or public_internet(*inside)), _tcp(443)))
    if cluster.is_aws:
        flows += [
            Flow("load-balancer-to-api-server", Peer(cidrs=load_balancers), api_server,
                 _tcp(w.API_SERVER_PORT), ingress_by_chart=True),
            # Task logs go to S3, through the gateway endpoint, with credentials from the Pod Identity agent.
            Flow("airflow-to-s3", log_writers, Peer(cidrs=cluster.s3_cidrs), _tcp(443)),
            Flow("airflow-to-pod-identity", log_writers, POD_IDENTITY_AGENT, _tcp(w.POD_IDENTITY_AGENT_PORT)),
        ]
        if settings.secrets_backend == "aws-secrets-manager":
            # Connections and variables, from the Secrets Manager endpoint's fixed addresses, with the
            # credentials of the same Pod Identity role.
            flows.append(Flow("airflow-to-secrets-manager", log_writers, Peer(cidrs=cluster.secrets_manager_cidrs),
                              _tcp(443)))
    else:
        # The laptop cluster's ingress controller (a port-forward needs no rule).
        flows.append(Flow("ingress-to-api-server", Peer({}, namespace=settings.local_ingress_namespace), api_server,
                          _tcp(w.API_SERVER_PORT), ingress_by_chart=True))
    task_runners = [("worker", Peer(w.AIRFLOW_WORKER), settings.worker_egress_cidrs)]
    if workloads.kubernetes_pod_operator:
        # Tasks launch pods (KubernetesPodOperator) through any client the task brings; the pods reach what the
        # tasks would; a deferred one's trigger watches its pod from the triggerer.
        flows += _kubernetes_api_flows(cluster, "worker", Peer(w.AIRFLOW_WORKER))
        task_runners.append(("kubernetes-pod-operator", Peer(w.KUBERNETES_POD_OPERATOR_PODS), settings.worker_egress_cidrs))
        flows += _kubernetes_api_flows(cluster, "triggerer", Peer(w.AIRFLOW_TRIGGERER))
    elif workloads.worker_deletion_cost:
        # The workers patch their pods' deletion cost (workerScaleInIdleFirst) at the `kubernetes` Service's
        # address (KUBERNETES_SERVICE_HOST). The VPC CNI judges egress there, before translation (see
        # _kubernetes_api_flows): task code gets no way to the private subnets' port 443, where every pod of the
        # cluster has its address too. A laptop's plugin judges after translation: the API server's ports too.
        flows += _kubernetes_api_flows(cluster, "worker", Peer(w.AIRFLOW_WORKER), service_only=cluster.is_aws)
    # Deferred tasks' triggers run in the triggerer, DAG callbacks in the DAG processor (Airflow 3).
    task_runners += [("triggerer", Peer(w.AIRFLOW_TRIGGERER), settings.triggerer_egress_cidrs),
                     ("dag-processor", Peer(w.AIRFLOW_DAG_PROCESSOR), settings.dag_processor_egress_cidrs)]
    flows += [Flow(f"{runner}-egress-{index}", source, Peer(cidrs=(str(cidr),)), ())
              for runner, source, cidrs in task_runners for index, cidr in enumerate(cidrs)]
    return flows


def _kubernetes_api_flows(cluster: ClusterHandle, source_name: str, source: Peer,
                          service_only: bool = False) -> list[Flow]:
    """A pod's way to the Kubernetes API: the `kubernetes` Service's ClusterIP and the API server's own addresses
    (whether a network plugin matches ipBlocks before or after that address is translated is left to it; the VPC
    CNI: before, amazon-network-policy-controller-k8s and its agent), on their ports only. `service_only` for a
    client that only ever dials the Service, on a plugin that judges before translation."""
    service = Peer(cidrs=(f"{cluster.kubernetes_service_ip}/32",))
    if service_only:
        return [Flow(f"{source_name}-to-kubernetes-service", source, service, _tcp(w.KUBERNETES_API_PORT))]
    if cluster.is_aws:
        api_servers, api_ports = Peer(cidrs=cluster.private_subnet_cidrs), _tcp(w.KUBERNETES_API_PORT)
    else:
        # A laptop cluster's API server listens on a node address, which no setting knows.
        api_servers, api_ports = Peer(cidrs=("0.0.0.0/0",)), _tcp(*w.LOCAL_API_SERVER_PORTS)
    return [Flow(f"{source_name}-to-kubernetes-service", source, service, _tcp(w.KUBERNETES_API_PORT)),
            Flow(f"{source_name}-to-kubernetes-api", source, api_servers, api_ports)]


def _cloudnative_pg_flows(cluster: ClusterHandle, clients: Peer, *, replicated: bool, restoring: bool) -> list[Flow]:
    """CloudNativePG's instances, its Pooler and its Jobs."""
    instances = Peer(w.POSTGRES_INSTANCES)
    pooler = Peer(w.POSTGRES_POOLER_PODS)
    postgres_jobs = Peer(w.POSTGRES_JOBS_CLUSTER_LABEL, expressions=((w.POSTGRES_JOB_ROLE_LABEL, "Exists", ()),))
    flows = [
        Flow("airflow-to-pgbouncer", clients, pooler, _tcp(w.POSTGRES_PORT)),
        Flow("keda-to-pgbouncer", KEDA, pooler, _tcp(w.POSTGRES_PORT)),
        Flow("pgbouncer-to-postgres", pooler, instances, _tcp(w.POSTGRES_PORT),
             via_service=w.POSTGRES_PRIMARY_SERVICE_SELECTOR),
        # Streaming replication (from the -rw Service), and the primary's liveness isolation check on the
        # others' status port (pod addresses).
        Flow("postgres-replication", instances, instances, _tcp(w.POSTGRES_PORT, w.CNPG_STATUS_PORT),
             via_service=w.POSTGRES_PRIMARY_SERVICE_SELECTOR),
        Flow("cnpg-operator-to-postgres", Peer(w.CNPG_OPERATOR_PODS, namespace=w.CNPG_NAMESPACE), instances,
             _tcp(w.CNPG_STATUS_PORT)),
        Flow("prometheus-to-postgres", PROMETHEUS, instances, _tcp(w.CNPG_METRICS_PORT)),
        Flow("prometheus-to-pgbouncer", PROMETHEUS, pooler, _tcp(w.PGBOUNCER_METRICS_PORT)),
    ]
    if replicated:
        # The join Job clones each further instance from the primary (the -rw Service) with pg_basebackup.
        flows.append(Flow("postgres-jobs-to-postgres", postgres_jobs, instances, _tcp(w.POSTGRES_PORT),
                          via_service=w.POSTGRES_PRIMARY_SERVICE_SELECTOR))
    # CloudNativePG's instance manager, PgBouncer's and the operator's Jobs all start by reading their Cluster
    # from the Kubernetes API.
    for source_name, source in (("postgres", instances), ("pgbouncer", pooler), ("postgres-jobs", postgres_jobs)):
        flows += _kubernetes_api_flows(cluster, source_name, source)
    if cluster.is_aws:
        # WAL and base backups (the Barman Cloud sidecar) and restores (the recovery Job) go to S3, through the
        # gateway endpoint, with credentials from the Pod Identity agent.
        s3 = Peer(cidrs=cluster.s3_cidrs)
        flows += [Flow("postgres-to-s3", instances, s3, _tcp(443)),
                  Flow("postgres-to-pod-identity", instances, POD_IDENTITY_AGENT, _tcp(w.POD_IDENTITY_AGENT_PORT))]
        if restoring:
            flows += [Flow("postgres-jobs-to-s3", postgres_jobs, s3, _tcp(443)),
                      Flow("postgres-jobs-to-pod-identity", postgres_jobs, POD_IDENTITY_AGENT,
                           _tcp(w.POD_IDENTITY_AGENT_PORT))]
    return flows


def _managed_database_flows(cluster: ClusterHandle, clients: Peer) -> list[Flow]:
    """The Airflow chart's PgBouncer in front of Aurora / RDS, which take their addresses in the private subnets
    (their subnet group). The chart's own policy admits the release's pods to PgBouncer; KEDA (another
    namespace) and Prometheus are admitted here."""
    pgbouncer, database = Peer(w.CHART_PGBOUNCER_PODS), Peer(cidrs=cluster.private_subnet_cidrs)
    return [
        Flow("airflow-to-pgbouncer", clients, pgbouncer, _tcp(w.CHART_PGBOUNCER_PORT), ingress_by_chart=True),
        Flow("keda-to-pgbouncer", KEDA, pgbouncer, _tcp(w.CHART_PGBOUNCER_PORT)),
        Flow("prometheus-to-pgbouncer", PROMETHEUS, pgbouncer, _tcp(w.PGBOUNCER_METRICS_PORT)),
        Flow("pgbouncer-to-database", pgbouncer, database, _tcp(w.POSTGRES_PORT)),
        # The Job that creates Airflow's role, as the master user.
        Flow("db-bootstrap-to-database", Peer(w.DB_BOOTSTRAP_PODS), database, _tcp(w.POSTGRES_PORT)),
    ]


def _airflow_components(components: tuple[str, ...]) -> Peer:
    """The Airflow release's pods of these components (the chart's `component` label)."""
    return Peer(w.AIRFLOW_PODS, expressions=(("component", "In", components),))


def _redis_ha_flows(clients: Peer) -> list[Flow]:
    """redis-ha: HAProxy in front of the Redis servers and their Sentinels."""
    haproxy, redis = Peer(w.REDIS_HAPROXY), Peer(w.REDIS_SERVERS)
    return [
        Flow("airflow-to-redis", clients, haproxy, _tcp(w.REDIS_PORT)),
        Flow("haproxy-to-redis", haproxy, redis, _tcp(w.REDIS_PORT, w.SENTINEL_PORT)),
        Flow("redis-replication", redis, redis, _tcp(w.REDIS_PORT, w.SENTINEL_PORT)),
        Flow("prometheus-to-redis", PROMETHEUS, redis, _tcp(w.REDIS_EXPORTER_PORT)),
        Flow("prometheus-to-haproxy", PROMETHEUS, haproxy, _tcp(w.HAPROXY_METRICS_PORT)),
    ]


def _elasticache_flows(cluster: ClusterHandle, clients: Peer) -> list[Flow]:
    """ElastiCache, in the private subnets (its subnet group)."""
    return [Flow("airflow-to-broker", clients, Peer(cidrs=cluster.private_subnet_cidrs), _tcp(w.REDIS_PORT))]


def network_policy_specs(flows: list[Flow]) -> dict[str, dict]:
    """NetworkPolicy specs by name: a default deny, then one policy (with one rule) per flow end that the
    Airflow chart does not already render."""
    ports = lambda flow: [{"port": port, "protocol": protocol} for port, protocol in flow.ports]  # noqa: E731
    specs: dict[str, dict] = {"default-deny-all": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    for flow in flows:
        if flow.source.in_airflow_namespace:
            rule: dict = {"to": flow.destination.as_policy_peers()}
            if flow.via_service:
                rule["to"] += Peer(flow.via_service, namespace=flow.destination.namespace).as_policy_peers()
            if flow.ports:
                rule["ports"] = ports(flow)
            specs[f"{flow.name}-egress"] = {
                "podSelector": flow.source.pod_selector(), "policyTypes": ["Egress"], "egress": [rule]}
        if flow.destination.in_airflow_namespace and not flow.ingress_by_chart:
            rule = {"from": flow.source.as_policy_peers()}
            if flow.ports:
                rule["ports"] = ports(flow)
            specs[f"{flow.name}-ingress"] = {
                "podSelector": flow.destination.pod_selector(), "policyTypes": ["Ingress"], "ingress": [rule]}
    return specs
