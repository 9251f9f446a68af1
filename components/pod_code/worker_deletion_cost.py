"""Runs inside each Celery worker, not in the Pulumi program: AirflowRelease appends this file to the chart's
airflow_local_settings.py, which every Airflow process imports at start (airflow/settings.py,
import_local_settings). Only a Celery worker sends `worker_ready`: there, a thread of the worker's main process
writes how many tasks it runs into its pod's `controller.kubernetes.io/pod-deletion-cost`. The pod is the one
named as the host (kubelet names a pod's host after the pod unless its spec sets a hostname, which the chart's
worker does not: pkg/kubelet/kubelet_pods.go, GeneratePodHostNameAndDomain), in the namespace of the
service account's mounted files. A ReplicaSet that scales in deletes the pods of lowest cost
first (kubernetes pkg/controller/controller_utils.go, ActivePodsWithRanks), so KEDA's scale-in and a
rollout stop idle workers before busy ones. The count is Celery's own (celery/worker/state.py:
active_requests, the requests its pool has accepted and not finished).

Standard library only: the image's packages are Airflow's. The token is read at every call (kubelet rotates
the projected token), and a failed call is logged and tried again at the next change.
"""

import os

_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# How often the count is compared with the one reported: a pod's cost lags its tasks by at most this much,
# and the API server gets at most one patch per worker in this time, only while the count changes.
_CHECK_SECONDS = 1.0


def _patch_deletion_cost(pod: str, namespace: str, running: int) -> None:
    import json
    import ssl
    import urllib.request
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    with open(f"{_SERVICE_ACCOUNT_DIR}/token") as token_file:
        token = token_file.read().strip()
    body = json.dumps({"metadata": {"annotations": {_DELETION_COST: str(running)}}}).encode()
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/pods/{pod}", data=body, method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
    context = ssl.create_default_context(cafile=f"{_SERVICE_ACCOUNT_DIR}/ca.crt")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        response.read()


def _report_running_tasks(pod: str, namespace: str, stopped) -> None:
    import logging

    from celery.worker import state
    log = logging.getLogger("airflow.platform.pod_deletion_cost")
    reported, delay = None, 0.0
    while not stopped.wait(delay):
        delay = _CHECK_SECONDS
        running = len(state.active_requests)
        if running == reported:
            continue
        try:
            _patch_deletion_cost(pod, namespace, running)
        except Exception as error:  # noqa: BLE001 the worker runs on; the next check tries again
            log.warning("could not set %s of pod %s to %s: %s", _DELETION_COST, pod, running, error)
            continue
        reported = running


def _start_reporting(**_) -> None:
    import socket
    import threading
    with open(f"{_SERVICE_ACCOUNT_DIR}/namespace") as namespace_file:
        namespace = namespace_file.read().strip()
    threading.Thread(target=_report_running_tasks, name="pod-deletion-cost", daemon=True,
                     args=(socket.gethostname(), namespace, threading.Event())).start()


try:
    from celery.signals import worker_ready as _worker_ready
except ImportError:  # an image without Celery runs no Celery worker
    pass
else:
    _worker_ready.connect(_start_reporting, weak=False)
