"""The stack's settings: one typed, validated model read from `pulumi config`, composed of each area's model (each
beside the component it configures) into one flat namespace.

Every key lives in the project's config namespace (`airflow:<key>`), has a one-line description,
a default (the `local` stack's file changes a few for a laptop), and bounds. `load_settings` refuses a
stack whose config has an unknown key (a typo), a wrong type, an out-of-range value or a missing required
value, and it does so before the program registers any resource, with one message that lists every problem.
Checks within an area live in its model; checks across areas live here. Each component takes its own slice
(`settings.database`, …), so its real inputs show in its signature.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import urllib.parse
from typing import Any, Optional, TypeVar, cast

import pulumi
from pydantic import ValidationError

from components import workloads as w
from components.airflow.settings import AirflowSettings
from components.broker.settings import BrokerSettings
from components.cluster.capacity_model import WorkerShape, worker_capacity_problems
from components.cluster.settings import EKS_STANDARD_SUPPORT_ENDS, ClusterSettings, NodeSettings, today
from components.database.settings import DatabaseSettings
from components.delivery.settings import DeliverySettings
from components.observability.alerts import ObservedStores
from components.observability.settings import ObservabilitySettings
from components.platform import PROJECT_NAMESPACE, PlatformSettings, SettingsError, aws_name_prefix
from components.security.network_policies import GIT_SYNC_PRIVATE_PREFIX, NEVER_A_GIT_HOST, NON_PUBLIC_RANGES
from components.security.settings import SecuritySettings
from components.storage.settings import StorageSettings

__all__ = ["Settings", "SettingsError", "load_settings", "pulumi_yaml_config", "settings_reference_markdown"]

# The areas, in the order the settings reference lists them (the platform's shape first).
AREAS: tuple[type[PlatformSettings], ...] = (
    PlatformSettings, ClusterSettings, NodeSettings, SecuritySettings, StorageSettings, DatabaseSettings,
    BrokerSettings, AirflowSettings, ObservabilitySettings, DeliverySettings)

Area = TypeVar("Area", bound=PlatformSettings)


class Settings(ClusterSettings, NodeSettings, SecuritySettings, StorageSettings, DatabaseSettings, BrokerSettings,
               AirflowSettings, ObservabilitySettings, DeliverySettings):
    """Everything a stack can set. Config keys are the camelCase field names (`airflow:workerNodeMax`)."""

    def slice(self, area: type[Area]) -> Area:
        """This stack's settings of one area (with the platform's shape), as the component of that area takes them."""
        return cast(Area, area.model_construct(**{name: getattr(self, name) for name in area.model_fields}))

    @property
    def cluster(self) -> ClusterSettings:
        return self.slice(ClusterSettings)

    @property
    def nodes(self) -> NodeSettings:
        return self.slice(NodeSettings)

    @property
    def security(self) -> SecuritySettings:
        return self.slice(SecuritySettings)

    @property
    def storage(self) -> StorageSettings:
        return self.slice(StorageSettings)

    @property
    def database(self) -> DatabaseSettings:
        return self.slice(DatabaseSettings)

    @property
    def broker(self) -> BrokerSettings:
        return self.slice(BrokerSettings)

    @property
    def airflow(self) -> AirflowSettings:
        return self.slice(AirflowSettings)

    @property
    def observability(self) -> ObservabilitySettings:
        return self.slice(ObservabilitySettings)

    @property
    def delivery(self) -> DeliverySettings:
        return self.slice(DeliverySettings)

    @property
    def observed_stores(self) -> ObservedStores:
        """What Observability's alert thresholds take of the database's and the broker's settings."""
        return ObservedStores(postgres_instances=self.postgres_instances,
                              pgbouncer_max_client_connections=self.pgbouncer_max_client_connections,
                              redis_replicas=self.redis_replicas)


def _fields_in_reference_order() -> list[tuple[str, Any]]:
    """Every field once, area by area (the platform's shape first)."""
    seen: dict[str, Any] = {}
    for area in AREAS:
        for name, field in area.model_fields.items():
            seen.setdefault(name, field)
    return list(seen.items())


