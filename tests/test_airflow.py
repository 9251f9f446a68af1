"""AirflowRelease: chart values against the official schema, the Release's options and dependencies,
KEDA, TLS ingress and DNS, logs, DAGs, and the outputs."""

from __future__ import annotations

import copy
import json
import secrets
import subprocess

import pytest
from jsonschema import ValidationError

from components import workloads as w
from components.airflow.values import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from components.config import load_settings
from components.workloads import CLEANUP_CONNECTION_KEY
from mock_engine import REPO, STACKS, is_secret, load_stack_config, run_program, unwrap
from support.rendering import platform_pods, render_all, secret_files
from support.schemas import chart_defaults, validate_chart_values_strictly

RELEASE = "kubernetes:helm.sh/v3:Release"
AIRFLOW_SCHEMA = "airflow-chart/values.schema.json"
COMPONENTS = ("scheduler", "apiServer", "triggerer", "dagProcessor")


def airflow_release(run):
    return run.one(RELEASE, "airflow-airflow")


def chart_values(run) -> dict:
    return airflow_release(run).values["values"]


@pytest.mark.parametrize("stack", STACKS)
def test_values_validate_against_the_chart_schema(stack_runs, stack):
    validate_chart_values_strictly(chart_values(stack_runs[stack]), AIRFLOW_SCHEMA)


@pytest.mark.parametrize("path", [("schedular",), ("workers", "kedaa"), ("apiServer", "replica")])
def test_a_misspelled_key_fails_the_schema(prod, path):
    values = copy.deepcopy(chart_values(prod))
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 2
    with pytest.raises(ValidationError):
        validate_chart_values_strictly(values, AIRFLOW_SCHEMA)


def test_git_sync_values_validate_and_replace_the_dags_volume():
    run = run_program("prod", overrides={"gitSyncRepository": "https://github.com/example/dags.git",
                                         "gitSyncCredentialsSecret": "dags-repo-credentials",
                                         "gitSyncSubPath": "dags"})
    values = chart_values(run)
    validate_chart_values_strictly(values, AIRFLOW_SCHEMA)
    git_sync = values["dags"]["gitSync"]
    assert git_sync["enabled"] is True and git_sync["repo"] == "https://github.com/example/dags.git"
    assert git_sync["credentialsSecret"] == "dags-repo-credentials"
    assert "persistence" not in values["dags"]


