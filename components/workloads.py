"""Names, pod labels and ports of the workloads, shared by the components that create them and by
the NetworkPolicies that let them talk. One place, so a renamed release cannot silently open or close
a flow.
"""

from __future__ import annotations

AIRFLOW_NAMESPACE = "airflow"
MONITORING_NAMESPACE = "monitoring"
CERT_MANAGER_NAMESPACE = "cert-manager"
CNPG_NAMESPACE = "cnpg-system"
KEDA_NAMESPACE = "keda"

# Helm release / resource names (the charts derive service, pod and service-account names from them).
AIRFLOW_RELEASE = "airflow"
REDIS_RELEASE = "airflow-redis"
PROMETHEUS_RELEASE = "kube-prometheus-stack"
POSTGRES_CLUSTER = "airflow-db"
POSTGRES_POOLER = "airflow-db-pooler"

# Pod labels, as the charts and operators set them.
AIRFLOW_PODS = {"tier": "airflow", "release": AIRFLOW_RELEASE}


def airflow_component(component: str) -> dict[str, str]:
    return {**AIRFLOW_PODS, "component": component}


# The Airflow pods that use the metadata database. Named one by one (not "every pod of the release") so that
# statsd, or a component a future chart adds, gets nothing by default.
AIRFLOW_CLIENT_COMPONENTS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server", "flower",
                             "run-airflow-migrations", "create-user-job")
# The nightly database cleanup uses the metadata database and nothing else of the platform.
AIRFLOW_DATABASE_CLIENT_COMPONENTS = (*AIRFLOW_CLIENT_COMPONENTS, "database-cleanup")
# Of those, the ones that talk to the Celery broker: the scheduler queues task instances, the workers take them,
# Flower watches them. The API server, triggerer and DAG processor hold the broker's URL but never open it (the
# e2e tier gives them an unreachable one).
AIRFLOW_BROKER_CLIENT_COMPONENTS = ("scheduler", "worker", "flower")
# The ones that call the API server's execution API: only the workers' task supervisors. Airflow 3.1's triggerer
# and DAG processor serve their own in process (airflow/jobs/triggerer_job_runner.py and
# airflow/dag_processing/manager.py: InProcessExecutionAPI), and the scheduler calls none.
AIRFLOW_EXECUTION_API_CLIENT_COMPONENTS = ("worker",)
# The ones that send metrics to statsd: Airflow's long-running components (its Stats client; Flower and the
# chart's Jobs send none that the platform reads).
AIRFLOW_METRICS_SENDER_COMPONENTS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server")
# The ones the chart gives git-sync containers when `dags.gitSync` is on (chart 1.19.0: the dag-processor, triggerer
# and worker Deployments; the scheduler only without a standalone DAG processor, which Airflow 3 always has).
AIRFLOW_GIT_SYNC_COMPONENTS = ("dag-processor", "triggerer", "worker")
# The ones that read and write task logs in the logs bucket (remote logging, target=aws).
AIRFLOW_LOG_WRITER_COMPONENTS = ("scheduler", "worker", "triggerer", "dag-processor", "api-server")
AIRFLOW_API_SERVER = airflow_component("api-server")
AIRFLOW_WORKER = airflow_component("worker")
AIRFLOW_TRIGGERER = airflow_component("triggerer")
AIRFLOW_DAG_PROCESSOR = airflow_component("dag-processor")
# The stack's buckets, `<project>-<stack>-<purpose>-<random>`: task logs and database backups (Storage makes them,
# the S3 endpoint's policy admits them).
LOGS_BUCKET, BACKUPS_BUCKET = "logs", "backups"
BUCKET_PURPOSES = (LOGS_BUCKET, BACKUPS_BUCKET)
# The label the cncf.kubernetes provider's KubernetesPodOperator puts on every pod it launches
# (operators/pod.py, _get_ti_pod_labels).
KUBERNETES_POD_OPERATOR_PODS = {"kubernetes_pod_operator": "True"}
AIRFLOW_STATSD = airflow_component("statsd")
POSTGRES_INSTANCES = {"cnpg.io/cluster": POSTGRES_CLUSTER, "cnpg.io/podRole": "instance"}
POSTGRES_POOLER_PODS = {"cnpg.io/poolerName": POSTGRES_POOLER}
# The selector of the `<cluster>-rw` Service (CloudNativePG 1.30 pkg/specs/services.go): PgBouncer, the
# standbys and the join Job reach the primary through it.
POSTGRES_PRIMARY_SERVICE_SELECTOR = {"cnpg.io/cluster": POSTGRES_CLUSTER, "cnpg.io/instanceRole": "primary"}
# CloudNativePG's bootstrap and maintenance Jobs (initdb, join, full-recovery, ...) carry the cluster and a
# job role, not `cnpg.io/podRole: instance` (CloudNativePG 1.30 pkg/specs/jobs.go).
POSTGRES_JOBS_CLUSTER_LABEL = {"cnpg.io/cluster": POSTGRES_CLUSTER}
POSTGRES_JOB_ROLE_LABEL = "cnpg.io/jobRole"
REDIS_SERVERS = {"app": "redis-ha", "release": REDIS_RELEASE}
# The Job that creates Airflow's role in a managed database (Aurora, RDS).
DB_BOOTSTRAP_PODS = {"app.kubernetes.io/name": "airflow-db-bootstrap", "app.kubernetes.io/part-of": "airflow-platform"}
REDIS_HAPROXY = {"app": "redis-ha-haproxy", "release": REDIS_RELEASE}
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}
CNPG_OPERATOR_PODS = {"app.kubernetes.io/name": "cloudnative-pg"}
KEDA_OPERATOR_PODS = {"app": "keda-operator"}
KUBE_DNS_PODS = {"k8s-app": "kube-dns"}

