"""Database and Broker under mocks: the resources, their HA shape, backups, restore, values schemas."""

from __future__ import annotations

import secrets
from urllib.parse import unquote, urlsplit

import pytest

from components import workloads as w
from components.config import SettingsError
from components.pods import memory_bytes
from components.workloads import BROKER_URL_SECRET, METADATA_CONNECTION_SECRET
from mock_engine import ProgramFailed, is_secret, run_program, unwrap
from support.schemas import chart_defaults, missing_value_paths, validate_against_json_schema

RELEASE = "kubernetes:helm.sh/v3:Release"
CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"
POOLER = "kubernetes:postgresql.cnpg.io/v1:Pooler"
SCHEDULED_BACKUP = "kubernetes:postgresql.cnpg.io/v1:ScheduledBackup"
OBJECT_STORE = "kubernetes:barmancloud.cnpg.io/v1:ObjectStore"
# Maps the redis-ha chart documents as free-form (passed to Kubernetes or to redis.conf as they are).
REDIS_HA_FREE_FORM = ("redis.config", "redis.resources", "sentinel.resources", "haproxy.resources",
                      "exporter.resources", "podDisruptionBudget", "haproxy.podDisruptionBudget",
                      "init.resources", "haproxy.init.resources", "splitBrainDetection.resources", "nodeSelector",
                      # Kubernetes securityContext objects: the chart passes them through whole.
                      "containerSecurityContext", "haproxy.containerSecurityContext", "haproxy.securityContext")