def _standard_support_problems(settings: Settings) -> list[tuple[str, str]]:
    """EKS upgrades a control plane whose version left standard support by itself (upgrade policy STANDARD); the
    stack's version is then a downgrade it refuses. A version the calendar does not list yet passes."""
    ends, day = EKS_STANDARD_SUPPORT_ENDS.get(settings.kubernetes_version), today()
    if not settings.is_aws or ends is None or day <= ends:
        return []
    newer = [version for version, end in EKS_STANDARD_SUPPORT_ENDS.items() if end >= day]
    supported = ", ".join(newer) if newer else "none listed: add the next version's date to EKS_STANDARD_SUPPORT_ENDS"
    return [("kubernetesVersion", f"{settings.kubernetes_version} left EKS's standard support on {ends.isoformat()}: "
             "with the cluster's upgrade policy (STANDARD) EKS upgrades the control plane by itself, after which "
             f"{settings.kubernetes_version} is a downgrade it refuses. Run `pulumi refresh` to read the version "
             "the cluster runs now, set kubernetesVersion to it, then raise it one minor version per `up` to one "
             f"in standard support ({supported})")]


def _git_sync_problems(settings: Settings) -> list[tuple[str, str]]:
    """The policies let git-sync out on 443 only, to gitSyncEgressCidrs or else the public internet (IPv4): a URL
    they would cut off fails here rather than as pods stuck in Init, and the setting cannot reopen the VPC."""
    if not settings.git_sync_repository:
        return [("gitSyncEgressCidrs", "is used only with gitSyncRepository: set both, or neither")] \
            if settings.git_sync_egress_cidrs else []
    problems = _git_sync_cidr_problems(settings)
    url = urllib.parse.urlsplit(settings.git_sync_repository)
    try:
        port = url.port
    except ValueError:
        port = -1
    if not url.hostname:
        return problems + [("gitSyncRepository", f"{settings.git_sync_repository!r} names no host: give "
                                                 "https://<host>/<path>")]
    if port not in (None, 443):
        return problems + [("gitSyncRepository", f"{settings.git_sync_repository!r}: git-sync may use HTTPS on port "
                                                 "443 only (the NetworkPolicies admit no other port)")]
    try:
        address = ipaddress.ip_address(url.hostname)
    except ValueError:
        return problems
    if address.version == 6:
        return problems + [("gitSyncRepository", f"{address} is IPv6: the cluster's policies are IPv4 only; give an "
                                                 "IPv4 address or a host name")]
    allowed = settings.git_sync_egress_cidrs or None
    if allowed is not None and not any(address in network for network in allowed):
        problems.append(("gitSyncRepository", f"{address} is outside gitSyncEgressCidrs ({', '.join(map(str, allowed))})"))
    elif allowed is None and any(address in ipaddress.IPv4Network(cidr) for cidr in NON_PUBLIC_RANGES):
        problems.append(("gitSyncRepository", f"{address} is not a public address, and git-sync may reach only the "
                                              "public internet: set gitSyncEgressCidrs to the git host's address"))
    return problems


def _git_sync_cidr_problems(settings: Settings) -> list[tuple[str, str]]:
    inside = [ipaddress.IPv4Network(cidr) for cidr in NON_PUBLIC_RANGES if cidr not in NEVER_A_GIT_HOST]
    if settings.is_aws:
        inside.append(settings.vpc_cidr)
    problems = []
    for network in settings.git_sync_egress_cidrs:
        if any(network.overlaps(ipaddress.IPv4Network(cidr)) for cidr in NEVER_A_GIT_HOST):
            problems.append(("gitSyncEgressCidrs", f"{network} reaches loopback, link-local (the metadata service), "
                                                   "multicast or reserved addresses: name the git host's network"))
        elif network.prefixlen < GIT_SYNC_PRIVATE_PREFIX and any(network.overlaps(cidr) for cidr in inside):
            problems.append(("gitSyncEgressCidrs", f"{network} reaches into private addresses or the VPC "
                                                   f"({settings.vpc_cidr}) wider than /{GIT_SYNC_PRIVATE_PREFIX}: "
                                                   "there name the git host's own addresses (/28 or narrower), "
                                                   "not the network that holds the cluster's API and stores"))
    return problems


def _github_problems(settings: Settings) -> list[tuple[str, str]]:
    if not settings.github_repository:
        return [("githubConnectionArn", "is used only with githubRepository: set both, or neither")] \
            if settings.github_connection_arn else []
    if not settings.is_aws:
        return [("githubRepository", "needs target 'aws': its roles and runners are AWS resources")]
    if not settings.github_connection_arn:
        return [("githubConnectionArn", "is required with githubRepository: create a connection to GitHub in "
                                        f"region {settings.region or '<region>'} (docs/delivery.md) and set its ARN")]
    region = settings.github_connection_arn.split(":")[3]
    if region != settings.region:
        return [("githubConnectionArn", f"is in {region}, the stack in {settings.region}: CodeBuild uses a "
                                        "connection of its own region")]
    return []