# Node pools (target=aws): everything but the Celery workers runs on the on-demand system nodes.
NODE_ROLE_LABEL = "airflow.apache.org/node-role"
SYSTEM_NODES = {NODE_ROLE_LABEL: "system"}
WORKER_NODES = {NODE_ROLE_LABEL: "worker"}
# git-sync's requests, in every Airflow pod that reads DAGs (the Celery workers included) when it syncs them.
GIT_SYNC_REQUESTS = ("50m", "128Mi")
# On the worker nodes Karpenter makes: only Celery workers tolerate it.
WORKER_TAINT = {"key": NODE_ROLE_LABEL, "value": "worker", "effect": "NoSchedule"}
# Karpenter never drains a node, to consolidate it or follow a drift, while a pod with this runs on it.
DO_NOT_DISRUPT = {"karpenter.sh/do-not-disrupt": "true"}

# Ports.
API_SERVER_PORT = 8080
WORKER_LOG_PORT = 8793
TRIGGERER_LOG_PORT = 8794
STATSD_INGEST_PORT = 9125       # UDP, Airflow components -> statsd exporter
STATSD_METRICS_PORT = 9102
POSTGRES_PORT = 5432
CNPG_STATUS_PORT = 8000
CNPG_METRICS_PORT = 9187
PGBOUNCER_METRICS_PORT = 9127
# The Airflow chart's PgBouncer (ports.pgbouncer), in front of Aurora / RDS; the chart names its Deployment and
# Service <release>-pgbouncer, and Observability its monitor the same.
CHART_PGBOUNCER_PORT = 6543
CHART_PGBOUNCER = f"{AIRFLOW_RELEASE}-pgbouncer"
CHART_PGBOUNCER_PODS = airflow_component("pgbouncer")
REDIS_PORT = 6379
SENTINEL_PORT = 26379
REDIS_EXPORTER_PORT = 9121
HAPROXY_METRICS_PORT = 9101
# The ReplicaSet deletes the pods of lowest cost first when it scales in (kubernetes pkg/controller/
# controller_utils.go, ActivePodsWithRanks): each Celery worker reports its running tasks there.
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# The chart names each component's ServiceAccount <release>-<component>.
AIRFLOW_WORKER_SERVICE_ACCOUNT = f"{AIRFLOW_RELEASE}-worker"
KUBERNETES_API_PORT = 443      # the `kubernetes` Service, and the EKS endpoint's network interfaces
# A laptop cluster's API server listens on a node address: 6443 (kind, k3d) or 8443 (minikube).
LOCAL_API_SERVER_PORTS = (6443, 8443)
# EKS Pod Identity agent, on every node's link-local address.
POD_IDENTITY_AGENT_CIDR = "169.254.170.23/32"
POD_IDENTITY_AGENT_PORT = 80

