"""Scale-in stops idle workers first (workerScaleInIdleFirst): each worker writes its running tasks into its pod's
`controller.kubernetes.io/pod-deletion-cost`, which the ReplicaSet ranks by when it picks the pods to delete
(kubernetes pkg/controller/controller_utils.go, ActivePodsWithRanks). The token and the Role that make this
possible are fenced by a ValidatingAdmissionPolicy, evaluated here with CEL as the API server would (matchConditions,
variables, validations; an error counts as a refusal, failurePolicy Fail). The reporter itself runs in Celery in
the end-to-end tier (tests/e2e/test_dags_e2e.py); here its HTTP call meets a stand-in of the API server's PATCH."""

from __future__ import annotations

import copy
import functools
import importlib.util

import celpy
import pytest

from components import workloads as w
from components.airflow.values import TOKEN_POD_NAME, WORKER_DELETION_COST_CODE
from mock_engine import REPO, run_program
from support.kube_api_stand_in import KubeApiStandIn, certificates, merge_patch
from support.rendering import render_all

POLICY = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
POLICY_BINDING = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding"
ROLE, ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:Role", "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
COST = w.POD_DELETION_COST_ANNOTATION
WORKER_ACCOUNT = f"system:serviceaccount:{w.AIRFLOW_NAMESPACE}:{w.AIRFLOW_WORKER_SERVICE_ACCOUNT}"


@functools.lru_cache(maxsize=None)
def program(stack: str, kubernetes_pod_operator: bool = False, idle_first: bool = True):
    run = run_program(stack, overrides={"kubernetesPodOperator": kubernetes_pod_operator,
                                        "workerScaleInIdleFirst": idle_first})
    return run, render_all(run)["airflow"]


class AdmissionPolicy:
    """A ValidatingAdmissionPolicy's CEL, evaluated as the API server does for a request it matches."""

    def __init__(self, spec: dict):
        environment = celpy.Environment()
        self.spec = spec

        def compiled(expression: str):
            return environment.program(environment.compile(expression))
        self.conditions = [compiled(c["expression"]) for c in spec.get("matchConditions", [])]
        self.variables = [(v["name"], compiled(v["expression"])) for v in spec.get("variables", [])]
        self.validations = [(compiled(v["expression"]), v["message"]) for v in spec["validations"]]

    def decide(self, request: dict, new: dict, old: dict) -> str:
        """'not matched', 'admitted' or the message of the first refusal."""
        activation = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(new),
                      "oldObject": celpy.json_to_cel(old)}
        def true(program) -> bool:
            result = program.evaluate(activation)
            if isinstance(result, celpy.CELEvalError):
                raise result
            if not isinstance(result, celpy.celtypes.BoolType):
                raise TypeError(f"not a bool: {result!r}")
            return bool(result)
        try:
            if not all(true(condition) for condition in self.conditions):
                return "not matched"
            activation["variables"] = celpy.json_to_cel({name: true(program) for name, program in self.variables})
            for program, message in self.validations:
                if not true(program):
                    return message
        except Exception as error:  # noqa: BLE001 an evaluation error is a refusal under failurePolicy Fail
            if self.spec.get("failurePolicy", "Fail") == "Fail":
                return f"error: {error}"
            raise
        return "admitted"


def worker_pod(documents: list[dict], name: str) -> dict:
    """A pod of the rendered worker Deployment as the ReplicaSet creates it."""
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-worker")
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**copy.deepcopy(template["metadata"]), "name": name, "namespace": w.AIRFLOW_NAMESPACE,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                              "name": "airflow-worker-5d8f7c9b6", "uid": "1d2f"}]},
            "spec": copy.deepcopy(template["spec"])}


def request(pod_name: str | None, username: str = WORKER_ACCOUNT) -> dict:
    extra = {TOKEN_POD_NAME: [pod_name], "authentication.kubernetes.io/pod-uid": ["6c1a"]} if pod_name else {}
    return {"operation": "UPDATE", "namespace": w.AIRFLOW_NAMESPACE,
            "userInfo": {"username": username, "groups": ["system:serviceaccounts"], "extra": extra}}