def test_prod_runs_operator_plugin_and_a_three_instance_synchronous_cluster(prod):
    releases = {r.values["chart"]: r for r in prod.of_type(RELEASE)}
    operator, plugin = releases["cloudnative-pg"], releases["plugin-barman-cloud"]
    assert operator.values["version"] == "0.29.0" and plugin.values["version"] == "0.7.0"
    assert plugin.depends_on(operator)
    assert plugin.depends_on(prod.one(RELEASE, "security-cert-manager")), "the plugin needs cert-manager"

    cluster = prod.one(CLUSTER)
    spec = cluster.values["spec"]
    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"] == {"method": "any", "number": 1, "dataDurability": "required"}
    assert spec["affinity"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["enablePDB"] is True
    assert spec["storage"]["storageClass"] == "gp3-encrypted"
    assert spec["resources"]["limits"]["memory"] == "8Gi"
    assert spec["bootstrap"]["initdb"]["secret"]["name"] == w.POSTGRES_APP_USER_SECRET
    assert cluster.depends_on(operator) and cluster.depends_on(plugin)
    assert cluster.protect and cluster.retain_on_delete


def test_prod_archives_wal_and_takes_daily_base_backups_to_the_backups_bucket(prod):
    store = prod.one(OBJECT_STORE).values["spec"]
    assert store["configuration"]["destinationPath"] == "s3://airflow-prod-backups-mock/"
    assert store["configuration"]["s3Credentials"] == {"inheritFromIAMRole": True}, "no static keys"
    assert store["retentionPolicy"] == "30d"
    [plugin] = prod.one(CLUSTER).values["spec"]["plugins"]
    assert plugin["isWALArchiver"] is True
    assert plugin["parameters"]["barmanObjectName"] == prod.one(OBJECT_STORE).values["metadata"]["name"]
    backup = prod.one(SCHEDULED_BACKUP).values["spec"]
    assert backup["method"] == "plugin" and backup["cluster"]["name"] == w.POSTGRES_CLUSTER
    assert backup["schedule"] == "0 0 2 * * *"
    # The instances' role and association exist before the first WAL segment is archived.
    cluster = prod.one(CLUSTER)
    association = prod.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", f"storage-{w.POSTGRES_SERVICE_ACCOUNT}")
    assert cluster.depends_on(association)


def test_prod_pools_connections_in_transaction_mode(prod):
    pooler = prod.one(POOLER).values["spec"]
    assert pooler["type"] == "rw" and pooler["instances"] == 3
    assert pooler["pgbouncer"]["poolMode"] == "transaction"
    assert pooler["pgbouncer"]["parameters"]["default_pool_size"] == "40"


def test_local_runs_one_instance_without_object_store_backups(local):
    spec = local.one(CLUSTER).values["spec"]
    assert spec["instances"] == 1
    assert "synchronous" not in spec["postgresql"]
    assert "plugins" not in spec and "storageClass" not in spec["storage"]
    assert not local.of_type(OBJECT_STORE) and not local.of_type(SCHEDULED_BACKUP)
    assert "plugin-barman-cloud" not in {r.values["chart"] for r in local.of_type(RELEASE)}
    values = local.one(RELEASE, "broker-redis-ha").values["values"]
    assert values["replicas"] == 1 and values["redis"]["config"]["min-replicas-to-write"] == 0


def test_restore_bootstraps_from_the_backups_at_the_requested_time():
    target = "2026-11-27T23:00:00Z"
    run = run_program("prod", overrides={"postgresRestoreTargetTime": target,
                                         "postgresBackupServerName": "airflow-db-r1"})
    spec = run.one(CLUSTER).values["spec"]
    recovery = spec["bootstrap"]["recovery"]
    assert "initdb" not in spec["bootstrap"]
    assert recovery["recoveryTarget"] == {"targetTime": target}
    [origin] = spec["externalClusters"]
    assert origin["name"] == recovery["source"]
    assert origin["plugin"]["parameters"] == {"barmanObjectName": "airflow-db-backups", "serverName": "airflow-db"}
    assert spec["plugins"][0]["parameters"]["serverName"] == "airflow-db-r1"
    assert "spec.bootstrap" in run.one(CLUSTER).ignore_changes


def test_restore_refuses_to_archive_over_its_own_source():
    with pytest.raises(ProgramFailed) as caught:
        run_program("prod", overrides={"postgresRestoreTargetTime": "2026-11-27T23:00:00Z"})
    assert isinstance(caught.value.cause, SettingsError)
    assert "airflow:postgresBackupServerName: must differ from postgresRestoreFromServerName" in str(caught.value)
    assert caught.value.registrations == []


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_operator_and_plugin_values_validate_against_their_chart_schemas(stack_runs, stack):
    run = stack_runs[stack]
    for release in run.of_type(RELEASE):
        chart = release.values["chart"]
        if chart in ("cloudnative-pg", "plugin-barman-cloud"):
            validate_against_json_schema(release.values["values"], f"{chart}/values.schema.json")


def test_redis_ha_has_three_servers_sentinel_haproxy_auth_and_persistence(prod):
    release = prod.one(RELEASE, "broker-redis-ha")
    assert release.values["version"] == "4.39.0"
    assert release.values["name"] == w.REDIS_RELEASE
    values = release.values["values"]
    assert values["replicas"] == 3 and values["sentinel"]["quorum"] == 2
    assert values["haproxy"]["enabled"] is True and values["haproxy"]["replicas"] == 3
    assert values["auth"] is True and values["existingSecret"] == w.REDIS_AUTH_SECRET
    assert values["hardAntiAffinity"] is True and values["haproxy"]["hardAntiAffinity"] is True
    assert values["persistentVolume"]["enabled"] is True
    assert values["podDisruptionBudget"] == {"maxUnavailable": 1}
    assert values["exporter"]["enabled"] is True and values["haproxy"]["metrics"]["enabled"] is True
    assert values["redis"]["config"]["maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_every_redis_ha_value_path_exists_in_the_chart_defaults(stack_runs, stack):
    values = stack_runs[stack].one(RELEASE, "broker-redis-ha").values["values"]
    assert missing_value_paths(values, chart_defaults("redis-ha"), REDIS_HA_FREE_FORM) == []


def test_the_key_path_check_catches_a_misspelled_redis_ha_key(prod):
    values = dict(prod.one(RELEASE, "broker-redis-ha").values["values"])
    values["haproxy"] = {**values["haproxy"], "replicaz": 3}
    assert missing_value_paths(values, chart_defaults("redis-ha"), REDIS_HA_FREE_FORM) == ["haproxy.replicaz"]


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_connection_secrets_are_published_with_key_connection(stack_runs, stack):
    secrets = {s.values["metadata"]["name"]: s for s in stack_runs[stack].of_type("kubernetes:core/v1:Secret")}
    metadata = secrets[METADATA_CONNECTION_SECRET]
    broker = secrets[BROKER_URL_SECRET]
    # `kedaConnection`: KEDA's own role (the worker hands it over); `workerConnection` (and its async twin): the
    # workers' role; `cleanupConnection`: the nightly cleanup's, with CloudNativePG Airflow's own URL.
    data = metadata.values["stringData"]
    assert set(data) == {"connection", "async-connection", "kedaConnection", "workerConnection",
                         "workerAsyncConnection", "cleanupConnection"}
    assert data["cleanupConnection"] == data["connection"]
    airflow = urlsplit(data["connection"])
    roles = {role["name"]: role for role in
             stack_runs[stack].one("kubernetes:postgresql.cnpg.io/v1:Cluster").values["spec"]["managed"]["roles"]}
    assert set(roles) == {w.POSTGRES_KEDA_USER, w.POSTGRES_WORKER_USER}
    for key, user, secret_name in (("kedaConnection", w.POSTGRES_KEDA_USER, w.POSTGRES_KEDA_USER_SECRET),
                                   ("workerConnection", w.POSTGRES_WORKER_USER, w.POSTGRES_WORKER_USER_SECRET)):
        url = urlsplit(data[key])
        assert (url.username, url.hostname, url.port, url.path, url.query) == (
            user, airflow.hostname, airflow.port, airflow.path, airflow.query)
        # Its password is the one CloudNativePG gives the role (the managed role's Secret), not the owner's.
        role_secret = secrets[secret_name].values
        assert role_secret["type"] == "kubernetes.io/basic-auth"
        assert role_secret["stringData"] == {"username": user, "password": unquote(url.password)}
        assert unquote(url.password) != unquote(airflow.password)
        role = roles[user]
        assert (role["passwordSecret"]["name"], role["login"], role["inherit"]) == (secret_name, True, False)
        assert not any(role.get(attribute) for attribute in ("superuser", "createdb", "createrole", "replication",
                                                             "bypassrls", "inRoles"))
    worker_async = urlsplit(data["workerAsyncConnection"])
    assert (worker_async.scheme, worker_async.username) == ("postgresql+asyncpg", w.POSTGRES_WORKER_USER)
    assert unquote(urlsplit(data["kedaConnection"]).password) != unquote(urlsplit(data["workerConnection"]).password)
    assert set(broker.values["stringData"]) == {"connection"}
    for secret in (metadata, broker):
        data = secret.inputs["stringData"]
        assert is_secret(data) or all(is_secret(value) for value in data.values())
    # Airflow's async engine (asyncpg) takes `ssl`, not libpq's `sslmode`.
    assert metadata.values["stringData"]["async-connection"].startswith("postgresql+asyncpg://airflow:")
    assert metadata.values["stringData"]["async-connection"].endswith(
        "@airflow-db-pooler.airflow.svc.cluster.local:5432/airflow?ssl=require&prepared_statement_cache_size=0")
    assert unwrap(metadata.inputs)["stringData"]["connection"].startswith(
        "postgresql://airflow:")
    assert "@airflow-db-pooler.airflow.svc.cluster.local:5432/airflow?sslmode=require" in \
        metadata.values["stringData"]["connection"]
    assert broker.values["stringData"]["connection"].endswith(
        "@airflow-redis-haproxy.airflow.svc.cluster.local:6379/0")


def test_database_broker_and_operator_do_not_wait_for_each_other(prod):
    broker = prod.one(RELEASE, "broker-redis-ha")
    for name in ("database-cloudnative-pg", "database-barman-cloud"):
        database_release = prod.one(RELEASE, name)
        assert not prod.depends_transitively(broker, database_release)
        assert not prod.depends_transitively(database_release, broker)
    # The operator waits for nothing of Security (its dashboard stays in its own namespace): not for the
    # monitoring namespace, cert-manager, the certificate or the policies.
    operator = prod.one(RELEASE, "database-cloudnative-pg")
    security = prod.one("airflow:platform:Security")
    waited = {prod.by_urn(urn).name for urn in operator.dependencies + sum(operator.property_dependencies.values(), [])
              if prod.by_urn(urn).parent == security.urn}
    assert waited == set()
    assert not prod.depends_transitively(operator, prod.one(RELEASE, "security-cert-manager"))


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_redis_maxmemory_leaves_a_quarter_of_the_container_to_redis_itself(stack_runs, stack):
    values = stack_runs[stack].one(RELEASE, "broker-redis-ha").values["values"]
    limit = memory_bytes(values["redis"]["resources"]["limits"]["memory"])
    assert int(values["redis"]["config"]["maxmemory"]) == int(limit * 0.75)
    assert values["redis"]["config"]["maxmemory-policy"] == "noeviction"


def test_the_app_user_secret_is_watched_by_cloudnative_pg(prod):
    # Without the label CloudNativePG does not react to a rotated password (pkg: isUsefulClusterSecret).
    secret = next(s for s in prod.of_type("kubernetes:core/v1:Secret")
                  if s.values["metadata"]["name"] == w.POSTGRES_APP_USER_SECRET)
    assert secret.values["metadata"]["labels"] == {"cnpg.io/reload": "true"}


def test_redis_is_not_rolled_one_server_at_a_time_on_a_password_rotation():
    """A rolling restart cannot rotate redis-ha's password (a restarted server cannot authenticate to the old
    primary and never becomes ready); docs/operations.md's procedure (Rotate secrets) restarts them together."""
    seed = secrets.randbits(32)
    first, rotated = (run_program("prod", password_seed=s) for s in (seed, seed + 1))
    for run in (first, rotated):
        values = run.one(RELEASE, "broker-redis-ha").values["values"]
        assert "podAnnotations" not in values["redis"] and "podAnnotations" not in values["haproxy"]
    assert first.one(RELEASE, "broker-redis-ha").values["values"] == rotated.one(RELEASE, "broker-redis-ha").values["values"]


@pytest.mark.parametrize("replicas", [3, 4, 5])
def test_redis_keeps_accepting_writes_with_one_replica_down_and_never_writes_to_none(replicas):
    """redis-ha runs a primary and `replicas - 1` replicas; Redis refuses writes while fewer than
    min-replicas-to-write replicas are connected (redis.conf). With one replica down, `replicas - 2` remain: the
    value must not exceed that (or queuing tasks stops with one pod lost), and must be at least 1 (or a write no
    replica saw is lost with the primary)."""
    values = run_program("prod", overrides={"redisReplicas": replicas}).one(RELEASE, "broker-redis-ha").values["values"]
    assert values["replicas"] == replicas
    assert 1 <= int(values["redis"]["config"]["min-replicas-to-write"]) <= replicas - 2


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_the_pooler_tracks_the_named_statements_airflows_async_engine_prepares(stack_runs, stack):
    """In transaction mode a named prepared statement lives on one server connection, so PgBouncer must track
    them (max_prepared_statements > 0, PgBouncer 1.21+: its documentation, "0 disables prepared statement
    support"), or a client that names its statements fails with 'prepared statement ... does not exist'. The
    release keeps Airflow's async engine on unnamed ones (asyncpg's cache off); this is the second line, for any
    asyncpg client that names them (tests/e2e/test_airflow_e2e.py runs both cases through a real PgBouncer)."""
    pgbouncer = stack_runs[stack].one(POOLER).values["spec"]["pgbouncer"]
    assert pgbouncer["poolMode"] == "transaction"
    assert int(pgbouncer["parameters"]["max_prepared_statements"]) > 0
