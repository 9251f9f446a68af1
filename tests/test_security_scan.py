"""The security scan a review runs: checkov (requirements/scan.in) over the releases as real Helm renders them
from the program's values, together with the NetworkPolicies the program creates (checkov's CKV2_K8S_6 asks
for a policy selecting every pod). CKV_K8S_21 (default namespace) is skipped: charts leave
`metadata.namespace` to Helm. Every finding that remains is listed here with the reason it stays; docs/security.md
("Security posture") carries the same table and `make scan` prints the findings per workload."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from mock_engine import ProgramRun, run_program
from support.rendering import RELEASE, chart_name, render_all

SKIPPED_CHECKS = ("CKV_K8S_21",)
DIGEST = "sha256:" + "ab" * 32
DIGEST_SETTINGS = ("airflowImageDigest", "statsdImageDigest", "gitSyncImageDigest", "redisImageDigest",
                   "haproxyImageDigest", "redisExporterImageDigest")

# What stays in the Airflow release, and why (docs/security.md): check -> (reason, the workloads it
# stays on). A workload not listed fails the test with that check too: an acceptance is never a blanket.
AIRFLOW_WORKLOADS = ("CronJob/airflow-database-cleanup", "Deployment/airflow-api-server",
                     "Deployment/airflow-dag-processor", "Deployment/airflow-flower", "Deployment/airflow-scheduler",
                     "Deployment/airflow-statsd", "Deployment/airflow-triggerer", "Deployment/airflow-worker",
                     "Job/airflow-create-user", "Job/airflow-run-airflow-migrations")
UNSERVED = ("Deployment/airflow-dag-processor", "Deployment/airflow-scheduler", "Deployment/airflow-triggerer")
AIRFLOW_ACCEPTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "CKV_K8S_15": ("imagePullPolicy IfNotPresent, not Always: with digests pinned the node's copy is the same image, "
                   "and Always would make every pod start (a KEDA scale-up) depend on the registry", AIRFLOW_WORKLOADS),
    "CKV_K8S_38": ("checkov reads automountServiceAccountToken from the pod spec only, which the chart renders for "
                   "the scheduler alone; every Airflow ServiceAccount has it false, so no pod gets a token",
                   tuple(workload for workload in AIRFLOW_WORKLOADS if workload != "Deployment/airflow-scheduler")),
    "CKV_K8S_43": ("images run by tag until the *ImageDigest settings are set (they are in the digest scan)",
                   AIRFLOW_WORKLOADS),
    "CKV_K8S_9": ("scheduler, triggerer, DAG processor and workers serve nothing behind a Service; the chart offers "
                  "no readiness probe for them, and their liveness probes restart them",
                  (*UNSERVED, "Deployment/airflow-worker")),
    "CKV_K8S_8": ("local only: the log groomer sidecars (a shell loop deleting old task logs from the logs claim) "
                  "have no probe in the chart; on AWS they are not run", UNSERVED),
    "CKV_K8S_35": ("the worker's AIRFLOW_CONN_AIRFLOW_DB: KEDA reads the connection for its queue query from the "
                   "worker container's environment (connectionFromEnv); the chart has no file-based alternative; "
                   "the nightly database cleanup's URL: chart 1.19's CronJob takes no extra volume",
                   ("Deployment/airflow-worker", "CronJob/airflow-database-cleanup")),
}


def workload(resource: str) -> str:
    """`Kind/name` of a checkov resource (`Kind.namespace.name`, a Pod's followed by its labels)."""
    kind, _, rest = resource.split(".", 2)
    return f"{kind}/{rest.split('.', 1)[0]}"


def accepted_pairs(accepted: dict[str, tuple[str, tuple[str, ...]]]) -> set[tuple[str, str]]:
    return {(check, name) for check, (_, workloads) in accepted.items() for name in workloads}


def unexplained(findings: list[tuple[str, str]], accepted: dict[str, tuple[str, tuple[str, ...]]]) -> list[str]:
    return sorted(f"{check} on {workload(resource)}" for check, resource in findings
                  if (check, workload(resource)) not in accepted_pairs(accepted))


def checkov_binary() -> str:
    binary = os.environ.get("CHECKOV") or str(Path(__file__).resolve().parents[1] / ".venv-scan" / "bin" / "checkov")
    if not Path(binary).exists():
        pytest.fail(f"checkov not found at {binary}: run the tests with `make test` (it installs it)")
    return binary


def program_network_policies(run: ProgramRun) -> list[dict]:
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **registration.values}
            for registration in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")]


