"""The platform's rules, as plain functions over resources: no Pulumi import, so the tests, `python -m plan` and the
policy pack (`__main__.py`, through `pack.py`) all run the same code.

A resource rule takes one resource (its inputs) and yields messages. A stack rule takes every resource of
the stack (their outputs, as Pulumi hands them to stack policies) and yields (URN, message) pairs. Under the
policy pack, reading a value that `pulumi preview` cannot know yet raises inside pulumi-policy: a resource
rule is then skipped for that resource instead of reporting a false violation, and the bucket and database
stack rules skip the one bucket or database they cannot judge yet (stack rules run again at the end of
`pulumi up`, with every value known).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    urn: str
    props: Mapping[str, Any]
    protect: bool = False
    # Input name → URNs of the resources its value came from (how a bucket's policy names its bucket).
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    mandatory: bool
    scope: str                      # "resource" or "stack"
    check: Callable[..., Iterable]


RULES: list[Rule] = []


def resource_rule(name: str, description: str, mandatory: bool = True):
    def register(check: Callable[[Resource], Iterable[str]]):
        RULES.append(Rule(name, description, mandatory, "resource", check))
        return check
    return register


def stack_rule(name: str, description: str, mandatory: bool = True):
    def register(check: Callable[[list[Resource]], Iterable[tuple[str, str]]]):
        RULES.append(Rule(name, description, mandatory, "stack", check))
        return check
    return register


def get(props: Any, path: str, default: Any = None) -> Any:
    """`props` at a dotted path, or `default` where a key is missing or a value is not a mapping."""
    value = props
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


def as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def policy_document(value: Any) -> Mapping:
    """An IAM/S3 policy given as JSON text or as an object."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return value or {}


# ---------------------------------------------------------------------------------------------------------
# S3: every bucket encrypted with KMS, versioned, closed to the public, reachable over TLS only. In
# pulumi-aws 7 each of these is a resource of its own next to the bucket, so they are stack rules.

BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
# Errors that mean "this value is not known yet" (pack.py adds pulumi-policy's): a stack rule skips the one
# bucket (or database) it could not judge, not every one.
UNKNOWN_VALUE_ERRORS: tuple[type[Exception], ...] = ()


def _v2(type_: str) -> str:
    """`aws:s3/bucketVersioning:BucketVersioning` → `aws:s3/bucketVersioningV2:BucketVersioningV2`."""
    module, name = type_.rsplit(":", 1)
    return f"{module}V2:{name}V2"


class _Undecided(Exception):
    """A bucket cannot be judged yet: something that may configure it has a value preview cannot know."""

    def __init__(self, unknown: Exception):
        super().__init__(str(unknown))
        self.unknown = unknown


def _known(read: Callable[..., Any]) -> Any:
    """`read()`, or the unknown-value error itself when preview cannot know the value."""
    try:
        return read()
    except UNKNOWN_VALUE_ERRORS as unknown:
        return unknown


def _attached(resources: list[Resource], bucket: Resource, type_: str) -> tuple[list[Resource], Optional[Exception]]:
    """The resources of `type_` (or its V2) that configure `bucket` — their `bucket` input came from it, or
    (when Pulumi recorded no dependency, e.g. a name typed in) it names the bucket — and the first unknown
    value met on the way (a resource that may or may not configure it)."""
    names = {_known(lambda key=key: get(bucket.props, key)) for key in ("bucket", "id")}
    undecided = next((n for n in names if isinstance(n, Exception)), None)
    names = {n for n in names if isinstance(n, str)}
    found = []
    for r in resources:
        if r.type not in (type_, _v2(type_)):
            continue
        sources = r.property_dependencies.get("bucket")
        if sources:
            if bucket.urn in sources:
                found.append(r)
            continue
        name = _known(lambda r=r: r.props.get("bucket"))
        if isinstance(name, Exception):
            undecided = undecided or name
        elif name in names:
            found.append(r)
    return found, undecided


