"""AirflowRelease's settings: Airflow itself (the chart and image), its components, the Celery workers and KEDA,
git-sync and the ingress host."""

from __future__ import annotations

from pydantic import Field

from components.platform import (
    CPU_PATTERN,
    DIGEST_PATTERN,
    QUANTITY_PATTERN,
    PlatformSettings,
)


class AirflowSettings(PlatformSettings):
    """Airflow itself: the chart and image, its components, the workers and KEDA, git-sync."""

    # renovate: datasource=helm depName=airflow registryUrl=https://airflow.apache.org
    airflow_chart_version: str = Field(
        default="1.19.0", pattern=r"^\d+\.\d+\.\d+$", description="Version of the official Apache Airflow chart.")
    # renovate: datasource=docker depName=apache/airflow
    airflow_version: str = Field(
        default="3.1.8", pattern=r"^3\.\d+\.\d+$",
        description="Airflow version (the chart's airflowVersion and the image tag); Airflow 3 only. The "
                    "end-to-end tests run the same version (requirements/e2e.in).")
    airflow_image_repository: str = Field(
        default="apache/airflow", min_length=1, max_length=300,
        description="Image repository, e.g. your own image with your DAGs' Python dependencies.")
    airflow_image_tag: str = Field(
        default="", max_length=128, description="Image tag; empty means airflowVersion.")
    scheduler_replicas: int = Field(default=1, ge=1, le=10, description="Scheduler replicas (2 or more for HA).")
    api_server_replicas: int = Field(default=1, ge=1, le=20, description="API server replicas (UI, REST and execution API).")
    triggerer_replicas: int = Field(default=1, ge=1, le=10, description="Triggerer replicas.")
    dag_processor_replicas: int = Field(default=1, ge=1, le=10, description="DAG processor replicas.")
    worker_min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest Celery workers KEDA keeps.")
    worker_max_replicas: int = Field(default=4, ge=1, le=1000, description="Most Celery workers KEDA may run.")
    worker_concurrency: int = Field(
        default=8, ge=1, le=256,
        description="Tasks one Celery worker runs at once (celery.worker_concurrency; KEDA divides the queue by it).")
    task_queued_timeout_seconds: int = Field(
        default=600, ge=120, le=7200,
        description="How long a queued task may wait for a worker (while KEDA and Karpenter add one) before the "
                    "scheduler queues it again (twice, then fails it); the execution API token outlives it.")
    database_cleanup_retention_days: int = Field(
        default=90, ge=0, le=3650,
        description="Days of history (task instances, DAG runs, jobs, the audit log, XComs) the metadata database "
                    "keeps: each night older rows are deleted, and the previous night's deletions, kept in "
                    "`_airflow_deleted__*` tables until then, dropped. 0 turns the cleanup off.")
    longest_task_seconds: int = Field(
        default=540, ge=30, le=86340,
        description="The longest a task runs. A worker told to stop (scale-in, a node replaced, an upgrade) takes no "
                    "new task and gets this plus a minute to finish the ones it runs.")
    worker_scale_in_window_seconds: int = Field(
        default=600, ge=60, le=3600,
        description="How long the queue must stay low before KEDA removes workers (one a minute): longer than the "
                    "usual gap between your tasks, so workers are not removed between two bursts.")
    worker_scale_in_idle_first: bool = Field(
        default=True,
        description="Scale-in (and a rollout) stops idle workers before busy ones: each worker reports its running "
                    "tasks as its pod's deletion cost, through a token and a Role that may patch pods, fenced by an "
                    "admission policy to that one annotation of its own pod. Off, the ReplicaSet picks by age and a "
                    "busy worker may be the one stopped (it still finishes its tasks within its grace period).")
    worker_cpu: str = Field(default="1", pattern=CPU_PATTERN, description="CPU request of each Celery worker (cores, or millicores with m).")
    worker_cpu_limit: str = Field(
        default="", pattern=rf"^$|{CPU_PATTERN}",
        description="CPU limit of each Celery worker; empty: twice workerCpu, at least 1. Raise it for CPU-heavy "
                    "tasks: a worker runs workerConcurrency of them at once.")
    worker_memory: str = Field(default="2Gi", pattern=QUANTITY_PATTERN, description="Memory request and limit of each Celery worker.")
    # renovate: datasource=helm depName=keda registryUrl=https://kedacore.github.io/charts
    keda_chart_version: str = Field(
        default="2.20.2", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of KEDA.")
    git_sync_repository: str = Field(
        default="", pattern=r"^$|^https://\S+$",
        description="HTTPS URL of the DAG repository for git-sync; empty means DAGs come from the DAGs volume.")
    git_sync_branch: str = Field(default="main", min_length=1, max_length=255, description="Branch git-sync follows.")
    git_sync_sub_path: str = Field(default="", max_length=1024, description="Folder of the DAGs inside the repository.")
    git_sync_credentials_secret: str = Field(
        default="", pattern=r"^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Existing Secret in the Airflow namespace with GITSYNC_USERNAME and GITSYNC_PASSWORD "
                    "(and GIT_SYNC_USERNAME/GIT_SYNC_PASSWORD); empty for a public repository.")
    ingress_host: str = Field(
        default="", pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        description="Public host name of the Airflow UI/API, for example airflow.example.com. Required when target=aws.")
    flower_enabled: bool = Field(default=True, description="Run Celery Flower (reach it with a port-forward; it gets no ingress).")
    kubernetes_pod_operator: bool = Field(
        default=False,
        description="Let tasks launch pods (KubernetesPodOperator): gives the workers back their service-account "
                    "token and the chart's pod-launching Role. Off, no Airflow pod can call the Kubernetes API.")
    airflow_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN,
        description="Digest of the Airflow image (airflowImageRepository, airflowImageTag), e.g. from "
                    "`crane digest apache/airflow:3.1.8`.")
    statsd_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of the chart's statsd exporter image.")
    git_sync_image_digest: str = Field(
        default="", pattern=DIGEST_PATTERN, description="Digest of the chart's git-sync image.")

    @property
    def worker_grace_seconds(self) -> int:
        """A stopping worker's terminationGracePeriodSeconds: its longest task and a minute for Celery's warm
        shutdown (the task's log upload, the acknowledgement)."""
        return self.longest_task_seconds + 60