def scan(releases: dict[str, list[dict]], network_policies: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """checkov's failed checks, by release: (check id, resource) pairs. One run over every release (one file
    each) and the program's NetworkPolicies, so policies and pods meet in one graph."""
    with tempfile.TemporaryDirectory() as directory:
        for chart, documents in releases.items():
            (Path(directory) / f"{chart}.yaml").write_text(yaml.safe_dump_all(documents))
        (Path(directory) / "program-network-policies.yaml").write_text(yaml.safe_dump_all(network_policies))
        result = subprocess.run(
            [checkov_binary(), "--directory", directory, "--framework", "kubernetes", "--quiet", "--compact",
             "--output", "json", "--skip-check", ",".join(SKIPPED_CHECKS)],
            capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, result.stderr[-2000:]
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    findings: dict[str, list[tuple[str, str]]] = {chart: [] for chart in releases}
    for check in report["results"]["failed_checks"]:
        findings[Path(check["file_path"]).stem].append((check["check_id"], check["resource"]))
    return findings


def scan_run(run: ProgramRun, charts: tuple[str, ...] = ()) -> dict[str, list[tuple[str, str]]]:
    """checkov over the run's releases. checkov links a NetworkPolicy to pods by its matchLabels alone, whatever
    the namespaces (checkov/kubernetes/graph_builder), and reads `podSelector: {}` as selecting every pod
    anywhere: so each release is scanned together with the policies of its own namespace only."""
    rendered = render_all(run)
    namespace_of = {chart_name(r): r.values["namespace"] for r in run.of_type(RELEASE)}
    policies = program_network_policies(run)
    guarded = {policy["metadata"]["namespace"] for policy in policies}
    groups: dict[str, dict[str, list[dict]]] = collections.defaultdict(dict)
    for chart, documents in rendered.items():
        if not charts or chart in charts:
            namespace = namespace_of[chart] if namespace_of[chart] in guarded else ""
            groups[namespace][chart] = documents
    findings: dict[str, list[tuple[str, str]]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:  # checkov runs on one core
        for result in pool.map(lambda item: scan(item[1], [p for p in policies
                                                           if p["metadata"]["namespace"] == item[0]]),
                               groups.items()):
            findings.update(result)
    return findings


def by_workload(findings: list[tuple[str, str]]) -> str:
    grouped: dict[str, list[str]] = collections.defaultdict(list)
    for check, resource in findings:
        grouped[resource].append(check)
    return "\n".join(f"  {resource}: {' '.join(sorted(checks))}" for resource, checks in sorted(grouped.items()))


@pytest.fixture(scope="module")
def scans(stack_runs) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Findings by variant and release: every release of prod and local, and the releases whose images have
    digest settings for a prod stack that sets them all."""
    with_digests = run_program("prod", overrides={key: DIGEST for key in DIGEST_SETTINGS})
    variants = {"prod": (stack_runs["prod"], ()), "local": (stack_runs["local"], ("airflow", "redis-ha")),
                "prod-with-digests": (with_digests, ("airflow", "redis-ha"))}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda variant: scan_run(*variant), variants.values())
        return dict(zip(variants, results, strict=True))


@pytest.mark.parametrize("variant,ceiling", [("prod", 40), ("local", 40), ("prod-with-digests", 22)])
def test_airflow_release_passes_the_scan_but_for_what_is_explained(scans, capsys, variant, ceiling):
    findings = scans[variant]["airflow"]
    with capsys.disabled():
        print(f"\ncheckov, Airflow release, {variant}: {len(findings)} failed checks\n{by_workload(findings)}")
    assert len(findings) <= ceiling
    left = unexplained(findings, AIRFLOW_ACCEPTED)
    assert not left, f"findings without a reason to stay on that workload: {left}\n{by_workload(findings)}"
    # The scan really checks what it passes: images by tag are found until their digests are set.
    assert any(check == "CKV_K8S_43" for check, _ in findings) is (variant != "prod-with-digests")
    if variant != "local":
        assert not any(check == "CKV_K8S_8" for check, _ in findings)


def test_no_airflow_acceptance_outlives_its_finding(scans):
    found = {(check, workload(resource)) for variant in scans for check, resource in scans[variant]["airflow"]}
    stale = accepted_pairs(AIRFLOW_ACCEPTED) - found
    assert not stale, f"accepted but no longer found on any variant (remove them): {sorted(stale)}"


# What stays in the other releases, and why (docs/security.md). Findings not listed fail the test.
OPERATORS_TALK_TO_THE_API = "a controller or operator (or Grafana's config sidecars) that uses the Kubernetes API"
NO_POLICIES_YET = ("no NetworkPolicy isolates this operator namespace yet: the program's policies cover the airflow "
                   "namespace, where the data and credentials are (follow-up)")
TAG_ONLY = ("runs by the tag its chart version pins; digest settings cover the images of the data path "
            "(Airflow, statsd exporter, git-sync, Redis, HAProxy, Redis exporter)")
PULL_POLICY = AIRFLOW_ACCEPTED["CKV_K8S_15"][0]
CERT_MANAGER = ("Deployment/cert-manager", "Deployment/cert-manager-cainjector", "Deployment/cert-manager-webhook",
                "Job/cert-manager-startupapicheck")
KEDA = ("Deployment/keda-admission-webhooks", "Deployment/keda-operator", "Deployment/keda-operator-metrics-apiserver")
KPS = ("Deployment/kube-prometheus-stack-grafana", "Deployment/kube-prometheus-stack-kube-state-metrics",
       "Deployment/kube-prometheus-stack-operator")
NODE_EXPORTER = "DaemonSet/kube-prometheus-stack-prometheus-node-exporter"
GRAFANA = "Deployment/kube-prometheus-stack-grafana"


def pods_of(workloads: tuple[str, ...]) -> tuple[str, ...]:
    """The pods checkov builds from workloads (CKV2_K8S_6, no NetworkPolicy selects them)."""
    return tuple(f"Pod/{name.split('/', 1)[1]}" for name in workloads)


def operator(*workloads: str, pull_policy: bool = True, digest: bool = True) -> dict[str, tuple[str, tuple]]:
    """What every operator release of the platform keeps: its controllers use the Kubernetes API, its namespace
    has no NetworkPolicy yet, and (where the chart sets them so) the pull policy and the tag."""
    return {"CKV_K8S_38": (OPERATORS_TALK_TO_THE_API, tuple(w for w in workloads if not w.startswith("DaemonSet/"))),
            "CKV2_K8S_6": (NO_POLICIES_YET, pods_of(workloads)),
            **({"CKV_K8S_15": (PULL_POLICY, workloads)} if pull_policy else {}),
            **({"CKV_K8S_43": (TAG_ONLY, workloads)} if digest else {})}


RELEASES_ACCEPTED: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "redis-ha": {
        "CKV_K8S_15": (PULL_POLICY, ("Deployment/airflow-redis-haproxy", "StatefulSet/airflow-redis-server")),
        "CKV_K8S_43": (AIRFLOW_ACCEPTED["CKV_K8S_43"][0],
                       ("Deployment/airflow-redis-haproxy", "StatefulSet/airflow-redis-server")),
        "CKV_K8S_35": ("Redis, Sentinel, HAProxy and their probes and scripts read the password from $AUTH; "
                       "redis-ha has no file-based option",
                       ("Deployment/airflow-redis-haproxy", "StatefulSet/airflow-redis-server")),
        "CKV_K8S_40": ("Redis keeps UID 1000: its append-only files on existing volumes belong to it, a new UID "
                       "could not append to them", ("StatefulSet/airflow-redis-server",)),
    },
    "aws-load-balancer-controller": operator("Deployment/aws-load-balancer-controller"),
    "cert-manager": {
        **operator(*CERT_MANAGER),
        "CKV2_K8S_6": (NO_POLICIES_YET, pods_of(CERT_MANAGER)),
        "CKV_K8S_155": ("the cainjector's job is writing CA bundles into webhook configurations",
                        ("ClusterRole/cert-manager-cainjector",)),
        "CKV_K8S_8": ("the cainjector serves nothing a probe could check; the chart offers none",
                      ("Deployment/cert-manager-cainjector",)),
        "CKV_K8S_9": ("the controller and cainjector serve no traffic behind a Service; the chart offers no "
                      "readiness probe for them", ("Deployment/cert-manager", "Deployment/cert-manager-cainjector")),
    },
    "cloudnative-pg": {
        **operator("Deployment/cloudnative-pg"),
        "CKV_K8S_155": ("the operator keeps the CA bundle of its own webhook configurations (rendered "
                        "unconditionally by the chart)", ("ClusterRole/cloudnative-pg",)),
    },
    "plugin-barman-cloud": operator("Deployment/plugin-barman-cloud"),
    "keda": operator(*KEDA, pull_policy=False),
    "karpenter": operator("Deployment/karpenter", pull_policy=False, digest=False),
    "kube-prometheus-stack": {
        **operator(*KPS, NODE_EXPORTER),
        "CKV_K8S_49": ("the Prometheus operator's ClusterRole: verbs '*' on its own resources, hard-coded by the "
                       "chart", ("ClusterRole/kube-prometheus-stack-operator",)),
        "CKV_K8S_17": ("node-exporter shares the host's PID namespace: reading the host's processes is its job",
                       (NODE_EXPORTER,)),
        "CKV_K8S_19": ("node-exporter uses the host network: the node's interfaces are what it measures",
                       (NODE_EXPORTER,)),
        "CKV_K8S_40": ("Grafana keeps UID 472: its database on the existing volume belongs to it", (GRAFANA,)),
        "CKV_K8S_8": ("Grafana's config sidecars have no probe in the chart (Grafana itself has both)", (GRAFANA,)),
        "CKV_K8S_9": ("Grafana's config sidecars have no probe in the chart (Grafana itself has both)", (GRAFANA,)),
    },
}


@pytest.mark.parametrize("chart", sorted(RELEASES_ACCEPTED))
def test_every_other_release_passes_the_scan_but_for_what_is_explained(scans, capsys, chart):
    findings = scans["prod"][chart]
    with capsys.disabled():
        print(f"\ncheckov, {chart} release, prod: {len(findings)} failed checks\n{by_workload(findings)}")
    left = unexplained(findings, RELEASES_ACCEPTED[chart])
    assert not left, f"findings without a reason to stay on that workload: {left}\n{by_workload(findings)}"
    # And no acceptance outlives its finding: each names what the scan still finds.
    stale = accepted_pairs(RELEASES_ACCEPTED[chart]) - {(check, workload(r)) for check, r in findings}
    assert not stale, f"accepted but no longer found (remove them): {sorted(stale)}"
    # The program's fixes hold: CPU limits, read-only images, no webhook-patching RBAC where cert-manager
    # issues the certificates, no token for HAProxy, UIDs outside the host range for the distroless images.
    fixed = {"CKV_K8S_11", "CKV_K8S_22", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_28", "CKV2_K8S_5"}
    assert not fixed & {check for check, _ in findings}
    if chart in ("keda", "kube-prometheus-stack"):
        assert not any(check == "CKV_K8S_155" for check, _ in findings)
    if chart in ("keda", "cert-manager", "aws-load-balancer-controller"):
        assert not any(check == "CKV_K8S_40" for check, _ in findings)
