"""Security: namespaces with Pod Security Admission, least-privilege RBAC, default-deny NetworkPolicies
with one allow rule per required flow, every generated secret, and TLS (ACM for the ingress host,
cert-manager with an in-cluster CA for in-cluster TLS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import workloads as w
from components.generated_secrets import RDS_SPECIAL, URL_RESERVED_SPECIAL, generated_password, secrets_checksum
from components.handles import (
    AirflowSecrets,
    BrokerCredentials,
    CertificateAuthority,
    ClusterHandle,
    DatabaseCredentials,
    Ingress,
    Namespaces,
)
from components.helm import chart_release
from components.namespaces import namespace_with_pod_security
from components.platform import principal_name
from components.pods import NONROOT_UID, pod_security_context, resources
from components.security.network_policies import Workloads, network_policy_specs, required_flows
from components.security.settings import SecuritySettings

OPERATORS_GROUP = "airflow-operators"

# Pod Security Admission per namespace, and why where it is not `restricted`.
POD_SECURITY_LEVELS = {
    w.AIRFLOW_NAMESPACE: "restricted",
    w.CERT_MANAGER_NAMESPACE: "restricted",
    # kube-prometheus-stack's node-exporter DaemonSet needs hostNetwork, hostPID and hostPath mounts to
    # read node metrics; nothing short of `privileged` admits it. `restricted` is still warned and audited.
    w.MONITORING_NAMESPACE: "privileged",
}


# The AWS Load Balancer Controller adds a readiness gate to the pods behind an ALB target group in namespaces
# labelled so: a rolling update of the API server (or Grafana) waits until the new pod is healthy in the target
# group before the old one goes, so the ALB always has a healthy target. The webhook that does it fails open
# (failurePolicy Ignore in chart 3.5.0): while the controller is down, pods start without the gate.
READINESS_GATE_LABELS = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}


@dataclass
class SecurityArgs:
    settings: SecuritySettings
    cluster: ClusterHandle
    # What runs in the Airflow namespace besides the defaults (the other areas' settings): the flows follow.
    workloads: Workloads
    # The hosts the shared load balancer serves (Airflow's, and Grafana's when set): the certificate names them.
    ingress_hosts: tuple[str, ...] = ()


class Security(pulumi.ComponentResource):
    """Namespaces, RBAC, NetworkPolicies, generated secrets and TLS."""

    namespaces: Namespaces
    airflow_secrets: AirflowSecrets
    database_credentials: DatabaseCredentials
    broker_credentials: BrokerCredentials
    certificate_authority: CertificateAuthority
    # target=aws: the ALB's settings and certificate (None locally).
    ingress: Optional[Ingress]
    # The admin user's password (a stack output).
    admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: SecurityArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:Security", name, None, opts)
        self._settings = args.settings
        self._k8s = pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider)

        self._operators = pulumi.ResourceOptions(parent=self, provider=args.cluster.operators_provider)
        namespaces = {ns: self._namespace(name, ns, level) for ns, level in POD_SECURITY_LEVELS.items()}
        airflow_ns = namespaces[w.AIRFLOW_NAMESPACE]
        self.namespaces = Namespaces(airflow=airflow_ns.metadata.name,
                                     monitoring=namespaces[w.MONITORING_NAMESPACE].metadata.name)
        in_airflow = pulumi.ResourceOptions.merge(self._k8s, pulumi.ResourceOptions(depends_on=[airflow_ns]))

        self._build_rbac(name, args, in_airflow)
        settings = args.settings
        flows = required_flows(args.cluster, settings, args.workloads)
        api_server_sources = tuple(peer for flow in flows if flow.destination.pods == w.AIRFLOW_API_SERVER
                                   for peer in flow.source.as_policy_peers())
        for policy_name, spec in network_policy_specs(flows).items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata={"name": policy_name, "namespace": w.AIRFLOW_NAMESPACE},
                spec=spec, opts=in_airflow)

        self._build_secrets(name, settings, in_airflow, api_server_sources)
        self.ingress = None
        if settings.is_aws:
            cluster = args.cluster
            assert cluster.aws_provider is not None
            self.ingress = Ingress(
                certificate_arn=self._build_certificate(name, args), scheme=settings.ingress_scheme,
                allowed_cidrs=tuple(map(str, settings.ingress_allowed_cidrs)),
                route53_zone_id=settings.route53_zone_id, region=settings.region, aws_provider=cluster.aws_provider,
                load_balancer_controller=cluster.load_balancer_controller)
        self._build_cert_manager(name, namespaces[w.CERT_MANAGER_NAMESPACE])

        self.register_outputs({
            "airflow_namespace": self.namespaces.airflow,
            "certificate_arn": self.ingress.certificate_arn if self.ingress else None,
            "fernet_key_secret_name": self.airflow_secrets.fernet_key_secret_name,
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
                # position once: that name is an alias (docs/aws.md: the first `up` after that only appends to the list).
                aws.eks.AccessEntry(
                    f"{name}-operator-{principal_name(principal_arn)}", cluster_name=args.cluster.cluster_name,
                    principal_arn=principal_arn, type="STANDARD", kubernetes_groups=[OPERATORS_GROUP],
                    opts=pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider,
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

    def _build_secrets(self, name: str, settings: SecuritySettings, in_airflow: pulumi.ResourceOptions,
                       api_server_sources: tuple[dict, ...]) -> None:
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
        postgres_password: pulumi.Output[str] = pulumi.Output.secret(
            self._password(name, "postgres-password", special=True, override_special=postgres_special))
        keda_password: pulumi.Output[str] = pulumi.Output.secret(
            self._password(name, "keda-database-password", special=True, override_special=postgres_special))
        worker_password: pulumi.Output[str] = pulumi.Output.secret(
            self._password(name, "worker-database-password", special=True, override_special=postgres_special))
        # redis-ha writes the password into redis.conf, sentinel.conf and haproxy.cfg: alphanumeric only,
        # its strength comes from its length.
        redis_password: pulumi.Output[str] = pulumi.Output.secret(self._password(
            name, "redis-password", special=False, generation=settings.broker_password_generation))
        self.admin_password = pulumi.Output.secret(self._password(name, "admin-password", special=True))
        api_secret_key = self._password(name, "api-secret-key", special=False)
        jwt_secret = self._password(name, "jwt-secret", special=False)

        fernet_key_secret = self._secret(name, w.FERNET_KEY_SECRET, {"fernet-key": fernet_key}, in_airflow)
        api_secret_key_secret = self._secret(
            name, w.API_SECRET_KEY_SECRET, {"api-secret-key": api_secret_key}, in_airflow)
        jwt_secret_name = self._secret(name, w.JWT_SECRET, {"jwt-secret": jwt_secret}, in_airflow)
        keys_checksum = secrets_checksum(fernet_key, api_secret_key, jwt_secret)
        admin_user_secret = self._secret(
            name, w.ADMIN_USER_SECRET, {"username": w.ADMIN_USER, "password": self.admin_password}, in_airflow)
        app_user_secret = self._secret(
            name, w.POSTGRES_APP_USER_SECRET, {"username": w.POSTGRES_USER, "password": postgres_password},
            in_airflow, secret_type="kubernetes.io/basic-auth",
            # CloudNativePG reconciles the owner's password from this Secret (ALTER ROLE) when it changes, but
            # it only watches Secrets it owns or that carry this label.
            labels={"cnpg.io/reload": "true"})
        # KEDA's role: CloudNativePG creates it from this Secret (a managed role) and follows its password the same way.
        keda_user_secret = None if settings.managed_database else self._secret(
            name, w.POSTGRES_KEDA_USER_SECRET,
            {"username": w.POSTGRES_KEDA_USER, "password": keda_password},
            in_airflow, secret_type="kubernetes.io/basic-auth", labels={"cnpg.io/reload": "true"})
        # The workers' role (Celery's results), the same way.
        worker_user_secret = None if settings.managed_database else self._secret(
            name, w.POSTGRES_WORKER_USER_SECRET,
            {"username": w.POSTGRES_WORKER_USER, "password": worker_password},
            in_airflow, secret_type="kubernetes.io/basic-auth", labels={"cnpg.io/reload": "true"})
        redis_auth_secret = self._secret(name, w.REDIS_AUTH_SECRET, {"auth": redis_password},
                                                   in_airflow)
        self.airflow_secrets = AirflowSecrets(
            fernet_key_secret_name=fernet_key_secret, api_secret_key_secret_name=api_secret_key_secret,
            jwt_secret_name=jwt_secret_name, admin_user_secret_name=admin_user_secret, keys_checksum=keys_checksum,
            api_server_sources=api_server_sources, ready=self)
        self.database_credentials = DatabaseCredentials(
            app_user_secret_name=app_user_secret, app_password=postgres_password, keda_password=keda_password,
            worker_password=worker_password, keda_user_secret_name=keda_user_secret,
            worker_user_secret_name=worker_user_secret)
        self.broker_credentials = BrokerCredentials(auth_secret_name=redis_auth_secret, password=redis_password,
                                                    generation=settings.broker_password_generation)

    def _build_certificate(self, name: str, args: SecurityArgs) -> pulumi.Output[str]:
        settings = args.settings
        if settings.certificate_arn:
            return pulumi.Output.from_input(settings.certificate_arn)
        aws_opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.aws_provider)
        # One certificate for every host the shared load balancer serves (Airflow, Grafana).
        ingress_host, *extra_hosts = args.ingress_hosts
        certificate = aws.acm.Certificate(
            f"{name}-ingress", domain_name=ingress_host, validation_method="DNS",
            subject_alternative_names=extra_hosts or None,
            opts=pulumi.ResourceOptions.merge(aws_opts, pulumi.ResourceOptions(
                # A replacement must exist before the load balancer lets go of the old one.
                delete_before_replace=False)))
        records = []
        for index, host in enumerate(args.ingress_hosts):
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
        cert_manager = chart_release(
            f"{name}-cert-manager", chart="cert-manager", version=settings.cert_manager_chart_version,
            repo="https://charts.jetstack.io", namespace=w.CERT_MANAGER_NAMESPACE,
            values=cert_manager_values(ha=settings.is_aws, placement=settings.system_placement),
            opts=pulumi.ResourceOptions.merge(self._operators, pulumi.ResourceOptions(depends_on=[namespace])))
        after_release = pulumi.ResourceOptions.merge(self._operators,
                                                     pulumi.ResourceOptions(depends_on=[cert_manager]))
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
        self.certificate_authority = CertificateAuthority(cert_manager=cert_manager,
                                                          issuer_name=issuer.metadata["name"])


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