def _cross_field_problems(settings: Settings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = [*_standard_support_problems(settings)]
    if settings.is_aws and not settings.region:
        problems.append(("region", "is required when target is 'aws' (for example eu-west-1)"))
    if settings.is_aws and not settings.ingress_host:
        problems.append(("ingressHost", "is required when target is 'aws' (the host name users open, e.g. airflow.example.com)"))
    if settings.is_aws and not settings.route53_zone_id:
        problems.append(("route53ZoneId", "is required when target is 'aws' (the zone of ingressHost: it holds the "
                                          "alias record and validates the certificate unless certificateArn is set)"))
    if settings.postgres_restore_target_time:
        if not settings.is_aws:
            problems.append(("postgresRestoreTargetTime", "needs target 'aws': only AWS stacks keep backups"))
        if settings.postgres_restore_from_server_name == settings.postgres_backup_server_name:
            problems.append((
                "postgresBackupServerName",
                f"must differ from postgresRestoreFromServerName ('{settings.postgres_restore_from_server_name}') "
                "while restoring: a restored cluster starts a new timeline and may not archive over the "
                "backups it came from (for example 'airflow-db-r1')"))
    if settings.is_aws and settings.service_cidr.overlaps(settings.vpc_cidr):
        problems.append(("kubernetesServiceCidr", f"must not overlap vpcCidr ({settings.vpc_cidr}), got "
                                                  f"{settings.service_cidr} (for example 10.100.0.0/16)"))
    for zone in settings.availability_zones:
        if settings.region and not zone.startswith(settings.region):
            problems.append(("availabilityZones", f"{zone!r} is not a zone of region {settings.region}"))
    beyond_c = [zone for zone in settings.availability_zones if zone[-1] > "c"] or \
        ([f"{settings.zone_count} zones"] if not settings.availability_zones and settings.zone_count > 3 else [])
    if settings.is_aws and beyond_c and settings.vpc_cidr.prefixlen > 19:
        problems.append(("vpcCidr", f"must be a /19 or larger for {', '.join(beyond_c)}: zones d-f get the small "
                                    f"subnets of the layout and a load balancer needs a /27; got {settings.vpc_cidr}"))
    if settings.is_aws and not settings.grafana_host:
        problems.append(("grafanaHost", "is required when target is 'aws' (the host name of Grafana, in "
                                        "route53ZoneId, e.g. grafana.example.com)"))
    if settings.grafana_host and settings.grafana_host == settings.ingress_host:
        problems.append(("grafanaHost", f"must differ from ingressHost ({settings.ingress_host}): both are "
                                        "served by the same load balancer, by host name"))
    email = [settings.alert_email_to, settings.alert_email_from, settings.alert_smtp_smarthost]
    if any(email) and not all(email):
        problems.append(("alertEmailTo", "alertEmailTo, alertEmailFrom and alertSmtpSmarthost go together: set "
                                         "all three for e-mail alerts, or none"))
    for key, engine, managed in (("databaseEngine", settings.database_engine, settings.managed_database),
                                 ("brokerEngine", settings.broker_engine, settings.managed_broker),
                                 ("secretsBackend", settings.secrets_backend,
                                  settings.secrets_backend == "aws-secrets-manager")):
        if managed and not settings.is_aws:
            problems.append((key, f"'{engine}' needs target 'aws'; a local stack runs the in-cluster engines "
                                  "(cloudnative-pg, redis-ha) and keeps connections in the metadata database"))
    if settings.database_engine == "rds" and settings.database_max_storage_gib < settings.database_storage_gib:
        problems.append(("databaseMaxStorageGib", f"must be at least databaseStorageGib "
                                                  f"({settings.database_storage_gib}), got {settings.database_max_storage_gib}"))
    retention = settings.database_performance_insights_retention_days
    if retention != 7 and retention % 31:
        problems.append(("databasePerformanceInsightsRetentionDays",
                         f"must be 7 or a multiple of 31 (31, 62, ... 731), got {retention}"))
    if settings.managed_broker:
        oldest = {"valkey": (7, 2), "redis": (7, 0)}[settings.elasticache_engine]
        if tuple(int(part) for part in settings.elasticache_engine_version.split(".")) < oldest:
            problems.append(("elasticacheEngineVersion",
                             f"{settings.elasticache_engine} {settings.elasticache_engine_version} is too old: valkey "
                             "7.2 or newer, redis 7.0 or newer (AUTH with in-transit encryption, Multi-AZ failover)"))
    if settings.database_engine == "cloudnative-pg":
        pooled = settings.pgbouncer_instances * settings.pgbouncer_pool_size * w.POOLED_DATABASE_ROLES
        left = settings.postgres_max_connections - settings.database.reserved_connections
        if pooled > left:
            problems.append(("pgbouncerPoolSize", f"pgbouncerInstances ({settings.pgbouncer_instances}) × pgbouncerPoolSize "
                                                  f"({settings.pgbouncer_pool_size}) × {w.POOLED_DATABASE_ROLES} roles = {pooled} "
                                                  "server connections (each PgBouncer pod pools its own, one pool per "
                                                  f"role: Airflow's and its workers') exceed the {left} that "
                                                  f"postgresMaxConnections ({settings.postgres_max_connections}) leaves "
                                                  "beside superusers, the operator, KEDA and the poolers' auth_query: lower "
                                                  "one, or raise postgresMaxConnections"))
    problems.extend(_github_problems(settings))
    problems.extend(_git_sync_problems(settings))
    if settings.elasticache_auth_token_set_generation == 1:
        problems.append(("elasticacheAuthTokenSetGeneration", "1 names the token the group was created with: there "
                                                              "is no older one to drop (0, or a raised generation)"))
    if settings.managed_broker and settings.broker_password_generation > \
            max(settings.elasticache_auth_token_set_generation, 1) + 1:
        problems.append(("brokerPasswordGeneration",
                         f"{settings.broker_password_generation} is more than one past the token ElastiCache uses "
                         f"alone (elasticacheAuthTokenSetGeneration {settings.elasticache_auth_token_set_generation}): "
                         "ElastiCache holds two tokens at most; complete the rotation first (set "
                         "elasticacheAuthTokenSetGeneration to the previous generation)"))
    if settings.elasticache_auth_token_set_generation > settings.broker_password_generation:
        problems.append(("elasticacheAuthTokenSetGeneration",
                         f"must not exceed brokerPasswordGeneration ({settings.broker_password_generation}), got "
                         f"{settings.elasticache_auth_token_set_generation}: it names a token that exists"))
    if settings.worker_min_replicas > settings.worker_max_replicas:
        problems.append(("workerMinReplicas", f"must not exceed workerMaxReplicas ({settings.worker_max_replicas}), "
                                              f"got {settings.worker_min_replicas}"))
    if settings.is_aws and not settings.karpenter and not settings.has_worker_node_group:
        problems.append(("workerNodeGroup", "is off and so is karpenter: Celery workers would have no node to run "
                                            "on; turn one of them on"))
    if settings.uses_karpenter:
        problems.extend(worker_capacity_problems(settings.nodes, WorkerShape(
            settings.worker_cpu, settings.worker_memory, settings.worker_max_replicas, bool(settings.git_sync_repository))))
        if settings.cluster_name and len(settings.cluster_name) > 70:
            problems.append(("clusterName", "must be at most 70 characters with Karpenter (its interruption queue "
                                            "is named <clusterName>-karpenter, and SQS allows 80)"))
    if not settings.worker_node_min <= settings.worker_node_desired <= settings.worker_node_max:
        problems.append((
            "workerNodeDesired",
            f"must lie between workerNodeMin ({settings.worker_node_min}) and workerNodeMax "
            f"({settings.worker_node_max}), got {settings.worker_node_desired}"))
    return problems


SECRET_SETTINGS = tuple(field.alias or name for name, field in Settings.model_fields.items()
                        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret"))


def _plain_text_secrets(raw: dict[str, str]) -> list[str]:
    """Secret settings given without `--secret`: they would sit in plain text in the stack file."""
    return [f"{PROJECT_NAMESPACE}:{key}: must be set with `pulumi config set --secret {PROJECT_NAMESPACE}:{key}`, "
            "not in plain text" for key in SECRET_SETTINGS
            if raw.get(key) and not pulumi.runtime.is_config_secret(f"{PROJECT_NAMESPACE}:{key}")]


def _project_config() -> dict[str, str]:
    """Every config value of the project's namespace, keyed without the namespace.

    The language host hands config to the program either explicitly (`set_all_config`) or through the
    PULUMI_CONFIG environment variable; both are read so an unknown key cannot hide in either.
    """
    merged = {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    prefix = f"{PROJECT_NAMESPACE}:"
    return {key[len(prefix):]: value for key, value in merged.items() if key.startswith(prefix)}


def _parse_value(raw: Any) -> Any:
    # Pulumi hands structured values (lists, objects) to the program as JSON text.
    if isinstance(raw, str) and raw[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _describe_error(error: dict[str, Any]) -> tuple[str, str]:
    loc = error["loc"]
    key = str(loc[0])
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    allowed = ""
    field = next((f for f in Settings.model_fields.values() if f.alias == key), None)
    if field is not None and field.description:
        allowed = f" ({field.description})"
    return key, f"{where}: {message}; got {error.get('input')!r}{allowed}" if where else \
        f": {message}; got {error.get('input')!r}{allowed}"


# S3 bucket prefixes (`<prefix>-backups-`) may have 37 characters at most, lower case.
_AWS_NAME_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,27}$")


def _name_prefix_problems(settings: Settings, project: str, stack: str) -> list[str]:
    prefix = aws_name_prefix(project, stack)
    if settings.is_aws and not _AWS_NAME_PREFIX.match(prefix):
        return [f"project {project!r} and stack {stack!r}: target 'aws' names buckets, the backup vault and plan "
                f"and KMS aliases '{prefix}': use lower-case letters, digits and '-', at most 28 characters for "
                "both with the '-' between them (for example project 'airflow' and stack 'prod-eu')"]
    return []


def load_settings(raw_config: Optional[dict[str, str]] = None, stack: Optional[str] = None,
                  project: str = PROJECT_NAMESPACE) -> Settings:
    """Read and validate the stack's settings; raise SettingsError naming every bad key. `stack` and `project`
    default to the running stack's when the config is the running stack's."""
    raw = _project_config() if raw_config is None else raw_config
    known = {field.alias or name for name, field in Settings.model_fields.items()}
    problems: list[str] = _plain_text_secrets(raw) if raw_config is None else []
    for key in sorted(set(raw) - known):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean '{PROJECT_NAMESPACE}:{close[0]}'?" if close else ""
        problems.append(f"{PROJECT_NAMESPACE}:{key}: unknown setting{hint}")
    settings: Optional[Settings] = None
    try:
        settings = Settings.model_validate({k: _parse_value(v) for k, v in raw.items() if k in known})
    except ValidationError as exc:
        for error in exc.errors():
            key, text = _describe_error(dict(error))
            problems.append(f"{PROJECT_NAMESPACE}:{key}{text}")
    if settings is not None:
        problems.extend(f"{PROJECT_NAMESPACE}:{key}: {text}" for key, text in _cross_field_problems(settings))
        if raw_config is None:
            stack, project = stack or pulumi.get_stack(), pulumi.get_project()
        if stack is not None:
            problems.extend(_name_prefix_problems(settings, project, stack))
    if problems:
        raise SettingsError("invalid stack settings:\n  - " + "\n  - ".join(problems))
    assert settings is not None
    return settings


def settings_reference_markdown() -> str:
    """The settings table docs/settings.md carries (`python -m components.config`)."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for _, field in _fields_in_reference_order():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, ipaddress.IPv4Network):
            default = str(default)
        rows.append(f"| `{PROJECT_NAMESPACE}:{field.alias}` | `{json.dumps(default)}` | {field.description} |")
    return "\n".join(rows)


# Project config in Pulumi.yaml can declare only these types; map-valued settings are documented in docs/settings.md.
_PULUMI_YAML_TYPES = {bool: "boolean", int: "integer", str: "string", list: "array"}


def pulumi_yaml_config() -> dict[str, dict]:
    """The `config:` block of Pulumi.yaml: every setting Pulumi can declare, with its type, default and
    description (`python -m components.config --pulumi-yaml`)."""
    block: dict[str, dict] = {}
    for name, field in _fields_in_reference_order():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, ipaddress.IPv4Network):
            default = str(default)
        if isinstance(default, dict) or name == "worker_node_taints" or field.alias in SECRET_SETTINGS:
            continue
        entry: dict = {"type": _PULUMI_YAML_TYPES[type(default)]}
        if isinstance(default, list):
            entry["items"] = {"type": "string"}
        entry.update(default=default, description=field.description)
        block[field.alias] = entry
    return block


if __name__ == "__main__":
    import sys

    if "--pulumi-yaml" in sys.argv:
        print(json.dumps(pulumi_yaml_config(), indent=2))
    else:
        print(settings_reference_markdown())