def _judge(problem: Optional[str], undecided: Optional[Exception]) -> Optional[str]:
    """A problem stands unless a resource that might have solved it could not be read yet."""
    if problem and undecided is not None:
        raise _Undecided(undecided)
    return problem


def _each(resources: list[Resource], types: Sequence[str], what: str, check: Callable[[Resource], Optional[str]]):
    """Every problem of the resources of `types` (buckets, databases); one a preview cannot judge yet is skipped,
    and once every other one is reported its unknown value is raised again, so pulumi-policy says the rule could
    not run in full."""
    skipped: Optional[Exception] = None
    for resource in (r for r in resources if r.type in types):
        try:
            problem = check(resource)
        except _Undecided as undecided:
            skipped = skipped or undecided.unknown
            continue
        except UNKNOWN_VALUE_ERRORS as unknown:
            skipped = skipped or unknown
            continue
        if problem:
            yield resource.urn, f"{what} {resource.name} {problem}"
    if skipped is not None:
        raise skipped


def _each_bucket(resources: list[Resource], check: Callable[[Resource], Optional[str]]):
    return _each(resources, BUCKET_TYPES, "bucket", check)


@stack_rule("s3-bucket-kms-encryption", "S3 buckets are encrypted with a KMS key by default.")
def s3_bucket_kms_encryption(resources: list[Resource]):
    def check(bucket: Resource) -> Optional[str]:
        configs, undecided = _attached(resources, bucket, "aws:s3/bucketServerSideEncryptionConfiguration:"
                                                          "BucketServerSideEncryptionConfiguration")
        rules = [rule for config in configs for rule in as_list(config.props.get("rules"))]
        if not any(get(rule, "applyServerSideEncryptionByDefault.sseAlgorithm") in ("aws:kms", "aws:kms:dsse")
                   and get(rule, "applyServerSideEncryptionByDefault.kmsMasterKeyId") for rule in rules):
            return _judge("has no default encryption with a KMS key (aws:kms)", undecided)
        return None
    return _each_bucket(resources, check)


@stack_rule("s3-bucket-versioning", "S3 buckets keep object versions.")
def s3_bucket_versioning(resources: list[Resource]):
    def check(bucket: Resource) -> Optional[str]:
        configs, undecided = _attached(resources, bucket, "aws:s3/bucketVersioning:BucketVersioning")
        if not any(get(c.props, "versioningConfiguration.status") == "Enabled" for c in configs):
            return _judge("has no versioning with status Enabled", undecided)
        return None
    return _each_bucket(resources, check)


PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