def policy_of(run) -> AdmissionPolicy:
    [registration] = run.of_type(POLICY)
    return AdmissionPolicy(registration.values["spec"])


def test_a_worker_may_set_its_own_pods_deletion_cost_and_nothing_else():
    run, documents = program("prod")
    policy = policy_of(run)
    own, other = worker_pod(documents, "airflow-worker-5d8f7c9b6-a1b2c"), worker_pod(documents, "airflow-worker-5d8f7c9b6-z9y8x")
    scheduler = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-scheduler")
    scheduler_pod = {"metadata": {**scheduler["spec"]["template"]["metadata"], "name": "airflow-scheduler-6b-q",
                                  "namespace": w.AIRFLOW_NAMESPACE}, "spec": scheduler["spec"]["template"]["spec"]}
    me = request(own["metadata"]["name"])

    def decide(pod: dict, patch: dict, as_request: dict = me) -> str:
        return policy.decide(as_request, merge_patch(pod, patch), pod)

    def cost(value):
        return {"metadata": {"annotations": {COST: value}}}
    assert decide(own, cost("3")) == "admitted"
    assert decide(merge_patch(own, cost("3")), cost("0")) == "admitted"
    assert decide(merge_patch(own, cost("3")), cost(None)) == "admitted", "removing it restores the default"
    refused = {
        "another worker's pod": decide(other, cost("0")),
        "the scheduler's pod": decide(scheduler_pod, cost("0")),
        "a label (a NetworkPolicy selects by it)": decide(own, {"metadata": {"labels": {"component": "api-server"}}}),
        "a label beside the cost": decide(own, {"metadata": {"labels": {"x": "1"}, "annotations": {COST: "1"}}}),
        "another annotation": decide(own, {"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": None}}}),
        "a cost that is not a task count": decide(own, cost("-2147483648")),
        "its owner (orphaned, the ReplicaSet would start another)": decide(own, {"metadata": {"ownerReferences": None}}),
        "a finalizer": decide(own, {"metadata": {"finalizers": ["example.com/keep"]}}),
        "its image": decide(own, {"spec": {"containers": [{**own["spec"]["containers"][0], "image": "evil:latest"}]}}),
        "a token bound to no pod": decide(own, cost("1"), request(None)),
    }
    assert [what for what, decision in refused.items() if decision == "admitted"] == []
    # Another account (the scheduler's, were it given the right) is not this policy's business.
    assert decide(own, cost("1"), request("airflow-scheduler-6b-q", "system:serviceaccount:airflow:airflow-scheduler")) \
        == "not matched"


def test_with_the_pod_operator_the_workers_may_still_patch_the_pods_their_tasks_launched():
    """cncf.kubernetes's KubernetesPodOperator patches its pods' labels when it is done (already_checked): the
    fence must not break it, and must not let a worker make any pod one of those."""
    task_pod = {"metadata": {"name": "etl-load-x1", "namespace": w.AIRFLOW_NAMESPACE,
                             "labels": dict(w.KUBERNETES_POD_OPERATOR_PODS)}, "spec": {"containers": [{"name": "base"}]}}
    checked = {"metadata": {"labels": {"already_checked": "True"}}}
    run, documents = program("prod", kubernetes_pod_operator=True)
    policy = policy_of(run)
    me = request("airflow-worker-5d8f7c9b6-a1b2c")
    assert policy.decide(me, merge_patch(task_pod, checked), task_pod) == "admitted"
    scheduler_like = {"metadata": {"name": "airflow-scheduler-6b-q", "namespace": w.AIRFLOW_NAMESPACE,
                                   "labels": dict(w.airflow_component("scheduler"))}, "spec": {}}
    made_a_task_pod = merge_patch(scheduler_like, {"metadata": {"labels": dict(w.KUBERNETES_POD_OPERATOR_PODS)}})
    assert policy.decide(me, made_a_task_pod, scheduler_like) != "admitted"
    without_operator = policy_of(program("prod")[0])
    assert without_operator.decide(me, merge_patch(task_pod, checked), task_pod) != "admitted"