# Service accounts that get AWS roles through EKS Pod Identity (the chart names them <release>-<component>).
AIRFLOW_LOG_WRITERS = tuple(f"{AIRFLOW_RELEASE}-{c}" for c in AIRFLOW_LOG_WRITER_COMPONENTS)
# CloudNativePG runs the instances (and their Barman Cloud sidecar) under a service account named after the cluster.
POSTGRES_SERVICE_ACCOUNT = POSTGRES_CLUSTER

# Kubernetes Secrets the charts read (names and the keys inside them).
FERNET_KEY_SECRET = "airflow-fernet-key"            # key: fernet-key
API_SECRET_KEY_SECRET = "airflow-api-secret-key"    # key: api-secret-key
JWT_SECRET = "airflow-jwt-secret"                   # key: jwt-secret
ADMIN_USER_SECRET = "airflow-admin-user"            # keys: username, password
POSTGRES_APP_USER_SECRET = "airflow-db-app-user"    # kubernetes.io/basic-auth: username, password
POSTGRES_KEDA_USER_SECRET = "airflow-db-keda-user"  # kubernetes.io/basic-auth: username, password
POSTGRES_WORKER_USER_SECRET = "airflow-db-worker-user"  # kubernetes.io/basic-auth: username, password
REDIS_AUTH_SECRET = "airflow-redis-auth"            # key: auth
# With a managed database: the certificate of the chart's PgBouncer (cert-manager's Secret: tls.crt, tls.key,
# ca.crt), and where the Airflow pods find its CA (an optional item of their projected Secrets volume).
METADATA_TLS_SECRET = "airflow-metadata-tls"
SECRETS_DIR = "/opt/airflow/secrets"
METADATA_CA_FILE = f"{SECRETS_DIR}/metadata-ca.crt"
POSTGRES_USER = "airflow"
# KEDA's own role: it may read task_instance, which its query counts, and no other table of Airflow's (the
# migration Job grants it).
POSTGRES_KEDA_USER = "airflow_keda"
# Its server connections at most (KEDA polls with one, its metrics server's requests may add one); counted in the
# budget of max_connections.
POSTGRES_KEDA_CONNECTION_LIMIT = 5
# The workers' role: Celery's result backend ([celery] result_backend defaults to the worker's metadata URL) may
# read and write Celery's two tables, and the chart's checks may read the schema's version; nothing of Airflow's
# (the migration Job creates Celery's tables and grants it). Pooled like the owner's: no connection limit.
POSTGRES_WORKER_USER = "airflow_worker"
POSTGRES_DATABASE = "airflow"
ADMIN_USER = "admin"

DAGS_PVC = "airflow-dags-pvc"
LOGS_PVC = "airflow-logs-pvc"

# The Secret Database writes the metadata URLs into, and its keys: the chart reads `connection`; AirflowRelease
# hands `async-connection` to [database] sql_alchemy_conn_async.
METADATA_CONNECTION_SECRET = "airflow-metadata-connection"
ASYNC_CONNECTION_KEY = "async-connection"
# KEDA's URL (the worker hands it over as AIRFLOW_CONN_AIRFLOW_DB), as its own role, which may only read
# task_instance: KEDA has no file of PgBouncer's CA, so it requires TLS without verifying it.
KEDA_CONNECTION_KEY = "kedaConnection"
# The workers' metadata URLs, as the workers' own role (w.POSTGRES_WORKER_USER): Celery's result backend is the
# worker's metadata URL ([celery] result_backend unset), so the workers hold no URL of the owner's. Their async
# engine is never used; its URL names the same role.
WORKER_CONNECTION_KEY, WORKER_ASYNC_CONNECTION_KEY = "workerConnection", "workerAsyncConnection"
# The owner's URL for the nightly database cleanup, whose pod has no CA file either (TLS required, not verified).
CLEANUP_CONNECTION_KEY = "cleanupConnection"
# The Secret Broker writes the Celery broker URL into (key `connection`).
BROKER_URL_SECRET = "airflow-broker-url"
# PgBouncer pools per user: the owner's (every Airflow component) and the workers' role (Celery's results) may each
# fill pgbouncerPoolSize server connections in every PgBouncer pod. KEDA's is held to its connection limit.
POOLED_DATABASE_ROLES = 2
