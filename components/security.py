"""Security: namespaces with Pod Security Admission, least-privilege RBAC, default-deny NetworkPolicies
with one allow rule per required flow, every generated secret, and TLS (ACM for the ingress host,
cert-manager with an in-cluster CA for in-cluster TLS).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import workloads as w
from components.generated_secrets import RDS_SPECIAL, URL_RESERVED_SPECIAL, generated_password, secrets_checksum
from components.helm import chart_release
from components.namespaces import namespace_with_pod_security
from components.pods import NONROOT_UID, pod_security_context, resources
from components.settings import NON_PUBLIC_RANGES, Settings, principal_name

OPERATORS_GROUP = "airflow-operators"

# Pod Security Admission per namespace, and why where it is not `restricted`.
POD_SECURITY_LEVELS = {
    w.AIRFLOW_NAMESPACE: "restricted",
    w.CERT_MANAGER_NAMESPACE: "restricted",
    # kube-prometheus-stack's node-exporter DaemonSet needs hostNetwork, hostPID and hostPath mounts to
    # read node metrics; nothing short of `privileged` admits it. `restricted` is still warned and audited.
    w.MONITORING_NAMESPACE: "privileged",
}


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
class ClusterNetwork:
    """What the policies must know of the network the cluster runs in."""
    # The `kubernetes` Service's ClusterIP (first address of the service CIDR).
    kubernetes_service_ip: str
    # target=aws: the EKS endpoint's network interfaces (the private subnets), where the ALB lives (public
    # or private subnets, by the ingress scheme) and S3's addresses (the region's prefix list).
    # All empty on a local cluster.
    api_endpoint_cidrs: tuple[str, ...] = ()
    load_balancer_cidrs: tuple[str, ...] = ()
    s3_cidrs: tuple[str, ...] = ()
    # target=aws: where Aurora, RDS and ElastiCache take their addresses, and the Secrets Manager endpoint's.
    private_subnet_cidrs: tuple[str, ...] = ()
    secrets_manager_cidrs: tuple[str, ...] = ()
    # target=aws: the VPC's own range (a VPC need not use private addresses).
    vpc_cidrs: tuple[str, ...] = ()

    @property
    def is_aws(self) -> bool:
        return bool(self.api_endpoint_cidrs)


def public_internet(*excluded: str) -> tuple[str, ...]:
    """The IPv4 internet as CIDRs that leave out the non-public ranges and `excluded`, with no `ipBlock.except`:
    older VPC CNI policy agents ignore `except` (aws/amazon-vpc-cni-k8s#2592; handled since aws-network-policy-agent
    v1.2.4), which would turn "the internet except the VPC" into "everything"."""
    remaining = [ipaddress.ip_network("0.0.0.0/0")]
    for hole in (ipaddress.ip_network(cidr) for cidr in (*NON_PUBLIC_RANGES, *excluded)):
        remaining = [part for network in remaining
                     for part in (network.address_exclude(hole) if hole.subnet_of(network)
                                  else () if network.subnet_of(hole) else (network,))]
    return tuple(str(network) for network in ipaddress.collapse_addresses(remaining))


# Peers several flows share.
PROMETHEUS = Peer(w.PROMETHEUS_PODS, namespace=w.MONITORING_NAMESPACE)
KEDA = Peer(w.KEDA_OPERATOR_PODS, namespace=w.KEDA_NAMESPACE)
POD_IDENTITY_AGENT = Peer(cidrs=(w.POD_IDENTITY_AGENT_CIDR,))


def required_flows(network: ClusterNetwork, worker_egress_cidrs: list[str], local_ingress_namespace: str, *,
                   triggerer_egress_cidrs: list[str] = (), dag_processor_egress_cidrs: list[str] = (),
                   kubernetes_pod_operator: bool = False, worker_deletion_cost: bool = False,
                   git_sync: bool = False, git_sync_cidrs: list[str] = (), replicated_database: bool = False,
                   restoring_database: bool = False, managed_database: bool = False,
                   managed_broker: bool = False, secrets_manager: bool = False) -> list[Flow]:
    """Every flow the platform needs in the Airflow namespace; anything else is denied."""
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
    flows += (_managed_database_flows(network, database_clients) if managed_database
              else _cloudnative_pg_flows(network, database_clients, replicated=replicated_database,
                                         restoring=restoring_database))
    flows += _elasticache_flows(network, broker_clients) if managed_broker else _redis_ha_flows(broker_clients)
    if git_sync:
        # The git host: where gitSyncEgressCidrs says, or anywhere on the internet; only the pods with git-sync
        # containers go there (the rule is the whole pod's).
        inside = (*network.vpc_cidrs, *network.private_subnet_cidrs, *network.load_balancer_cidrs)
        flows.append(Flow("git-sync-to-repository", _airflow_components(w.AIRFLOW_GIT_SYNC_COMPONENTS),
                          Peer(cidrs=tuple(git_sync_cidrs) or public_internet(*inside)), _tcp(443)))
    if network.is_aws:
        flows += [
            Flow("load-balancer-to-api-server", Peer(cidrs=network.load_balancer_cidrs), api_server,
                 _tcp(w.API_SERVER_PORT), ingress_by_chart=True),
            # Task logs go to S3, through the gateway endpoint, with credentials from the Pod Identity agent.
            Flow("airflow-to-s3", log_writers, Peer(cidrs=network.s3_cidrs), _tcp(443)),
            Flow("airflow-to-pod-identity", log_writers, POD_IDENTITY_AGENT, _tcp(w.POD_IDENTITY_AGENT_PORT)),
        ]
        if secrets_manager:
            # Connections and variables, from the Secrets Manager endpoint's fixed addresses, with the
            # credentials of the same Pod Identity role.
            flows.append(Flow("airflow-to-secrets-manager", log_writers, Peer(cidrs=network.secrets_manager_cidrs),
                              _tcp(443)))
    else:
        # The laptop cluster's ingress controller (a port-forward needs no rule).
        flows.append(Flow("ingress-to-api-server", Peer({}, namespace=local_ingress_namespace), api_server,
                          _tcp(w.API_SERVER_PORT), ingress_by_chart=True))
    task_runners = [("worker", Peer(w.AIRFLOW_WORKER), worker_egress_cidrs)]
    if kubernetes_pod_operator:
        # Tasks launch pods (KubernetesPodOperator) through any client the task brings; the pods reach what the
        # tasks would; a deferred one's trigger watches its pod from the triggerer.
        flows += _kubernetes_api_flows(network, "worker", Peer(w.AIRFLOW_WORKER))
        task_runners.append(("kubernetes-pod-operator", Peer(w.KUBERNETES_POD_OPERATOR_PODS), worker_egress_cidrs))
        flows += _kubernetes_api_flows(network, "triggerer", Peer(w.AIRFLOW_TRIGGERER))
    elif worker_deletion_cost:
        # The workers patch their pods' deletion cost (workerScaleInIdleFirst) at the `kubernetes` Service's
        # address (KUBERNETES_SERVICE_HOST). The VPC CNI judges egress there, before translation (see
        # _kubernetes_api_flows): task code gets no way to the private subnets' port 443, where every pod of the
        # cluster has its address too. A laptop's plugin judges after translation: the API server's ports too.
        flows += _kubernetes_api_flows(network, "worker", Peer(w.AIRFLOW_WORKER), service_only=network.is_aws)
    # Deferred tasks' triggers run in the triggerer, DAG callbacks in the DAG processor (Airflow 3).
    task_runners += [("triggerer", Peer(w.AIRFLOW_TRIGGERER), triggerer_egress_cidrs),
                     ("dag-processor", Peer(w.AIRFLOW_DAG_PROCESSOR), dag_processor_egress_cidrs)]
    flows += [Flow(f"{runner}-egress-{index}", source, Peer(cidrs=(cidr,)), ())
              for runner, source, cidrs in task_runners for index, cidr in enumerate(cidrs)]
    return flows


def _kubernetes_api_flows(network: ClusterNetwork, source_name: str, source: Peer,
                          service_only: bool = False) -> list[Flow]:
    """A pod's way to the Kubernetes API: the `kubernetes` Service's ClusterIP and the API server's own addresses
    (whether a network plugin matches ipBlocks before or after that address is translated is left to it; the VPC
    CNI: before, amazon-network-policy-controller-k8s and its agent), on their ports only. `service_only` for a
    client that only ever dials the Service, on a plugin that judges before translation."""
    service = Peer(cidrs=(f"{network.kubernetes_service_ip}/32",))
    if service_only:
        return [Flow(f"{source_name}-to-kubernetes-service", source, service, _tcp(w.KUBERNETES_API_PORT))]
    if network.is_aws:
        api_servers, api_ports = Peer(cidrs=network.api_endpoint_cidrs), _tcp(w.KUBERNETES_API_PORT)
    else:
        # A laptop cluster's API server listens on a node address, which no setting knows.
        api_servers, api_ports = Peer(cidrs=("0.0.0.0/0",)), _tcp(*w.LOCAL_API_SERVER_PORTS)
    return [Flow(f"{source_name}-to-kubernetes-service", source, service, _tcp(w.KUBERNETES_API_PORT)),
            Flow(f"{source_name}-to-kubernetes-api", source, api_servers, api_ports)]


def _cloudnative_pg_flows(network: ClusterNetwork, clients: Peer, *, replicated: bool, restoring: bool) -> list[Flow]:
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
        flows += _kubernetes_api_flows(network, source_name, source)
    if network.is_aws:
        # WAL and base backups (the Barman Cloud sidecar) and restores (the recovery Job) go to S3, through the
        # gateway endpoint, with credentials from the Pod Identity agent.
        s3 = Peer(cidrs=network.s3_cidrs)
        flows += [Flow("postgres-to-s3", instances, s3, _tcp(443)),
                  Flow("postgres-to-pod-identity", instances, POD_IDENTITY_AGENT, _tcp(w.POD_IDENTITY_AGENT_PORT))]
        if restoring:
            flows += [Flow("postgres-jobs-to-s3", postgres_jobs, s3, _tcp(443)),
                      Flow("postgres-jobs-to-pod-identity", postgres_jobs, POD_IDENTITY_AGENT,
                           _tcp(w.POD_IDENTITY_AGENT_PORT))]
    return flows


def _managed_database_flows(network: ClusterNetwork, clients: Peer) -> list[Flow]:
    """The Airflow chart's PgBouncer in front of Aurora / RDS, which take their addresses in the private subnets
    (their subnet group). The chart's own policy admits the release's pods to PgBouncer; KEDA (another
    namespace) and Prometheus are admitted here."""
    pgbouncer, database = Peer(w.CHART_PGBOUNCER_PODS), Peer(cidrs=network.private_subnet_cidrs)
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


def _elasticache_flows(network: ClusterNetwork, clients: Peer) -> list[Flow]:
    """ElastiCache, in the private subnets (its subnet group)."""
    return [Flow("airflow-to-broker", clients, Peer(cidrs=network.private_subnet_cidrs), _tcp(w.REDIS_PORT))]


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


# The AWS Load Balancer Controller adds a readiness gate to the pods behind an ALB target group in namespaces
# labelled so: a rolling update of the API server (or Grafana) waits until the new pod is healthy in the target
# group before the old one goes, so the ALB always has a healthy target. The webhook that does it fails open
# (failurePolicy Ignore in chart 3.5.0): while the controller is down, pods start without the gate.
READINESS_GATE_LABELS = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}


@dataclass
class SecurityArgs:
    settings: Settings
    k8s_provider: k8s.Provider
    # cert-manager's: it needs neither a volume nor a load balancer (Cluster.operators_provider).
    operators_provider: k8s.Provider
    aws_provider: Optional[aws.Provider] = None
    # From Cluster (target=aws): the EKS cluster name for access entries, and the networks for the policies.
    cluster_name: Optional[pulumi.Input[str]] = None
    private_subnet_cidrs: list[str] = field(default_factory=list)
    public_subnet_cidrs: list[str] = field(default_factory=list)
    s3_cidrs: list[str] = field(default_factory=list)
    secrets_manager_cidrs: list[str] = field(default_factory=list)


class Security(pulumi.ComponentResource):
    """Namespaces, RBAC, NetworkPolicies, generated secrets and TLS."""

    airflow_namespace: pulumi.Output[str]
    monitoring_namespace: pulumi.Output[str]
    postgres_password: pulumi.Output[str]
    keda_database_password: pulumi.Output[str]
    worker_database_password: pulumi.Output[str]
    redis_password: pulumi.Output[str]
    admin_password: pulumi.Output[str]
    fernet_key_secret_name: pulumi.Output[str]
    api_secret_key_secret_name: pulumi.Output[str]
    jwt_secret_name: pulumi.Output[str]
    postgres_user_secret_name: pulumi.Output[str]
    # None with a managed engine (its bootstrap Job makes KEDA's role).
    keda_database_user_secret_name: Optional[pulumi.Output[str]]
    worker_database_user_secret_name: Optional[pulumi.Output[str]]
    redis_auth_secret_name: pulumi.Output[str]
    admin_user_secret_name: pulumi.Output[str]
    # Digest of the keys every Airflow pod reads (Fernet key, API secret key, JWT secret).
    airflow_keys_checksum: pulumi.Output[str]
    certificate_arn: Optional[pulumi.Output[str]]
    # Who may reach the Airflow API server, as NetworkPolicy peers: the chart's own policy gets the same list.
    api_server_sources: list[dict]
    cluster_ca_issuer_name: pulumi.Output[str]
    cert_manager: k8s.helm.v3.Release

    def __init__(self, name: str, args: SecurityArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Security", name, None, opts)
        self._settings = args.settings
        self._k8s = pulumi.ResourceOptions(parent=self, provider=args.k8s_provider)

        self._operators = pulumi.ResourceOptions(parent=self, provider=args.operators_provider)
        namespaces = {ns: self._namespace(name, ns, level) for ns, level in POD_SECURITY_LEVELS.items()}
        airflow_ns = namespaces[w.AIRFLOW_NAMESPACE]
        self.airflow_namespace = airflow_ns.metadata.name
        self.monitoring_namespace = namespaces[w.MONITORING_NAMESPACE].metadata.name
        in_airflow = pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[airflow_ns]))

        self._build_rbac(name, args, in_airflow)
        settings = args.settings
        # The ALB takes its addresses in the subnets its scheme puts it in.
        load_balancer_cidrs = args.private_subnet_cidrs if settings.ingress_scheme == "internal" \
            else args.public_subnet_cidrs
        network = ClusterNetwork(kubernetes_service_ip=settings.kubernetes_service_ip,
                                 api_endpoint_cidrs=tuple(args.private_subnet_cidrs),
                                 load_balancer_cidrs=tuple(load_balancer_cidrs), s3_cidrs=tuple(args.s3_cidrs),
                                 private_subnet_cidrs=tuple(args.private_subnet_cidrs),
                                 secrets_manager_cidrs=tuple(args.secrets_manager_cidrs),
                                 vpc_cidrs=(str(settings.vpc_cidr),) if settings.is_aws else ())
        flows = required_flows(network, list(map(str, settings.worker_egress_cidrs)),
                               settings.local_ingress_namespace,
                               triggerer_egress_cidrs=list(map(str, settings.triggerer_egress_cidrs)),
                               dag_processor_egress_cidrs=list(map(str, settings.dag_processor_egress_cidrs)),
                               kubernetes_pod_operator=settings.kubernetes_pod_operator,
                               worker_deletion_cost=settings.worker_scale_in_idle_first,
                               git_sync=bool(settings.git_sync_repository),
                               git_sync_cidrs=list(map(str, settings.git_sync_egress_cidrs)),
                               replicated_database=settings.postgres_instances > 1,
                               restoring_database=bool(settings.postgres_restore_target_time),
                               managed_database=settings.managed_database, managed_broker=settings.managed_broker,
                               secrets_manager=settings.secrets_backend == "aws-secrets-manager")
        self.api_server_sources = [peer for flow in flows if flow.destination.pods == w.AIRFLOW_API_SERVER
                                   for peer in flow.source.as_policy_peers()]
        for policy_name, spec in network_policy_specs(flows).items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata={"name": policy_name, "namespace": w.AIRFLOW_NAMESPACE},
                spec=spec, opts=in_airflow)

        self._build_secrets(name, settings, in_airflow)
        self.certificate_arn = self._build_certificate(name, args) if args.settings.is_aws else None
        self._build_cert_manager(name, namespaces[w.CERT_MANAGER_NAMESPACE])

        self.register_outputs({
            "airflow_namespace": self.airflow_namespace,
            "certificate_arn": self.certificate_arn,
            "fernet_key_secret_name": self.fernet_key_secret_name,
        })

    def _namespace(self, name: str, namespace: str, level: str) -> k8s.core.v1.Namespace:
        behind_alb = self._settings.is_aws and namespace in (w.AIRFLOW_NAMESPACE, w.MONITORING_NAMESPACE)
        # cert-manager's namespace holds no volume and no load balancer: it goes with cert-manager.
        opts = self._operators if namespace == w.CERT_MANAGER_NAMESPACE else self._k8s
        return namespace_with_pod_security(f"{name}-{namespace}", namespace, level, opts,
                                           READINESS_GATE_LABELS if behind_alb else None)

    def _build_rbac(self, name: str, args: SecurityArgs, in_airflow: pulumi.ResourceOptions) -> None:
        role = k8s.rbac.v1.Role(
            f"{name}-operators-read-only",
            metadata={"name": "airflow-operators-read-only", "namespace": w.AIRFLOW_NAMESPACE},
            # Enough to diagnose (state, logs, events), nothing to change, and no Secrets.
            rules=[
                {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "endpoints", "configmaps",
                                                  "events", "persistentvolumeclaims", "serviceaccounts"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                 "verbs": ["get", "list", "watch"]},
            ],
            opts=in_airflow)
        k8s.rbac.v1.RoleBinding(
            f"{name}-operators-read-only",
            metadata={"name": "airflow-operators-read-only", "namespace": w.AIRFLOW_NAMESPACE},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata.name},
            subjects=[{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": OPERATORS_GROUP}],
            opts=in_airflow)
        if args.settings.is_aws:
            for index, principal_arn in enumerate(args.settings.operator_principal_arns):
                # No access policy: the principal gets exactly what the group's Role grants. Named after the
                # principal: by position, removing or reordering one would replace the others' entries, and EKS
                # refuses the new entry while the old one for the same principal exists (409). They were named by
                # position once: that name is an alias (README: the first `up` after that only appends to the list).
                aws.eks.AccessEntry(
                    f"{name}-operator-{principal_name(principal_arn)}", cluster_name=args.cluster_name,
                    principal_arn=principal_arn, type="STANDARD", kubernetes_groups=[OPERATORS_GROUP],
                    opts=pulumi.ResourceOptions(parent=self, provider=args.aws_provider,
                                                aliases=[pulumi.Alias(name=f"{name}-operator-{index}")]))

    def _password(self, name: str, purpose: str, special: bool,
                  override_special: str = URL_RESERVED_SPECIAL, generation: int = 1) -> pulumi.Output[str]:
        return generated_password(f"{name}-{purpose}", self, special, override_special, generation)

    def _secret(self, name: str, secret_name: str, data: dict[str, pulumi.Input[str]],
                opts: pulumi.ResourceOptions, secret_type: str = "Opaque",
                labels: Optional[dict[str, str]] = None) -> pulumi.Output[str]:
        secret = k8s.core.v1.Secret(
            f"{name}-{secret_name}",
            metadata={"name": secret_name, "namespace": w.AIRFLOW_NAMESPACE, **({"labels": labels} if labels else {})},
            type=secret_type,
            string_data={key: pulumi.Output.secret(value) for key, value in data.items()},
            opts=opts)
        return secret.metadata.name

    def _build_secrets(self, name: str, settings: Settings, in_airflow: pulumi.ResourceOptions) -> None:
        # A new generation is a new key (keepers replace the resource); generation 1 has none, as stacks made
        # before the setting existed.
        keepers = {"generation": str(settings.fernet_key_rotation)} if settings.fernet_key_rotation > 1 else None
        fernet_bytes = random.RandomBytes(f"{name}-fernet-key", length=32, keepers=keepers,
                                          opts=pulumi.ResourceOptions(parent=self))
        # Fernet keys are URL-safe base64 of 32 random bytes.
        fernet_key = fernet_bytes.base64.apply(lambda b64: b64.replace("+", "-").replace("/", "_"))
        if settings.previous_fernet_key:
            # During a rotation: Airflow's MultiFernet encrypts with the first key and decrypts with any.
            fernet_key = pulumi.Output.secret(pulumi.Output.concat(fernet_key, ",", settings.previous_fernet_key))
        # RDS and Aurora refuse `@`, `/`, quotes and spaces in a password.
        postgres_special = RDS_SPECIAL if settings.managed_database else URL_RESERVED_SPECIAL
        self.postgres_password = pulumi.Output.secret(
            self._password(name, "postgres-password", special=True, override_special=postgres_special))
        self.keda_database_password = pulumi.Output.secret(
            self._password(name, "keda-database-password", special=True, override_special=postgres_special))
        self.worker_database_password = pulumi.Output.secret(
            self._password(name, "worker-database-password", special=True, override_special=postgres_special))
        # redis-ha writes the password into redis.conf, sentinel.conf and haproxy.cfg: alphanumeric only,
        # its strength comes from its length.
        self.redis_password = pulumi.Output.secret(self._password(
            name, "redis-password", special=False, generation=settings.broker_password_generation))
        self.admin_password = pulumi.Output.secret(self._password(name, "admin-password", special=True))
        api_secret_key = self._password(name, "api-secret-key", special=False)
        jwt_secret = self._password(name, "jwt-secret", special=False)

        self.fernet_key_secret_name = self._secret(name, w.FERNET_KEY_SECRET, {"fernet-key": fernet_key}, in_airflow)
        self.api_secret_key_secret_name = self._secret(
            name, w.API_SECRET_KEY_SECRET, {"api-secret-key": api_secret_key}, in_airflow)
        self.jwt_secret_name = self._secret(name, w.JWT_SECRET, {"jwt-secret": jwt_secret}, in_airflow)
        self.airflow_keys_checksum = secrets_checksum(fernet_key, api_secret_key, jwt_secret)
        self.admin_user_secret_name = self._secret(
            name, w.ADMIN_USER_SECRET, {"username": w.ADMIN_USER, "password": self.admin_password}, in_airflow)
        self.postgres_user_secret_name = self._secret(
            name, w.POSTGRES_APP_USER_SECRET, {"username": w.POSTGRES_USER, "password": self.postgres_password},
            in_airflow, secret_type="kubernetes.io/basic-auth",
            # CloudNativePG reconciles the owner's password from this Secret (ALTER ROLE) when it changes, but
            # it only watches Secrets it owns or that carry this label.
            labels={"cnpg.io/reload": "true"})
        # KEDA's role: CloudNativePG creates it from this Secret (a managed role) and follows its password the same way.
        self.keda_database_user_secret_name = None if settings.managed_database else self._secret(
            name, w.POSTGRES_KEDA_USER_SECRET,
            {"username": w.POSTGRES_KEDA_USER, "password": self.keda_database_password},
            in_airflow, secret_type="kubernetes.io/basic-auth", labels={"cnpg.io/reload": "true"})
        # The workers' role (Celery's results), the same way.
        self.worker_database_user_secret_name = None if settings.managed_database else self._secret(
            name, w.POSTGRES_WORKER_USER_SECRET,
            {"username": w.POSTGRES_WORKER_USER, "password": self.worker_database_password},
            in_airflow, secret_type="kubernetes.io/basic-auth", labels={"cnpg.io/reload": "true"})
        self.redis_auth_secret_name = self._secret(name, w.REDIS_AUTH_SECRET, {"auth": self.redis_password},
                                                   in_airflow)

    def _build_certificate(self, name: str, args: SecurityArgs) -> pulumi.Output[str]:
        settings = args.settings
        if settings.certificate_arn:
            return pulumi.Output.from_input(settings.certificate_arn)
        aws_opts = pulumi.ResourceOptions(parent=self, provider=args.aws_provider)
        # One certificate for every host the shared load balancer serves (Airflow, Grafana).
        extra_hosts = [settings.grafana_host] if settings.grafana_host else []
        certificate = aws.acm.Certificate(
            f"{name}-ingress", domain_name=settings.ingress_host, validation_method="DNS",
            subject_alternative_names=extra_hosts or None,
            opts=pulumi.ResourceOptions.merge(aws_opts, pulumi.ResourceOptions(
                # A replacement must exist before the load balancer lets go of the old one.
                delete_before_replace=False)))
        records = []
        for index, host in enumerate([settings.ingress_host, *extra_hosts]):
            # By domain: the validation options are a set, in no particular order.
            validation = certificate.domain_validation_options.apply(
                lambda options, host=host: next(o for o in options if o.domain_name == host))
            records.append(aws.route53.Record(
                # The ingress host's keeps its former name.
                f"{name}-ingress-validation" + (f"-{index}" if index else ""),
                zone_id=settings.route53_zone_id,
                name=validation.resource_record_name,
                type=validation.resource_record_type,
                records=[validation.resource_record_value],
                ttl=300,
                allow_overwrite=True,
                opts=aws_opts))
        validated = aws.acm.CertificateValidation(
            f"{name}-ingress", certificate_arn=certificate.arn,
            validation_record_fqdns=[record.fqdn for record in records], opts=aws_opts)
        return validated.certificate_arn

    def _build_cert_manager(self, name: str, namespace: k8s.core.v1.Namespace) -> None:
        settings = self._settings
        self.cert_manager = chart_release(
            f"{name}-cert-manager", chart="cert-manager", version=settings.cert_manager_chart_version,
            repo="https://charts.jetstack.io", namespace=w.CERT_MANAGER_NAMESPACE,
            values=cert_manager_values(ha=settings.is_aws, placement=settings.system_placement),
            opts=pulumi.ResourceOptions.merge(self._operators, pulumi.ResourceOptions(depends_on=[namespace])))
        after_release = pulumi.ResourceOptions.merge(self._operators,
                                                     pulumi.ResourceOptions(depends_on=[self.cert_manager]))
        bootstrap = k8s.apiextensions.CustomResource(
            f"{name}-selfsigned-issuer",
            api_version="cert-manager.io/v1", kind="ClusterIssuer",
            metadata={"name": "selfsigned-bootstrap"}, spec={"selfSigned": {}},
            opts=after_release)
        ca_secret = "airflow-platform-ca"
        ca = k8s.apiextensions.CustomResource(
            f"{name}-platform-ca",
            api_version="cert-manager.io/v1", kind="Certificate",
            metadata={"name": "airflow-platform-ca", "namespace": w.CERT_MANAGER_NAMESPACE},
            spec={"isCA": True, "commonName": "airflow-platform-ca", "secretName": ca_secret,
                  "duration": "87600h", "renewBefore": "720h",
                  "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                  "issuerRef": {"name": bootstrap.metadata["name"], "kind": "ClusterIssuer",
                                "group": "cert-manager.io"}},
            opts=after_release)
        issuer = k8s.apiextensions.CustomResource(
            f"{name}-platform-ca-issuer",
            api_version="cert-manager.io/v1", kind="ClusterIssuer",
            metadata={"name": "airflow-platform-ca"}, spec={"ca": {"secretName": ca_secret}},
            opts=pulumi.ResourceOptions.merge(after_release, pulumi.ResourceOptions(depends_on=[ca])))
        self.cluster_ca_issuer_name = issuer.metadata["name"]


def cert_manager_values(ha: bool, placement: Optional[dict] = None) -> dict:
    replicas = 2 if ha else 1
    placement = placement or {}
    # cert-manager's images run as 65532 (distroless nonroot): named, so the pods never run as a low UID.
    user = {"securityContext": pod_security_context(NONROOT_UID, gid=NONROOT_UID)}
    return {
        "crds": {"enabled": True, "keep": True},
        "replicaCount": replicas,
        "podDisruptionBudget": {"enabled": ha},
        "resources": resources("20m", "64Mi", memory_limit="256Mi"),
        **user,
        **placement,
        "webhook": {"replicaCount": replicas, "podDisruptionBudget": {"enabled": ha},
                    "resources": resources("10m", "32Mi", memory_limit="128Mi"), **user, **placement},
        "cainjector": {"replicaCount": replicas, "podDisruptionBudget": {"enabled": ha},
                       "resources": resources("10m", "64Mi", memory_limit="256Mi"), **user, **placement},
        "startupapicheck": {"resources": resources("10m", "32Mi", memory_limit="64Mi"), **user, **placement},
        "prometheus": {"enabled": True},
    }