def test_the_fence_is_in_force_for_the_namespace_before_the_right_to_patch_is_granted():
    run, documents = program("prod")
    [policy], [binding] = run.of_type(POLICY), run.of_type(POLICY_BINDING)
    spec = policy.values["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": w.AIRFLOW_NAMESPACE}}
    [rule] = spec["matchConstraints"]["resourceRules"]
    # A PATCH is admitted as an UPDATE; the main resource only (the Role grants no subresource).
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == ([""], ["pods"], ["UPDATE"])
    assert binding.values["spec"] == {"policyName": policy.values["metadata"]["name"], "validationActions": ["Deny"]}
    [role], [role_binding] = [r for r in run.of_type(ROLE) if "deletion-cost" in r.name], \
        [r for r in run.of_type(ROLE_BINDING) if "deletion-cost" in r.name]
    assert role.values["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    # The account the chart runs the workers under.
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-worker")
    assert role_binding.values["subjects"] == [{"kind": "ServiceAccount", "namespace": w.AIRFLOW_NAMESPACE,
                                                "name": deployment["spec"]["template"]["spec"]["serviceAccountName"]}]
    assert role_binding.values["roleRef"]["name"] == role.values["metadata"]["name"]
    # Granted only once the fence exists: the Role waits for the binding, which waits for the policy.
    assert binding.urn in role.dependencies and policy.urn in binding.dependencies
    assert role.urn in role_binding.dependencies


def test_only_the_workers_get_a_token_and_the_reporter_and_only_with_the_setting():
    for stack in ("local", "prod"):
        run, documents = program(stack)
        accounts = {d["metadata"]["name"]: d.get("automountServiceAccountToken") for d in documents
                    if d["kind"] == "ServiceAccount"}
        assert accounts.pop(w.AIRFLOW_WORKER_SERVICE_ACCOUNT) is True
        assert set(accounts.values()) == {False}, accounts
        # The reporter patches the pod its host is named after: the chart sets no hostname of its own.
        deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "airflow-worker")
        assert "hostname" not in deployment["spec"]["template"]["spec"]
        [config] = [d for d in documents if d["kind"] == "ConfigMap" and "airflow_local_settings.py" in d.get("data", {})]
        local_settings = config["data"]["airflow_local_settings.py"]
        assert WORKER_DELETION_COST_CODE.strip() in local_settings
        compile(local_settings, "airflow_local_settings.py", "exec")
    run, documents = program("prod", idle_first=False)
    assert not run.of_type(POLICY) and not [r for r in run.of_type(ROLE) if "deletion-cost" in r.name]
    accounts = {d["metadata"]["name"]: d.get("automountServiceAccountToken") for d in documents
                if d["kind"] == "ServiceAccount"}
    assert set(accounts.values()) == {False}
    [config] = [d for d in documents if d["kind"] == "ConfigMap" and "airflow_local_settings.py" in d.get("data", {})]
    assert "pod-deletion-cost" not in config["data"]["airflow_local_settings.py"]