@stack_rule("s3-bucket-public-access-block", "S3 buckets block every kind of public access.")
def s3_bucket_public_access_block(resources: list[Resource]):
    def check(bucket: Resource) -> Optional[str]:
        blocks, undecided = _attached(resources, bucket, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        if not any(all(b.props.get(flag) is True for flag in PUBLIC_ACCESS_FLAGS) for b in blocks):
            return _judge(f"lacks a public access block with {', '.join(PUBLIC_ACCESS_FLAGS)}", undecided)
        return None
    return _each_bucket(resources, check)


def _denies_plain_http(statement: Mapping) -> bool:
    condition = get(statement, "Condition.Bool", {}) or {}
    return (statement.get("Effect") == "Deny"
            and "s3:*" in as_list(statement.get("Action"))
            and str(condition.get("aws:SecureTransport", "")).lower() == "false")


@stack_rule("s3-bucket-tls-only", "S3 buckets refuse requests that do not use TLS.")
def s3_bucket_tls_only(resources: list[Resource]):
    def check(bucket: Resource) -> Optional[str]:
        policies, undecided = _attached(resources, bucket, "aws:s3/bucketPolicy:BucketPolicy")
        statements = [s for p in policies for s in as_list(policy_document(p.props.get("policy")).get("Statement"))]
        if not any(_denies_plain_http(s) for s in statements):
            return _judge("has no policy denying s3:* when aws:SecureTransport is false", undecided)
        return None
    return _each_bucket(resources, check)


# ---------------------------------------------------------------------------------------------------------
# EKS

EKS_CLUSTER = "aws:eks/cluster:Cluster"
REQUIRED_LOG_TYPES = ("api", "audit", "authenticator")


@resource_rule("eks-secrets-encryption", "EKS encrypts Kubernetes Secrets with a KMS key.")
def eks_secrets_encryption(resource: Resource):
    if resource.type != EKS_CLUSTER:
        return
    configs = as_list(resource.props.get("encryptionConfig"))
    if not any("secrets" in as_list(get(c, "resources")) and get(c, "provider.keyArn") for c in configs):
        yield "encryptionConfig must cover `secrets` with a KMS key (provider.keyArn)"


@resource_rule("eks-api-authentication-mode", "EKS grants cluster access through access entries only.")
def eks_api_authentication_mode(resource: Resource):
    if resource.type == EKS_CLUSTER and get(resource.props, "accessConfig.authenticationMode") != "API":
        yield (f"accessConfig.authenticationMode is {get(resource.props, 'accessConfig.authenticationMode')!r}; "
               "must be 'API' (no aws-auth ConfigMap)")


@resource_rule("eks-control-plane-logs", "EKS sends its API, audit and authenticator logs to CloudWatch.")
def eks_control_plane_logs(resource: Resource):
    if resource.type != EKS_CLUSTER:
        return
    missing = [t for t in REQUIRED_LOG_TYPES if t not in as_list(resource.props.get("enabledClusterLogTypes"))]
    if missing:
        yield f"enabledClusterLogTypes lacks {', '.join(missing)}"


OPEN_TO_ALL = ("0.0.0.0/0", "::/0")


def _is_open(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


@resource_rule("eks-endpoint-not-public", "The EKS API endpoint is private or open to named CIDRs only.")
def eks_endpoint_not_public(resource: Resource):
    if resource.type != EKS_CLUSTER or get(resource.props, "vpcConfig.endpointPublicAccess") is False:
        return
    cidrs = as_list(get(resource.props, "vpcConfig.publicAccessCidrs"))
    if not cidrs:
        # What EKS applies when the endpoint is public and no CIDR is given.
        yield "vpcConfig.endpointPublicAccess is on without publicAccessCidrs, which EKS opens to 0.0.0.0/0"
    elif any(_is_open(c) for c in cidrs):
        yield f"vpcConfig.publicAccessCidrs opens the API endpoint to everyone: {cidrs}"


@resource_rule("launch-template-imdsv2", "Nodes require IMDSv2 (session tokens), through their launch template.")
def launch_template_imdsv2(resource: Resource):
    if resource.type == "aws:ec2/launchTemplate:LaunchTemplate":
        if get(resource.props, "metadataOptions.httpTokens") != "required":
            yield (f"metadataOptions.httpTokens is {get(resource.props, 'metadataOptions.httpTokens')!r}; "
                   "must be 'required'")
    elif resource.type == "aws:eks/nodeGroup:NodeGroup" and not get(resource.props, "launchTemplate"):
        yield "the node group has no launch template, so its nodes take the AMI's metadata defaults (IMDSv1 on)"


# ---------------------------------------------------------------------------------------------------------
# Helm

HELM_RELEASE_TYPES = ("kubernetes:helm.sh/v3:Release",)
# Each chart the platform may install, from the one repository it may come from.
ALLOWED_CHARTS = {
    "airflow": "https://airflow.apache.org",
    "aws-load-balancer-controller": "https://aws.github.io/eks-charts",
    "cert-manager": "https://charts.jetstack.io",
    "cloudnative-pg": "https://cloudnative-pg.github.io/charts",
    "plugin-barman-cloud": "https://cloudnative-pg.github.io/charts",
    "keda": "https://kedacore.github.io/charts",
    "kube-prometheus-stack": "https://prometheus-community.github.io/helm-charts",
    "redis-ha": "https://dandydeveloper.github.io/charts",
    "karpenter": "oci://public.ecr.aws/karpenter",
}
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


@resource_rule("helm-release-pinned", "Helm releases install an allowed chart, from its repository, at an exact "
                                      "version.")
def helm_release_pinned(resource: Resource):
    if resource.type not in HELM_RELEASE_TYPES:
        return
    chart, version = resource.props.get("chart"), resource.props.get("version")
    repo = get(resource.props, "repositoryOpts.repo")
    if isinstance(chart, str) and chart.startswith("oci://"):
        repo, chart = chart.rsplit("/", 1)
    if chart not in ALLOWED_CHARTS:
        yield f"chart {chart!r} is not in the allowed list ({', '.join(sorted(ALLOWED_CHARTS))})"
    elif repo != ALLOWED_CHARTS[chart]:
        yield f"chart {chart!r} must come from {ALLOWED_CHARTS[chart]}, not {repo!r}"
    if not isinstance(version, str) or not EXACT_VERSION.match(version):
        yield f"chart version {version!r} is not an exact version (x.y.z)"


def airflow_release_rule(name: str, description: str, mandatory: bool = True):
    """A resource rule over the values of the Airflow release (every other resource passes it)."""
    def register(check: Callable[[Mapping], Iterable[str]]):
        def on_resource(resource: Resource) -> Iterable[str]:
            if resource.type in HELM_RELEASE_TYPES and resource.props.get("chart") == "airflow":
                yield from check(resource.props.get("values") or {})
        return resource_rule(name, description, mandatory)(on_resource)
    return register


@airflow_release_rule("airflow-release-hardened", "The Airflow release runs without Helm hooks, behind "
                                                  "NetworkPolicies, as non-root with the RuntimeDefault seccomp profile.")
def airflow_release_hardened(values: Mapping):
    # Pulumi waits for a Release's resources; a hook Job would wait for pods that wait for it (DESIGN.md).
    for job in ("migrateDatabaseJob", "createUserJob"):
        if get(values, f"{job}.enabled", True) is not False and get(values, f"{job}.useHelmHooks") is not False:
            yield f"{job}.useHelmHooks must be false"
    if get(values, "networkPolicies.enabled") is not True:
        yield "networkPolicies.enabled must be true"
    pod = get(values, "securityContexts.pod", {}) or {}
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") == 0:
        yield "securityContexts.pod must set runAsNonRoot: true with a non-zero runAsUser"
    if get(pod, "seccompProfile.type") != "RuntimeDefault":
        yield "securityContexts.pod.seccompProfile.type must be RuntimeDefault"
    if get(values, "securityContexts.containers.allowPrivilegeEscalation") is not False:
        yield "securityContexts.containers.allowPrivilegeEscalation must be false"


# Chart keys that carry a credential as a value (chart 1.19); the platform passes Secret names instead.
AIRFLOW_CREDENTIAL_KEYS = (
    "fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey", "data.brokerUrl",
    "data.metadataConnection.pass", "data.resultBackendConnection.pass", "createUserJob.defaultUser.password",
    "webserver.defaultUser.password", "flower.password", "redis.password", "postgresql.auth.password",
    "postgresql.auth.postgresPassword", "registry.connection.pass", "elasticsearch.connection.pass",
    "opensearch.connection.pass",
)
# airflow.cfg options, and the environment variables that set them, which hold a credential.
CREDENTIAL_OPTION = re.compile(r"(fernet_key|secret_key|jwt_secret|password|sql_alchemy_conn|broker_url|"
                               r"result_backend)$", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


def _strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


@airflow_release_rule("airflow-release-no-secret-values", "The Airflow release's values hold Secret names, never "
                                                          "a credential.")
def airflow_release_no_secret_values(values: Mapping):
    for key in AIRFLOW_CREDENTIAL_KEYS:
        if get(values, key):
            yield f"{key} holds a credential; give the chart a Secret name instead"
    for section, options in (get(values, "config", {}) or {}).items():
        for option, value in (options or {}).items() if isinstance(options, Mapping) else ():
            if CREDENTIAL_OPTION.search(str(option)) and not str(option).endswith("_cmd") and value:
                yield f"config.{section}.{option} holds a credential; use a _cmd or _secret option"
    for path, value in _strings(values):
        if URL_WITH_PASSWORD.search(value):
            yield f"{path} is a URL with a password in it"
    for component in [None, *[k for k, v in values.items() if isinstance(v, Mapping)]]:
        scope = values if component is None else values[component]
        for key in ("env", "extraEnv"):
            for index, variable in enumerate(as_list(scope.get(key))):
                if isinstance(variable, Mapping) and CREDENTIAL_OPTION.search(str(variable.get("name", ""))) \
                        and variable.get("value"):
                    where = key if component is None else f"{component}.{key}"
                    yield f"{where}[{index}] ({variable['name']}) holds a credential as a literal value"


@airflow_release_rule("airflow-images-pinned-by-digest", "The Airflow release pulls its images by digest.",
                      mandatory=False)
def airflow_images_pinned_by_digest(values: Mapping):
    tags = {"defaultAirflowTag": values.get("defaultAirflowTag")}
    # The images of the parts that run: statsd unless turned off, git-sync when it syncs the DAGs.
    running = {"statsd": get(values, "statsd.enabled", True) is not False,
               "gitSync": get(values, "dags.gitSync.enabled") is True}
    tags.update({f"images.{name}.tag": get(image, "tag") for name, image in (values.get("images") or {}).items()
                 if isinstance(image, Mapping) and get(image, "tag") and running.get(name, True)})
    for key, tag in tags.items():
        if not tag or "@sha256:" not in str(tag):
            yield f"{key} ({tag!r}) has no digest: a re-pushed tag changes what runs (docs/operations.md: Pin images by digest)"


# ---------------------------------------------------------------------------------------------------------
# Protection of data

STATEFUL_TYPES = (
    *BUCKET_TYPES,
    "aws:efs/fileSystem:FileSystem",
    "aws:kms/key:Key",
    "aws:backup/vault:Vault",
    "aws:rds/cluster:Cluster",
    "aws:rds/instance:Instance",
    "aws:elasticache/replicationGroup:ReplicationGroup",
    "kubernetes:core/v1:PersistentVolumeClaim",
    "kubernetes:postgresql.cnpg.io/v1:Cluster",
)


@resource_rule("stateful-resources-protected", "Buckets, file systems, keys, vaults, databases and volumes are "
                                               "protected from deletion.")
def stateful_resources_protected(resource: Resource):
    if resource.type in STATEFUL_TYPES and not resource.protect:
        yield "holds data and is not protected (protect=True)"


# ---------------------------------------------------------------------------------------------------------
# Managed data stores (components/database/managed.py, components/broker/elasticache.py): Aurora or RDS PostgreSQL, ElastiCache.

RDS_INSTANCE = "aws:rds/instance:Instance"
AURORA_CLUSTER = "aws:rds/cluster:Cluster"
AURORA_INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
ELASTICACHE_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
MIN_BACKUP_RETENTION_DAYS = 7
# The input by which a database names its parameter group, and that group's type.
PARAMETER_GROUPS = {
    RDS_INSTANCE: ("parameterGroupName", "aws:rds/parameterGroup:ParameterGroup"),
    AURORA_CLUSTER: ("dbClusterParameterGroupName", "aws:rds/clusterParameterGroup:ClusterParameterGroup"),
}


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@resource_rule("managed-database-encrypted-and-private", "RDS and Aurora databases are encrypted with a customer "
                                                         "KMS key, have no public address and keep 7 days of "
                                                         "backups.")
def managed_database_encrypted_and_private(resource: Resource):
    if resource.type in (RDS_INSTANCE, AURORA_CLUSTER):
        if resource.props.get("storageEncrypted") is not True:
            yield f"storageEncrypted is {resource.props.get('storageEncrypted')!r}; must be true"
        key = resource.props.get("kmsKeyId")
        if not key:
            yield "kmsKeyId is not set, so storage would use the AWS-managed key (aws/rds); give it a customer KMS key"
        elif "alias/aws/" in str(key):
            yield f"kmsKeyId {key!r} is an AWS-managed key; give it a customer KMS key"
        retention = resource.props.get("backupRetentionPeriod")
        days = _number(retention)
        if days is None or days < MIN_BACKUP_RETENTION_DAYS:
            yield (f"backupRetentionPeriod is {retention!r}; automated backups must be kept for at least "
                   f"{MIN_BACKUP_RETENTION_DAYS} days")
    if resource.type in (RDS_INSTANCE, AURORA_INSTANCE):
        public = resource.props.get("publiclyAccessible")
        if public not in (None, False):
            yield f"publiclyAccessible is {public!r}; the database must have no public address"


def _parameter_groups(resources: list[Resource], type_: str, name: str) -> tuple[list[Resource], Optional[Exception]]:
    """The parameter groups of `type_` called `name` (RDS keeps names in lower case), and the first unknown name
    met on the way (a group that may be the one)."""
    found, undecided = [], None
    for group in (r for r in resources if r.type == type_):
        group_name = _known(lambda group=group: group.props.get("name"))
        if isinstance(group_name, Exception):
            undecided = undecided or group_name
        elif isinstance(group_name, str) and group_name.lower() == name.lower():
            found.append(group)
    return found, undecided


def _forces_ssl(group: Resource) -> bool:
    return any(str(get(p, "name", "")).lower() == "rds.force_ssl" and str(get(p, "value", "")).strip() in ("1", "1.0")
               for p in as_list(group.props.get("parameters")))


@stack_rule("managed-database-tls-only", "RDS and Aurora databases use a parameter group of the stack that sets "
                                         "rds.force_ssl to 1.")
def managed_database_tls_only(resources: list[Resource]):
    def check(database: Resource) -> Optional[str]:
        key, group_type = PARAMETER_GROUPS[database.type]
        # The group is found by the name the database gives; a name a preview cannot know skips this database.
        name = database.props.get(key)
        if not name:
            return f"names no parameter group ({key}): the engine's default applies, not the stack's rds.force_ssl=1"
        groups, undecided = _parameter_groups(resources, group_type, str(name))
        if not groups:
            return _judge(f"uses parameter group {name!r}, which is not in the stack, so nothing shows it sets "
                          "rds.force_ssl to 1", undecided)
        if not any(_forces_ssl(g) for g in groups):
            return f"uses parameter group {name!r}, which does not set rds.force_ssl to 1"
        return None
    return _each(resources, tuple(PARAMETER_GROUPS), "database", check)


CACHE_FLAGS = ("atRestEncryptionEnabled", "transitEncryptionEnabled", "automaticFailoverEnabled", "multiAzEnabled")


@resource_rule("managed-cache-encrypted", "ElastiCache replication groups are encrypted at rest, take TLS and "
                                          "authenticated clients only, and fail over across zones by themselves.")
def managed_cache_encrypted(resource: Resource):
    if resource.type != ELASTICACHE_GROUP:
        return
    for flag in CACHE_FLAGS:
        if resource.props.get(flag) is not True:
            yield f"{flag} is {resource.props.get(flag)!r}; must be true"
    if resource.props.get("transitEncryptionMode") != "required":
        yield (f"transitEncryptionMode is {resource.props.get('transitEncryptionMode')!r}; must be 'required' "
               "(otherwise clients may still connect without TLS)")
    # Last: a token still to be generated is unknown in a preview, which skips the rule for this group.
    if not as_list(resource.props.get("userGroupIds")) and not resource.props.get("authToken"):
        yield "has neither an authToken nor userGroupIds: any client that reaches it may use it"


# ---------------------------------------------------------------------------------------------------------
# Network and IAM

# The ports a load balancer may take from anywhere.
PUBLIC_PORTS = (80, 443)


def _open_ingress(rule: Mapping, cidr_keys: Sequence[str]) -> Optional[str]:
    cidrs = [c for key in cidr_keys for c in as_list(rule.get(key)) if _is_open(c)]
    if not cidrs:
        return None
    from_port, to_port = rule.get("fromPort"), rule.get("toPort")
    protocol = str(rule.get("protocol", rule.get("ipProtocol", ""))).lower()
    if protocol in ("tcp", "6") and from_port == to_port and from_port is not None and int(from_port) in PUBLIC_PORTS:
        return None
    return f"ingress from {', '.join(map(str, cidrs))} on {protocol or '?'} {from_port}-{to_port}"


@resource_rule("security-group-no-open-ingress", "Security groups admit 0.0.0.0/0 only on TCP 80/443 (load "
                                                 "balancers).")
def security_group_no_open_ingress(resource: Resource):
    if resource.type == "aws:ec2/securityGroup:SecurityGroup":
        for index, rule in enumerate(as_list(resource.props.get("ingress"))):
            problem = _open_ingress(rule, ("cidrBlocks", "ipv6CidrBlocks"))
            if problem:
                yield f"ingress[{index}]: {problem}"
    elif resource.type == "aws:ec2/securityGroupRule:SecurityGroupRule" and resource.props.get("type") == "ingress":
        problem = _open_ingress(resource.props, ("cidrBlocks", "ipv6CidrBlocks"))
        if problem:
            yield problem
    elif resource.type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        problem = _open_ingress(resource.props, ("cidrIpv4", "cidrIpv6"))
        if problem:
            yield problem


IAM_POLICY_INPUTS = {
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/policy:Policy": "policy",
    "aws:iam/userPolicy:UserPolicy": "policy",
    "aws:iam/groupPolicy:GroupPolicy": "policy",
}
ATTACHMENT_TYPES = ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:iam/policyAttachment:PolicyAttachment",
                    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
                    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment")


def _wildcard_statements(document: Mapping) -> Iterable[int]:
    for index, statement in enumerate(as_list(document.get("Statement"))):
        if statement.get("Effect") == "Allow" and "*" in as_list(statement.get("Action")) \
                and "*" in as_list(statement.get("Resource")):
            yield index


@resource_rule("iam-no-wildcard-admin", "IAM policies never allow every action on every resource.")
def iam_no_wildcard_admin(resource: Resource):
    documents = []
    if resource.type in IAM_POLICY_INPUTS:
        documents.append(resource.props.get(IAM_POLICY_INPUTS[resource.type]))
    elif resource.type == "aws:iam/role:Role":
        documents.extend(get(p, "policy") for p in as_list(resource.props.get("inlinePolicies")))
    arns = [resource.props.get("policyArn")] if resource.type in ATTACHMENT_TYPES else []
    if resource.type in ("aws:iam/role:Role", "aws:iam/rolePolicyAttachmentsExclusive:RolePolicyAttachmentsExclusive"):
        arns += as_list(resource.props.get("managedPolicyArns") or resource.props.get("policyArns"))
    if any(str(arn).endswith(":policy/AdministratorAccess") for arn in arns):
        yield "attaches AdministratorAccess"
    for document in documents:
        for index in _wildcard_statements(policy_document(document)):
            yield f"Statement[{index}] allows Action '*' on Resource '*'"


# ---------------------------------------------------------------------------------------------------------

def evaluate(resources: list[Resource], enforcement: Optional[Mapping[str, str]] = None) -> list[dict]:
    """Every violation of every rule over a whole stack (inputs stand for outputs, as before an update).
    `enforcement` overrides a rule's level ("mandatory", "advisory", "disabled"), as a pack config does."""
    levels = {rule.name: "mandatory" if rule.mandatory else "advisory" for rule in RULES}
    levels.update(enforcement or {})
    violations: list[dict] = []
    for rule in RULES:
        if levels[rule.name] == "disabled":
            continue
        if rule.scope == "resource":
            found = [(r.urn, message) for r in resources for message in rule.check(r)]
        else:
            found = list(rule.check(resources))
        violations.extend({"policy": rule.name, "enforcement": levels[rule.name], "urn": urn, "message": message}
                          for urn, message in found)
    return violations
