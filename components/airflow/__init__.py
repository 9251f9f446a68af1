"""AirflowRelease: the official Apache Airflow chart with CeleryExecutor, KEDA worker autoscaling,
remote logging to S3, an HTTPS ALB in front of the API server, and the URL users open.

The chart renders Airflow; this component only decides its values. The Ingress is the one object
created here rather than by the chart: Pulumi waits for its load balancer address, which the Route53
alias record needs, while Helm would return before the ALB exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import workloads as w
from components.airflow.settings import AirflowSettings
from components.airflow.values import (
    AIRFLOW_CHARTS,
    API_SERVER_SERVICE,
    HEALTH_CHECK_PATH,
    KEDA_CHARTS,
    REMOVED_CHART_DEFAULTS,
    ReleaseInputs,
    airflow_values,
    keda_values,
    worker_deletion_cost_access,
)
from components.generated_secrets import secrets_checksum
from components.handles import (
    AirflowSecrets,
    BrokerHandle,
    CertificateAuthority,
    ClusterHandle,
    DatabaseHandle,
    Ingress,
    StorageHandle,
)
from components.helm import chart_release
from components.ingress import alb_ingress
from components.namespaces import namespace_with_pod_security


@dataclass
class AirflowReleaseArgs:
    settings: AirflowSettings
    cluster: ClusterHandle
    # The Airflow namespace (Security's): the release, its Secrets and claims live there.
    namespace: pulumi.Output[str]
    secrets: AirflowSecrets
    # cert-manager issues KEDA's webhook and metrics-server certificates.
    certificate_authority: CertificateAuthority
    storage: StorageHandle
    database: DatabaseHandle
    broker: BrokerHandle
    # target=aws: the shared ALB's settings and certificate (None locally: a port-forward).
    ingress: Optional[Ingress] = None
    # Set: connections and variables from Secrets Manager, under this prefix.
    secrets_prefix: Optional[str] = None


class AirflowRelease(pulumi.ComponentResource):
    """KEDA, the Airflow chart, and the way in (ALB + DNS, or a port-forward locally)."""

    release: k8s.helm.v3.Release
    ingress_url: pulumi.Output[str]
    admin_username: str

    def __init__(self, name: str, args: AirflowReleaseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("airflow:platform:AirflowRelease", name, None, opts)
        settings = args.settings
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.k8s_provider)

        # KEDA needs neither a volume nor a load balancer: it installs on the operators' provider.
        operators_opts = pulumi.ResourceOptions(parent=self, provider=args.cluster.operators_provider)
        keda_namespace = namespace_with_pod_security(f"{name}-{w.KEDA_NAMESPACE}", w.KEDA_NAMESPACE, "restricted",
                                                     operators_opts)
        keda = chart_release(
            f"{name}-keda", chart="keda", version=settings.keda_chart_version, repo=KEDA_CHARTS,
            namespace=w.KEDA_NAMESPACE, values=keda_values(settings.system_placement),
            opts=pulumi.ResourceOptions.merge(operators_opts, pulumi.ResourceOptions(
                depends_on=[keda_namespace, args.certificate_authority.cert_manager])))

        self.release = k8s.helm.v3.Release(
            f"{name}-airflow",
            name=w.AIRFLOW_RELEASE,
            chart="airflow",
            version=settings.airflow_chart_version,
            repository_opts={"repo": AIRFLOW_CHARTS},
            namespace=args.namespace,
            # Deletions of chart defaults: only a values file carries `null` to Helm (the Python SDK drops
            # None from `values`, pulumi/pulumi#12178).
            value_yaml_files=[pulumi.StringAsset(yaml.safe_dump(REMOVED_CHART_DEFAULTS))],
            values=airflow_values(settings, ReleaseInputs(
                workers=args.cluster.workers, secrets=args.secrets, storage=args.storage, database=args.database,
                broker=args.broker, secrets_prefix=args.secrets_prefix,
                secrets_checksum=secrets_checksum(args.secrets.keys_checksum, args.database.connection_checksum,
                                                  args.broker.connection_checksum))),
            # The migration job waits for the database; a first install pulls images on fresh nodes.
            timeout=1800,
            wait_for_jobs=True,
            cleanup_on_fail=True,
            max_history=10,
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[
                args.secrets.ready, args.storage.ready, args.database.ready, args.broker.ready, keda,
                # The pods' AWS access: their role and its policies, and the endpoint they read secrets through.
                *args.storage.airflow_access, *filter(None, [args.cluster.secrets_manager_endpoint]),
                *args.cluster.workers.capacity])))

        if settings.worker_scale_in_idle_first:
            self._build_worker_deletion_cost_access(name, settings, args.namespace, k8s_opts)
        self.admin_username = w.ADMIN_USER
        if args.ingress is not None:
            self.ingress_url = self._build_ingress(name, args, args.ingress, k8s_opts)
        else:
            # A laptop cluster: `kubectl -n airflow port-forward svc/airflow-api-server 8080:8080`.
            self.ingress_url = pulumi.Output.from_input("http://localhost:8080")
        self.register_outputs({"ingress_url": self.ingress_url, "admin_username": self.admin_username})

    def _build_worker_deletion_cost_access(self, name: str, settings: AirflowSettings, namespace: pulumi.Input[str],
                                           k8s_opts: pulumi.ResourceOptions) -> None:
        """The workers' right to patch pods, granted only once the policy that fences it is in force. The release
        does not wait for it: a worker that starts first is refused, logs it once, and tries again (up to once a
        minute)."""
        objects = worker_deletion_cost_access(settings)
        policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-worker-deletion-cost-policy", **objects["ValidatingAdmissionPolicy"], opts=k8s_opts)
        binding = k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-worker-deletion-cost-policy-binding", **objects["ValidatingAdmissionPolicyBinding"],
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[policy])))
        for kind in ("Role", "RoleBinding"):
            objects[kind]["metadata"]["namespace"] = namespace  # created with the namespace
        role = k8s.rbac.v1.Role(f"{name}-worker-deletion-cost", **objects["Role"],
                                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[binding])))
        binding_object = objects["RoleBinding"]
        k8s.rbac.v1.RoleBinding(f"{name}-worker-deletion-cost", metadata=binding_object["metadata"],
                                role_ref=binding_object["roleRef"], subjects=binding_object["subjects"],
                                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[role])))

    def _build_ingress(self, name: str, args: AirflowReleaseArgs, ingress: Ingress,
                       k8s_opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        controller = ingress.load_balancer_controller
        return alb_ingress(
            f"{name}-api-server", ingress=ingress, namespace=args.namespace,
            host=args.settings.ingress_host, service=API_SERVER_SERVICE, port=w.API_SERVER_PORT,
            health_check_path=HEALTH_CHECK_PATH, group_order=10, record_resource_name=f"{name}-ingress-host",
            # Only the controller gives the Ingress its ALB (and the address Pulumi waits for).
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[
                self.release, *([controller] if controller else [])])))