def reporter_module():
    spec = importlib.util.spec_from_file_location("worker_deletion_cost",
                                                  REPO / "components" / "pod_code" / "worker_deletion_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reporter_names_what_the_platform_names():
    module = reporter_module()
    assert module._DELETION_COST == w.POD_DELETION_COST_ANNOTATION
    # Where kubelet mounts a service account's token, CA and namespace (the chart's workers mount it there).
    assert module._SERVICE_ACCOUNT_DIR == "/var/run/secrets/kubernetes.io/serviceaccount"


class Clock:
    """Time that passes only when the reporter waits: its `stopped.wait(delay)` and `time.monotonic`."""

    def __init__(self, until: float):
        self.now, self.until, self.waits = 0.0, until, []

    def __call__(self) -> float:
        return self.now

    def wait(self, delay: float) -> bool:
        self.waits.append(delay)
        self.now += delay
        return self.now >= self.until


@pytest.fixture
def reporter(tmp_path, monkeypatch):
    """The reporter's module, pointed at a stand-in API server that holds the worker's pod."""
    api = KubeApiStandIn(tmp_path / "api")
    api.add_pod("airflow", "airflow-worker-5d8f7c9b6-a1b2c", {"checksum/platform-secrets": "abc"})
    module = reporter_module()
    monkeypatch.setattr(module, "_SERVICE_ACCOUNT_DIR", str(api.service_account_dir(tmp_path / "sa")))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    yield module, api
    api.stop()


def test_busy_is_reported_at_once_idle_after_a_quiet_spell_and_not_per_task(reporter):
    """Tasks at seconds 1-5, then at 25 and 27 (a gap shorter than the quiet spell), then nothing: five patches
    (0, 1, 0, 1, 0), each busy spell at once, each idle one IDLE_AFTER_SECONDS after its last task, and the value
    written again after REASSERT_SECONDS."""
    module, api = reporter
    busy_at = {1, 2, 3, 4, 5, 25, 27}
    clock = Clock(until=module.REASSERT_SECONDS + 100)
    module._report_busy("airflow-worker-5d8f7c9b6-a1b2c", "airflow", clock, running=lambda: int(clock.now) in busy_at,
                        clock=clock)
    costs = [body["metadata"]["annotations"][COST] for _, _, body in api.patches]
    assert costs == ["0", "1", "0", "1", "0", "0"]
    assert api.annotations("airflow", "airflow-worker-5d8f7c9b6-a1b2c") == {"checksum/platform-secrets": "abc",
                                                                            COST: "0"}


def test_a_refused_patch_is_retried_with_a_growing_delay_and_logged_once(reporter, caplog):
    module, api = reporter
    api.token = "another-token"  # the API server refuses the worker's token: 401
    clock = Clock(until=400)
    module._report_busy("airflow-worker-5d8f7c9b6-a1b2c", "airflow", clock, running=lambda: 0, clock=clock)
    assert clock.waits[:8] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0] and set(clock.waits[8:]) == {60.0}
    warnings = [r for r in caplog.records if r.name == "airflow.platform.pod_deletion_cost"]
    assert len(warnings) == 1 and "401" in warnings[0].getMessage()
    api.token = "worker-token"  # granted: the next try succeeds and the delay falls back to the check period
    clock.until = clock.now + 65
    module._report_busy("airflow-worker-5d8f7c9b6-a1b2c", "airflow", clock, running=lambda: 0, clock=clock)
    assert api.annotations("airflow", "airflow-worker-5d8f7c9b6-a1b2c")[COST] == "0"


def test_the_reporters_patch_is_a_verified_merge_patch_of_its_own_pods_annotation(reporter, tmp_path):
    """The call as the API server receives it: over TLS verified with the service account's CA, the token as a
    bearer, a JSON merge patch of the one annotation, at the pod's own path."""
    module, api = reporter
    module._patch_deletion_cost("airflow-worker-5d8f7c9b6-a1b2c", "airflow", 2)
    assert api.annotations("airflow", "airflow-worker-5d8f7c9b6-a1b2c") == {
        "checksum/platform-secrets": "abc", COST: "2"}
    assert api.patches == [("airflow-worker-5d8f7c9b6-a1b2c", "application/merge-patch+json",
                            {"metadata": {"annotations": {COST: "2"}}})]
    # A server whose certificate the service account's CA did not sign is refused.
    (tmp_path / "other").mkdir()
    other_ca, _, _ = certificates(tmp_path / "other")
    (tmp_path / "sa" / "ca.crt").write_bytes(other_ca.read_bytes())
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        module._patch_deletion_cost("airflow-worker-5d8f7c9b6-a1b2c", "airflow", 1)

