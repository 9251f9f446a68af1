"""Runs inside each Celery worker, not in the Pulumi program: AirflowRelease appends this file to the chart's
airflow_local_settings.py, which every Airflow process imports at start (airflow/settings.py,
import_local_settings). Only a Celery worker sends `worker_ready`: there, a thread of the worker's main process
writes whether it is busy into its pod's `controller.kubernetes.io/pod-deletion-cost`: 1 while a task runs (or
ran in the last IDLE_AFTER_SECONDS), 0 once idle. A ReplicaSet that scales in deletes the pods of lowest cost
first (kubernetes pkg/controller/controller_utils.go, ActivePodsWithRanks), so KEDA's scale-in stops idle
workers before busy ones. The count is Celery's own (celery/worker/state.py: active_requests, the requests its
pool has accepted and not finished). The pod is the one named as the host (kubelet names a pod's host after the
pod unless its spec sets a hostname, which the chart's worker does not: pkg/kubelet/kubelet_pods.go,
GeneratePodHostNameAndDomain), in the namespace of the service account's mounted files.

Every patch is a pod update that every pod watcher receives, and Kubernetes advises against updating the cost
often: busy is reported at once, idle only after a quiet spell, so a worker that runs task after task patches
twice per busy spell, not per task; the value is written again every REASSERT_SECONDS in case something removed
it. Standard library only: the image's packages are Airflow's. The token is read at every call (kubelet rotates
the projected token); a refused call (the Role not granted yet on a first install, say) is logged once per
distinct error and tried again with a growing delay, up to a minute.
"""

import os

_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_CHECK_SECONDS = 1.0
IDLE_AFTER_SECONDS = 15.0
REASSERT_SECONDS = 600.0
_MAX_RETRY_SECONDS = 60.0


def _patch_deletion_cost(pod: str, namespace: str, cost: int) -> None:
    import json
    import ssl
    import urllib.request
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    with open(f"{_SERVICE_ACCOUNT_DIR}/token") as token_file:
        token = token_file.read().strip()
    body = json.dumps({"metadata": {"annotations": {_DELETION_COST: str(cost)}}}).encode()
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/pods/{pod}", data=body, method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
    context = ssl.create_default_context(cafile=f"{_SERVICE_ACCOUNT_DIR}/ca.crt")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        response.read()


def _report_busy(pod: str, namespace: str, stopped, running=None, clock=None) -> None:
    """`running` (how many tasks run) and `clock` are Celery's count and time.monotonic unless given."""
    import logging
    import time
    if running is None:
        from celery.worker import state

        def running() -> int:
            return len(state.active_requests)
    clock = clock or time.monotonic
    log = logging.getLogger("airflow.platform.pod_deletion_cost")
    reported, reported_at, busy_until, delay, retry, last_error = None, 0.0, float("-inf"), 0.0, 0.0, None
    while not stopped.wait(delay):
        delay, now = _CHECK_SECONDS, clock()
        if running():
            busy_until = now + IDLE_AFTER_SECONDS
        cost = 1 if now < busy_until else 0
        if cost == reported and now - reported_at < REASSERT_SECONDS:
            continue
        try:
            _patch_deletion_cost(pod, namespace, cost)
        except Exception as error:  # noqa: BLE001 the worker runs on; the next check tries again
            if str(error) != last_error:
                log.warning("could not set %s of pod %s to %s (retrying, up to every %ss): %s",
                            _DELETION_COST, pod, cost, _MAX_RETRY_SECONDS, error)
            last_error, retry = str(error), min(max(2 * retry, _CHECK_SECONDS), _MAX_RETRY_SECONDS)
            delay = retry
            continue
        reported, reported_at, retry, last_error = cost, now, 0.0, None


def _start_reporting(**_) -> None:
    import socket
    import threading
    with open(f"{_SERVICE_ACCOUNT_DIR}/namespace") as namespace_file:
        namespace = namespace_file.read().strip()
    threading.Thread(target=_report_busy, name="pod-deletion-cost", daemon=True,
                     args=(socket.gethostname(), namespace, threading.Event())).start()


try:
    from celery.signals import worker_ready as _worker_ready
except ImportError:  # an image without Celery runs no Celery worker
    pass
else:
    _worker_ready.connect(_start_reporting, weak=False)