def test_release_options_and_dependencies(prod):
    release = airflow_release(prod)
    values = release.values
    assert values["name"] == "airflow" and values["chart"] == "airflow" and values["version"] == "1.19.0"
    assert values["timeout"] >= 1200
    assert values["waitForJobs"] is True and values["cleanupOnFail"] is True and values["maxHistory"] >= 1
    # A dependency on a component is a dependency on every resource inside it.
    for component in ("Database", "Broker", "Storage", "Security"):
        inside = [r for r in prod.registrations if r.custom and any(
            a.type == f"airflow:platform:{component}" for a in prod.ancestors(r))]
        assert inside and all(release.depends_on(r) for r in inside), component
    # Of the Cluster, only what the workers need to be scheduled: Karpenter's EC2NodeClass and NodePool.
    worker_capacity = {"kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "kubernetes:karpenter.sh/v1:NodePool"}
    for component in ("Cluster", "AirflowRelease"):
        assert not any(release.depends_on(r) for r in prod.registrations
                       if r.custom and any(a.type == f"airflow:platform:{component}" for a in prod.ancestors(r))
                       and r.type != "kubernetes:helm.sh/v3:Release" and r.type not in worker_capacity)
    assert all(release.depends_on(prod.one(kind)) for kind in worker_capacity)
    assert release.depends_on(prod.one(RELEASE, "airflow-keda")), "the ScaledObject CRD comes with KEDA"
    for association in prod.where(lambda r: r.type == "aws:eks/podIdentityAssociation:PodIdentityAssociation"
                                  and r.values["serviceAccount"] in w.AIRFLOW_LOG_WRITERS):
        assert release.depends_on(association)


def test_external_database_broker_and_keys_by_secret_name_only(prod):
    values = chart_values(prod)
    assert values["executor"] == "CeleryExecutor"
    assert values["data"] == {"metadataSecretName": "airflow-metadata-connection",
                              "brokerUrlSecretName": "airflow-broker-url"}
    assert values["postgresql"]["enabled"] is False and values["redis"]["enabled"] is False
    assert values["fernetKeySecretName"] == w.FERNET_KEY_SECRET
    assert values["apiSecretKeySecretName"] == w.API_SECRET_KEY_SECRET
    assert values["jwtSecretName"] == w.JWT_SECRET
    for job in ("migrateDatabaseJob", "createUserJob"):
        assert values[job]["useHelmHooks"] is False and values[job]["applyCustomEnv"] is False
    # The admin's credentials: a Secret volume of the create-user Job only, read by its command.
    assert values["createUserJob"]["extraVolumes"][1:] == [
        {"name": "admin-user", "secret": {"secretName": w.ADMIN_USER_SECRET, "defaultMode": 0o440}}]
    assert all("admin-user" not in json.dumps(values[c].get("extraVolumes", [])) for c in values
               if c != "createUserJob" and isinstance(values[c], dict))
    # The platform's Secrets reach the components that read them, and no other pod the chart renders.
    assert [v["name"] for v in values["volumes"]] == ["tmp"]
    for component in ("scheduler", "workers", "apiServer", "triggerer", "dagProcessor", "flower",
                      "migrateDatabaseJob", "createUserJob"):
        assert values[component]["extraVolumes"][0]["name"] == "platform-secrets", component
        assert values[component]["extraVolumeMounts"][0] == {
            "name": "platform-secrets", "mountPath": "/opt/airflow/secrets", "readOnly": True}
    command = values["createUserJob"]["args"][-1]
    assert '"$(cat /opt/airflow/admin-user/password)"' in command
    assert "--password" not in command, "a process's arguments are readable in /proc: the password goes to stdin"
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert key not in values


def test_no_secret_value_reaches_the_release_values(prod):
    release = airflow_release(prod)
    generated = {r.state["result"] for r in prod.of_type("random:index/randomPassword:RandomPassword")}
    text = json.dumps(unwrap(release.inputs))
    assert generated and not any(value in text for value in generated)


def test_prod_is_highly_available(prod):
    values = chart_values(prod)
    for component in COMPONENTS:
        assert values[component]["replicas"] == 2, component
        assert values[component]["podDisruptionBudget"]["enabled"] is True, component
        [spread] = values[component]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert values["workers"]["podDisruptionBudget"]["enabled"] is True


def test_every_container_has_resources_and_a_restricted_security_context(prod, local):
    values = chart_values(prod)
    for component in (*COMPONENTS, "workers", "statsd", "flower", "migrateDatabaseJob", "createUserJob"):
        resources = values[component]["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], component
        assert resources["limits"]["memory"], component
    local_values = chart_values(local)
    for component in ("scheduler", "workers", "triggerer", "dagProcessor"):
        # With remote logging each task log is uploaded and deleted locally: no groomer to run.
        assert values[component]["logGroomerSidecar"] == {"enabled": False}, component
        assert local_values[component]["logGroomerSidecar"]["resources"]["limits"]["memory"], component
    assert values["securityContexts"]["pod"] == POD_SECURITY_CONTEXT
    assert POD_SECURITY_CONTEXT["runAsUser"] == 50000 and POD_SECURITY_CONTEXT["runAsNonRoot"] is True
    assert CONTAINER_SECURITY_CONTEXT["capabilities"] == {"drop": ["ALL"]}
    assert CONTAINER_SECURITY_CONTEXT["allowPrivilegeEscalation"] is False
    assert values["securityContexts"]["containers"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert values["statsd"]["securityContexts"]["container"]["capabilities"] == {"drop": ["ALL"]}
    for component in ("scheduler", "apiServer"):
        assert values[component]["livenessProbe"] and values[component]["startupProbe"]
    assert values["apiServer"]["readinessProbe"]


def test_keda_scales_workers_without_killing_running_tasks(prod):
    values = chart_values(prod)
    keda = values["workers"]["keda"]
    assert keda["enabled"] is True
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (2, 20)
    assert keda["cooldownPeriod"] > values["workers"]["terminationGracePeriodSeconds"] == 900
    assert values["config"]["celery"]["worker_concurrency"] == 16
    keda_release = prod.one(RELEASE, "airflow-keda")
    assert keda_release.values["version"] == "2.20.2" and keda_release.values["namespace"] == w.KEDA_NAMESPACE


def test_remote_logging_to_the_logs_bucket_without_keys(prod):
    values = chart_values(prod)
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"] == "s3://airflow-prod-logs-mock/logs"
    [connection] = [e for e in values["env"] if e["name"] == "AIRFLOW_CONN_AWS_DEFAULT"]
    assert json.loads(connection["value"]) == {"conn_type": "aws", "extra": {"region_name": "eu-west-1"}}
    assert values["workers"]["persistence"]["enabled"] is False
    assert values["triggerer"]["persistence"]["enabled"] is False
    assert values["dags"]["persistence"] == {"enabled": True, "existingClaim": w.DAGS_PVC}


def test_local_keeps_logs_on_the_shared_claim(local):
    values = chart_values(local)
    assert values["config"]["logging"]["remote_logging"] == "False"
    assert values["logs"]["persistence"] == {"enabled": True, "existingClaim": w.LOGS_PVC}
    assert "AIRFLOW_CONN_AWS_DEFAULT" not in {e["name"] for e in values["env"]}


def test_chart_network_policy_for_the_api_server_admits_what_security_admits(prod, local):
    # The chart renders its own API-server policy from these sources (the flow matrix evaluates it too).
    for run in (prod, local):
        values = chart_values(run)
        assert values["networkPolicies"]["enabled"] is True
        sources = values["apiServer"]["networkPolicy"]["ingress"]["from"]
        assert sources, "an empty list would block the ALB and the execution API"
        clients = {"podSelector": {"matchLabels": w.AIRFLOW_PODS, "matchExpressions": [
            {"key": "component", "operator": "In", "values": ["worker"]}]}}
        assert sources[0] == clients, "the execution API's clients, named: the workers (nothing else calls it)"
        rendered = next(d for d in render_all(run)["airflow"]
                        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "airflow-api-server-policy")
        assert rendered["spec"]["ingress"][0]["from"] == sources
    lb_sources = [p["ipBlock"]["cidr"] for p in chart_values(prod)["apiServer"]["networkPolicy"]["ingress"]["from"]
                  if "ipBlock" in p]
    assert lb_sources == ["10.20.192.0/22", "10.20.196.0/22", "10.20.200.0/22"], "one per public subnet"


def test_https_ingress_through_the_alb_with_the_acm_certificate(prod):
    ingress = prod.one("kubernetes:networking.k8s.io/v1:Ingress", "airflow-api-server")
    annotations = ingress.values["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"] == unwrap(prod.outputs["certificate_arn"])
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTP": 80}, {"HTTPS": 443}]
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/api/v2/monitor/health"
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internet-facing"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    spec = ingress.values["spec"]
    assert spec["ingressClassName"] == "alb"
    [rule] = spec["rules"]
    assert rule["host"] == "airflow.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "airflow-api-server", "port": {"number": 8080}}
    assert ingress.depends_on(airflow_release(prod))
    assert ingress.depends_on(prod.one(RELEASE, "cluster-lb-controller")), "only the controller gives it an ALB"


def test_allow_list_and_internal_scheme_reach_the_load_balancer():
    run = run_program("prod", overrides={"ingressScheme": "internal", "ingressAllowedCidrs": ["192.0.2.0/24"]})
    annotations = run.one("kubernetes:networking.k8s.io/v1:Ingress", "airflow-api-server").values["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/scheme"] == "internal"
    assert annotations["alb.ingress.kubernetes.io/inbound-cidrs"] == "192.0.2.0/24"


def test_dns_alias_for_the_host(prod):
    record = prod.one("aws:route53/record:Record", "airflow-ingress-host").values
    assert record["name"] == "airflow.example.com" and record["type"] == "A"
    assert record["zoneId"] == "Z0123456789EXAMPLE"
    [alias] = record["aliases"]
    assert alias["name"].endswith(".elb.amazonaws.com") and alias["zoneId"] == "Z32O12XQLNTSW2"


def test_flower_runs_without_a_public_ingress(prod):
    values = chart_values(prod)
    assert values["flower"]["enabled"] is True
    assert values["ingress"]["flower"]["enabled"] is False
    backends = [r.values["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
                for r in prod.of_type("kubernetes:networking.k8s.io/v1:Ingress")]
    assert sorted(backends) == ["airflow-api-server", "kube-prometheus-stack-grafana"], "no Flower ingress"


def test_outputs(prod, staging, local):
    assert unwrap(prod.outputs["ingress_url"]) == "https://airflow.example.com"
    assert unwrap(staging.outputs["ingress_url"]) == "https://airflow-staging.example.com"
    assert unwrap(local.outputs["ingress_url"]) == "http://localhost:8080"
    for run in (prod, local):
        assert unwrap(run.outputs["admin_username"]) == w.ADMIN_USER
        assert is_secret(run.outputs["admin_password"])
    assert not local.of_type("kubernetes:networking.k8s.io/v1:Ingress")


AIRFLOW_WORKLOADS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server", "flower",
                     "run-airflow-migrations", "create-user-job")


# The credentials Airflow reads from files, and the Secret key each file must come from.
CREDENTIAL_FILES = {
    "AIRFLOW__CORE__FERNET_KEY": (w.FERNET_KEY_SECRET, "fernet-key"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("airflow-metadata-connection", "connection"),
    # Otherwise Airflow derives an async URL from the sync one, `sslmode` included, which asyncpg refuses.
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": ("airflow-metadata-connection", "async-connection"),
    "AIRFLOW__API__SECRET_KEY": (w.API_SECRET_KEY_SECRET, "api-secret-key"),
    "AIRFLOW__API_AUTH__JWT_SECRET": (w.JWT_SECRET, "jwt-secret"),
    "AIRFLOW__CELERY__BROKER_URL": ("airflow-broker-url", "connection"),
}
# A Celery worker of Airflow 3.1 reads the broker (its tasks), the database as its own role (Celery's results,
# the provider's default backend: the worker's metadata URL) and the key its log server checks requests with
# (airflow/utils/serve_logs/log_server.py: get_signing_key("api", "secret_key")); its tasks get connections and
# variables through the API server with the token in their workload. tests/e2e/test_dags_e2e.py runs the workers with
# this volume.
WORKER_CREDENTIALS = {
    **{option: source for option, source in CREDENTIAL_FILES.items()
       if option not in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")},
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ("airflow-metadata-connection", "workerConnection"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": ("airflow-metadata-connection", "workerAsyncConnection"),
}


@pytest.mark.parametrize("stack", ["local", "prod", "prod-managed"])
def test_every_airflow_container_reads_the_credentials_from_files_of_their_secrets(stack_runs, stack):
    """Rendered by the chart: each credential through its `_CMD` option from a file of the right Secret key,
    in every Airflow container (init containers and Jobs too), and none of them as an environment variable."""
    pods = [p for p in platform_pods(stack_runs[stack]) if p.labels.get("component") in AIRFLOW_WORKLOADS]
    assert {p.labels["component"] for p in pods} == set(AIRFLOW_WORKLOADS)
    checked = 0
    for pod in pods:
        for container in pod.containers:
            env = {e["name"]: e for e in container.get("env") or []}
            assert not set(CREDENTIAL_FILES) & set(env), (pod.source, container["name"])
            readable = WORKER_CREDENTIALS if pod.labels["component"] == "worker" else CREDENTIAL_FILES
            if container["name"].endswith("-log-groomer"):
                continue  # local only: a shell script that deletes old log files, no Airflow in it
            files = secret_files(pod.spec, container)
            for option in CREDENTIAL_FILES:
                command = env[f"{option}_CMD"]["value"].split()
                assert command[0] == "cat", (pod.source, container["name"], option)
                assert files.get(command[1]) == readable.get(option), (pod.source, container["name"], option)
            checked += 1
    assert checked >= 13


def test_rotating_any_secret_the_airflow_pods_read_rolls_them():
    seed = secrets.randbits(32)
    runs = [run_program("prod", password_seed=s) for s in (seed, seed, seed + 1)]
    digests = [chart_values(r)["scheduler"]["podAnnotations"]["checksum/platform-secrets"] for r in runs]
    assert digests[0] == digests[1], "an `up` without a rotation rolls nothing"
    assert digests[0] != digests[2]
    assert not is_secret(airflow_release(runs[0]).inputs["values"]["scheduler"]["podAnnotations"]
                         ["checksum/platform-secrets"]), "a digest, not a secret: it must not hide the values' diff"
    # On every long-running Airflow pod template the chart renders, and on no Job: a Job's template is
    # immutable, and an upgrade that changed it within the Jobs' TTL would fail.
    workloads = [d for d in render_all(runs[0])["airflow"] if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    annotated = {d["spec"]["template"]["metadata"]["labels"]["component"]: (d["kind"], (
        d["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/platform-secrets"))
        for d in workloads}
    assert annotated == {
        **{component: ("Deployment", digests[0]) for component in
           ("scheduler", "worker", "api-server", "triggerer", "dag-processor", "flower")},
        "statsd": ("Deployment", None), "run-airflow-migrations": ("Job", None), "create-user-job": ("Job", None)}


def test_rotating_the_redis_password_rolls_the_airflow_pods_that_hold_the_broker_url():
    seed = secrets.randbits(32)
    first, rotated = (run_program("prod", password_seed=s) for s in (seed, seed + 1))
    broker_urls = [next(s for s in r.of_type("kubernetes:core/v1:Secret")
                        if s.values["metadata"]["name"] == "airflow-broker-url").values["stringData"]["connection"]
                   for r in (first, rotated)]
    assert broker_urls[0] != broker_urls[1]
    assert chart_values(first)["workers"]["podAnnotations"] != chart_values(rotated)["workers"]["podAnnotations"]


@pytest.fixture(scope="module")
def local_with_git_sync():
    return run_program("local", overrides={"gitSyncRepository": "https://github.com/example/dags.git"})


@pytest.mark.parametrize("stack", ["local", "prod", "local-with-git-sync"])
def test_every_airflow_container_is_read_only_limited_and_without_an_api_token(stack_runs, local_with_git_sync,
                                                                               stack):
    """On the rendered chart: a read-only root filesystem, CPU and memory limits, and no Kubernetes API token
    (the pod's ServiceAccount does not mount one and the pod does not ask for it) but the workers' (their pods'
    deletion cost, through the program's fenced Role: tests/test_worker_scale_in.py); no RBAC of the chart that
    grants anything (chart 1.19 renders the database cleanup an empty Role, `rules: []`, and binds it)."""
    run = local_with_git_sync if stack == "local-with-git-sync" else stack_runs[stack]
    documents = render_all(run)["airflow"]
    accounts = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceAccount"}
    assert not [d["metadata"]["name"] for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Role"}
    assert all(not role.get("rules") for role in roles.values()), sorted(roles)
    assert all(d["roleRef"]["name"] in roles for d in documents if d["kind"] == "RoleBinding")
    pods = [p for p in platform_pods(run) if p.source.startswith("chart airflow:")]
    assert {p.labels.get("component") for p in pods} >= {*AIRFLOW_WORKLOADS, "statsd"}
    git_syncs = 0
    for pod in pods:
        account = accounts[pod.spec["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is (pod.labels["component"] == "worker"), pod.source
        assert pod.spec.get("automountServiceAccountToken") in (None, False), pod.source
        for container in pod.containers:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, (pod.source, container["name"])
            if container["name"] == "git-sync" or container["name"] == "git-sync-init":
                # git-sync adds a user it does not know to /etc/passwd, which a read-only image refuses:
                # it must run as the user its image has (65533).
                assert container["securityContext"]["runAsUser"] == 65533, pod.source
                git_syncs += 1
            limits = container["resources"]["limits"]
            assert limits["cpu"] and limits["memory"], (pod.source, container["name"])
        writable = {m["mountPath"] for c in pod.containers for m in c.get("volumeMounts") or []
                    if not m.get("readOnly")}
        # Python, Airflow and the package managers write temporary files (statsd_exporter writes none).
        assert "/tmp" in writable or pod.labels["component"] == "statsd", pod.source
    assert (git_syncs > 0) is (stack == "local-with-git-sync")


def test_kubernetes_pod_operator_gives_the_workers_their_token_and_role_back():
    run = run_program("local", overrides={"kubernetesPodOperator": True})
    documents = render_all(run)["airflow"]
    accounts = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceAccount"}
    assert accounts["airflow-worker"]["automountServiceAccountToken"] is True
    assert accounts["airflow-scheduler"]["automountServiceAccountToken"] is False
    roles = [d for d in documents if d["kind"] == "Role"]
    assert any("pods" in rule["resources"] for role in roles for rule in role["rules"])


def test_the_end_to_end_tier_runs_the_airflow_version_the_platform_deploys():
    from components.config import Settings
    from support.locks import lock_pins
    assert lock_pins(REPO / "requirements" / "e2e.txt")["apache-airflow"] == \
        Settings.model_fields["airflow_version"].default


def test_image_tags_pinned_next_to_digests_are_the_charts_own():
    from components.airflow.values import GIT_SYNC_IMAGE_TAG, STATSD_IMAGE_TAG
    from components.broker.redis_ha import HAPROXY_IMAGE_TAG, REDIS_EXPORTER_IMAGE_TAG, REDIS_IMAGE_TAG
    airflow, redis_ha = chart_defaults("airflow-chart"), chart_defaults("redis-ha")
    assert (STATSD_IMAGE_TAG, GIT_SYNC_IMAGE_TAG) == (airflow["images"]["statsd"]["tag"],
                                                      airflow["images"]["gitSync"]["tag"])
    assert (REDIS_IMAGE_TAG, HAPROXY_IMAGE_TAG, REDIS_EXPORTER_IMAGE_TAG) == (
        redis_ha["image"]["tag"], redis_ha["haproxy"]["image"]["tag"], redis_ha["exporter"]["tag"])


def test_digests_pin_every_image_they_name():
    digest = "sha256:" + "0123456789abcdef" * 4
    keys = ("airflowImageDigest", "statsdImageDigest", "gitSyncImageDigest", "redisImageDigest",
            "haproxyImageDigest", "redisExporterImageDigest")
    run = run_program("local", overrides={**{key: digest for key in keys},
                                          "gitSyncRepository": "https://github.com/example/dags.git"})
    images = {container["image"] for pod in platform_pods(run) if pod.namespace == w.AIRFLOW_NAMESPACE
              and pod.source.startswith(("chart airflow:", "chart redis-ha:")) for container in pod.containers}
    assert images and all(image.endswith(f"@{digest}") for image in images), sorted(images)
    assert "apache/airflow:3.1.8@" + digest in images
    from components.config import SettingsError, load_settings
    with pytest.raises(SettingsError, match="airflow:airflowImageDigest"):
        load_settings({"airflowImageDigest": "sha256:abc"})


def test_the_create_user_job_hands_the_password_over_its_standard_input(local, tmp_path):
    """The rendered Job's command, run by bash with a stand-in `airflow` that asks as FAB's `users create`
    does without --password (getpass twice; no terminal in a pod, so it reads standard input)."""
    [job] = [d for d in render_all(local)["airflow"] if d["kind"] == "Job" and "create-user" in d["metadata"]["name"]]
    [container] = job["spec"]["template"]["spec"]["containers"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "admin-user")
    secret_files = tmp_path / "admin-user"
    secret_files.mkdir()
    password = "p@ss w\"rd$(x)%&"
    (secret_files / "username").write_text("admin")
    (secret_files / "password").write_text(password)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "airflow").write_text(
        "#!/usr/bin/env python3\nimport getpass, json, sys\n"
        "first, second = getpass.getpass('Password:'), getpass.getpass('Repeat for confirmation:')\n"
        "print(json.dumps({'args': sys.argv[1:], 'password': first, 'confirmed': first == second}))\n")
    (bin_dir / "airflow").chmod(0o755)
    command = [*container["args"][:-1], container["args"][-1].replace(mount, str(secret_files))]
    result = subprocess.run(["setsid", *command], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout.strip().splitlines()[-1])
    assert created["password"] == password and created["confirmed"] is True
    assert password not in " ".join(created["args"]) and "admin" in created["args"]


def test_the_release_airflow_cfg_holds_no_option_airflow_3_moved(prod):
    """The chart's default `config:` renders [scheduler] statsd_* and [webserver] enable_proxy_fix, which Airflow 3
    reads from [metrics] and [fab] (`airflow config lint`, run by the e2e tier): the release deletes them."""
    cfg = rendered_cfg(prod)
    assert not [key for key in cfg["scheduler"] if key.startswith("statsd_")]
    assert not cfg.has_section("webserver") and cfg["fab"]["enable_proxy_fix"] == "True"
    assert not {"kubernetes", "kubernetes_executor", "kerberos", "elasticsearch"} & set(cfg.sections())
    assert cfg["metrics"]["statsd_on"] == "True"


def rendered_cfg(run):
    import configparser
    [configmap] = [d for d in render_all(run)["airflow"] if d["kind"] == "ConfigMap" and "airflow.cfg" in d["data"]]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(configmap["data"]["airflow.cfg"])
    return cfg


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_the_scheduler_hands_tasks_to_celery_itself_without_forking_a_pool(stack_runs, stack):
    """The celery provider (3.26, celery_executor.py _send_workloads_to_celery) sends a batch from the scheduler's
    own process only when [celery] sync_parallelism is 1; otherwise it forks a process pool for every batch,
    which costs more than the sends (apache/airflow#39482; the open #70690 also names a deadlock of the fork).
    The chart sets it to the scheduler's CPU limit (2 here), or to the node's CPUs less one without a limit."""
    assert rendered_cfg(stack_runs[stack])["celery"]["sync_parallelism"] == "1"


@pytest.mark.parametrize("stack", STACKS)
def test_the_default_pool_holds_what_the_most_workers_can_run(stack_runs, stack):
    """Running and queued tasks count against default_pool, 128 slots unless set ([core]
    default_pool_task_slot_count acts only when the database is created): the migration Job sets it each release
    (e2e: test_the_migration_job_sets_the_default_pool...)."""
    from support.stacks import stack_settings
    settings = stack_settings(stack)
    slots = settings.worker_concurrency * settings.worker_max_replicas
    cfg = rendered_cfg(stack_runs[stack])
    assert int(cfg["core"]["default_pool_task_slot_count"]) == slots
    job = next(d for d in render_all(stack_runs[stack])["airflow"] if d["kind"] == "Job"
               and d["metadata"]["name"].endswith("run-airflow-migrations"))
    shell, flag, script, _, slots_argument, _ = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (shell, flag) == ("bash", "-c") and script.startswith("airflow db migrate && ")
    assert 'pools set default_pool "$1" ' in script and slots_argument == str(slots)


@pytest.mark.parametrize("stack", STACKS)
def test_the_schedulers_together_queue_what_the_most_workers_can_run(stack_runs, stack):
    """[core] parallelism is per scheduler (Airflow 3.1 scheduler_job_runner.py caps each scheduler's executor
    with it): prod's 2 schedulers at 16 x 20 each would queue 640 tasks for 320 worker slots, and a task waiting
    past its token's life fails when a worker takes it."""
    from support.stacks import stack_settings
    settings = stack_settings(stack)
    cfg = rendered_cfg(stack_runs[stack])
    slots = settings.worker_concurrency * settings.worker_max_replicas
    queued_at_most = int(cfg["core"]["parallelism"]) * settings.scheduler_replicas
    assert slots <= queued_at_most < slots + settings.scheduler_replicas, (slots, queued_at_most)


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_a_queued_tasks_token_outlives_the_longest_wait_for_a_worker(stack_runs, stack):
    """The scheduler mints a task's execution API token when it queues it; a task still queued after
    task_queued_timeout is queued again (with a new token) at the next check, task_queued_timeout_check_interval
    later. Until then the token must stay valid, and the worker still has to start."""
    cfg = rendered_cfg(stack_runs[stack])
    scheduler = cfg["scheduler"]
    # The scheduler that queued it checks; if it stopped, another adopts the task (keeping its queued time) once
    # it is seen dead and at its next orphan check, then checks it.
    waited_at_most = int(scheduler["task_queued_timeout"]) + int(scheduler["scheduler_health_check_threshold"]) + \
        int(scheduler["orphaned_tasks_check_interval"]) + int(scheduler["task_queued_timeout_check_interval"])
    assert int(cfg["execution_api"]["jwt_expiration_time"]) >= waited_at_most + 60
    assert int(cfg["execution_api"]["jwt_expiration_time"]) > 600   # Airflow's default, which races the timeout


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_tasks_record_the_address_the_api_server_fetches_live_logs_from(stack_runs, stack):
    """Workers and the triggerer are Deployments here (no persistence): their pod names resolve nowhere, so the
    host a task records must be the pod's IP (e2e: test_a_running_tasks_log_is_read_live_from_its_worker...)."""
    cfg = rendered_cfg(stack_runs[stack])
    assert cfg["core"]["hostname_callable"] == "airflow.utils.net.get_host_ip_address"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render_all(stack_runs[stack])["airflow"]}
    assert {("Deployment", "airflow-worker"), ("Deployment", "airflow-triggerer")} <= kinds


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_workers_scale_in_one_at_a_time_after_a_quiet_window(stack_runs, stack):
    """KEDA's cooldownPeriod covers only the step to zero; every other step down is the HPA's, whose default
    (Kubernetes: a 300 s window, then up to 100 % of the pods every 15 s) would stop many busy workers at once."""
    from support.schemas import validate_against_crd
    from support.stacks import stack_settings
    documents = render_all(stack_runs[stack])["airflow"]
    scaled = next(d for d in documents if d["kind"] == "ScaledObject")
    validate_against_crd(scaled, "keda.sh", "v1alpha1")   # KEDA 2.20's CRD
    worker = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-worker")
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    settings = stack_settings(stack)
    assert grace == settings.longest_task_seconds + 60
    down = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}] and down["selectPolicy"] == "Min"
    assert down["stabilizationWindowSeconds"] == settings.worker_scale_in_window_seconds > 300
    assert scaled["spec"]["cooldownPeriod"] > grace
    assert "scaleUp" not in scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]


def cleanup_cronjob(run) -> dict:
    [cronjob] = [d for d in render_all(run)["airflow"] if d["kind"] == "CronJob"
                 and d["metadata"]["name"] == f"{w.AIRFLOW_RELEASE}-database-cleanup"]
    return cronjob


@pytest.mark.parametrize("stack", ["local", "prod", "prod-managed"])
def test_the_metadata_database_is_cleaned_nightly_to_the_retention(stack_runs, stack):
    """The chart's CronJob, rendered by Helm: nightly, the retention from the setting, the URL Airflow reads as
    the one credential, from the metadata Secret's key that names no file this pod lacks, and no API token."""
    run = stack_runs[stack]
    config = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack).items() if k.startswith("airflow:")}
    retention = load_settings(config).database_cleanup_retention_days
    assert retention >= 30, "history a user can still look into"
    cronjob = cleanup_cronjob(run)
    assert len(cronjob["spec"]["schedule"].split()) == 5 and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    script = " ".join(container["command"] + container["args"])
    assert f"date -u -d '-{retention} days'" in script and "airflow db clean" in script
    env = {e["name"]: e for e in container["env"]}
    credentials = {name for name in env if name in CREDENTIAL_FILES or name.endswith("_CMD")}
    assert credentials == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"] == {
        "name": "airflow-metadata-connection", "key": CLEANUP_CONNECTION_KEY}
    [metadata] = [s for s in run.of_type("kubernetes:core/v1:Secret")
                  if s.values["metadata"]["name"] == "airflow-metadata-connection"]
    assert "sslrootcert" not in unwrap(metadata.values["stringData"][CLEANUP_CONNECTION_KEY])
    account = next(d for d in render_all(run)["airflow"] if d["kind"] == "ServiceAccount"
                   and d["metadata"]["name"] == pod["serviceAccountName"])
    assert account.get("automountServiceAccountToken") is False


def test_a_retention_of_zero_turns_the_cleanup_off():
    run = run_program("local", overrides={"databaseCleanupRetentionDays": 0})
    assert not [d for d in render_all(run)["airflow"] if d["kind"] == "CronJob" and "database-cleanup" in
                d["metadata"]["name"]]
    with pytest.raises(ValueError, match="databaseCleanupRetentionDays"):
        load_settings({"databaseCleanupRetentionDays": -1})


def test_dags_copied_into_the_dag_processor_reach_every_pod_that_parses_or_runs_them(stack_runs):
    """Prod without git-sync: docs/operations.md's upload path (`kubectl cp` into the DAG processor) writes to the DAGs
    claim at `[core] dags_folder`, which the workers, which run the tasks, mount at the same place (Airflow 3's
    scheduler and triggerer read no DAG file). The EFS access point the claim gets is owned by the uid and group
    the pods run as, so the copy (as that uid) may write there."""
    run = stack_runs["prod"]
    dags_folder = rendered_cfg(run)["core"]["dags_folder"]
    storage_class = run.one("kubernetes:storage.k8s.io/v1:StorageClass", "storage-efs").values["parameters"]
    mounts = {}
    for document in render_all(run)["airflow"]:
        if document["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = document["spec"]["template"]["spec"]
        volume = next((v["name"] for v in spec.get("volumes") or []
                       if (v.get("persistentVolumeClaim") or {}).get("claimName") == w.DAGS_PVC), None)
        if volume is None:
            continue
        main = spec["containers"][0]
        [mount] = [m for m in main["volumeMounts"] if m["name"] == volume]
        mounts[document["metadata"]["name"]] = (mount["mountPath"], bool(mount.get("readOnly")))
        user = main.get("securityContext", {}).get("runAsUser") or spec["securityContext"]["runAsUser"]
        group = spec["securityContext"].get("runAsGroup", 0)
        assert (str(user), str(group)) == (storage_class["uid"], storage_class["gid"]), document["metadata"]["name"]
    assert mounts["airflow-dag-processor"] == (dags_folder, False)
    assert mounts["airflow-worker"][0] == dags_folder
    assert {path for path, _ in mounts.values()} == {dags_folder}
    assert int(storage_class["directoryPerms"], 8) & 0o700 == 0o700, "the owner may write"
