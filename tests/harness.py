"""Runs the whole Pulumi program (`__main__.py`) under Pulumi mocks and records what it registers.

The config is loaded the way the Pulumi CLI hands it to a program: project defaults from Pulumi.yaml,
then the stack file, every value a string (structured values as JSON). The program runs inside a
`Stack` exactly as the language host runs it, and every assertion happens after it has finished.
"""

from __future__ import annotations

import base64
import json
import random
import runpy
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import set_root_resource
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SCHEMAS = SHARED / "schemas"
PROJECT = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["name"]
STACKS = ("local", "staging", "prod", "prod-managed")

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key

# Invoke results for the data sources the program reads.
FAKE_ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1d"]
FAKE_ACCOUNT = "111122223333"
# S3's prefix list in eu-west-1, as `aws ec2 describe-managed-prefix-lists` lists it.
FAKE_S3_CIDRS = ["3.5.64.0/21", "3.5.72.0/23", "52.92.0.0/17", "52.218.0.0/17"]
# Who runs `pulumi up` unless a test says otherwise: the stacks' admin role (a first `up` from an admin machine).
DEPLOYER_ROLE = f"arn:aws:iam::{FAKE_ACCOUNT}:role/platform-admins"


def pulumi_config_value(value: Any) -> str:
    """How the Pulumi CLI passes a config value to a program: strings as-is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def load_stack_config(stack: str, root: Path = REPO, encrypted: Optional[list[str]] = None) -> dict[str, str]:
    """The config of `root`'s project and stack file. An encrypted value raises, unless `encrypted` is a list:
    then its key is appended there and the value left out (the caller supplies a stand-in)."""
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    namespace = project["name"]
    config: dict[str, str] = {}
    for key, spec in (project.get("config") or {}).items():
        full_key = key if ":" in key else f"{namespace}:{key}"
        if isinstance(spec, dict) and "default" in spec:
            config[full_key] = pulumi_config_value(spec["default"])
        elif isinstance(spec, dict) and "value" in spec:
            config[full_key] = pulumi_config_value(spec["value"])
    stack_file = root / f"Pulumi.{stack}.yaml"
    for key, value in (yaml.safe_load(stack_file.read_text()).get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            if encrypted is None:
                raise ValueError(f"{stack_file.name}: {key} is encrypted; tests pass secrets through `secret_config=`")
            encrypted.append(key)
            continue
        config[key] = pulumi_config_value(value)
    return config


def encrypted_stand_in(key: str) -> str:
    """A value of the right form for an encrypted setting (its `stand_in` in the settings model of the
    program on sys.path), so a stack file with `pulumi config set --secret` values runs without them."""
    try:
        from components.config import Settings
    except ImportError:   # a checkout from before the settings were split by area (plan.py --against)
        from components.settings import Settings  # type: ignore[no-redef]

    alias = key.split(":", 1)[-1]
    for name, spec in Settings.model_fields.items():
        if alias in (name, spec.alias):
            return str((spec.json_schema_extra or {}).get("stand_in", "stand-in"))
    return "stand-in"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    """The value with every secret marker removed (and a string asset as its text, so it can be searched)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, pulumi.StringAsset):
        return {"stringAsset": value.text}
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_strings(value: Any) -> Iterable[str]:
    """Every string in a value that is not under a secret marker."""
    if is_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from plain_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from plain_strings(v)


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    provider: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    inputs: dict[str, Any]          # as sent, secrets still marked
    protect: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    # The URNs of former identities this resource takes over (a new name, type or parent each changes the URN).
    alias_urns: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False

    @property
    def alias_names(self) -> list[str]:
        """The names of those former identities."""
        return [urn.rsplit("::", 1)[-1] for urn in self.alias_urns]

    @property
    def values(self) -> dict[str, Any]:
        """Inputs with secret markers removed."""
        return unwrap(self.inputs)

    def depends_on(self, other: "Registration") -> bool:
        return other.urn in self.dependencies


def fake_password(inputs: dict[str, Any], must_include: str = "", rng: Optional[random.Random] = None) -> str:
    """A password drawn like random.RandomPassword draws it: its length, classes and special set.

    Fresh on every run (or from a seed drawn at run time), so no credential is ever committed in a fixture.
    """
    rng = rng or secrets.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    special = inputs.get("overrideSpecial") if inputs.get("special", True) else ""
    if inputs.get("special", True) and special is None:
        special = "!@#$%&*()-_=+[]{}<>:?"
    chars = [rng.choice(string.ascii_lowercase) for _ in range(int(inputs.get("minLower", 0)))]
    chars += [rng.choice(string.ascii_uppercase) for _ in range(int(inputs.get("minUpper", 0)))]
    chars += [rng.choice(string.digits) for _ in range(int(inputs.get("minNumeric", 0)))]
    chars += [rng.choice(special) for _ in range(int(inputs.get("minSpecial", 0)))] if special else []
    pool = alphabet + (special or "")
    chars += list(must_include)
    chars += [rng.choice(pool) for _ in range(max(0, int(inputs["length"]) - len(chars)))]
    rng.shuffle(chars)
    return "".join(chars)


class PlatformMocks(pulumi_mocks.Mocks):
    """Returns, for each resource and invoke, the outputs the program reads.

    `password_characters` go into every generated password, so tests can prove that characters with a
    meaning in URLs survive the trip from the generator to a real server; `password_seed` (drawn at run
    time by the test) makes two runs generate the same passwords.
    """

    def __init__(self, password_characters: str = "", password_seed: Optional[int] = None,
                 deployer_arn: str = DEPLOYER_ROLE):
        super().__init__()
        self.invokes: list[tuple[str, dict]] = []
        self.password_characters = password_characters
        self.password_seed = password_seed
        self.deployer_arn = deployer_arn

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        inputs = unwrap(args.inputs)
        name = inputs.get("name") or args.name
        state = dict(inputs)
        state.setdefault("arn", f"arn:aws:mock:eu-west-1:{FAKE_ACCOUNT}:{args.typ.split(':')[-1].lower()}/{name}")
        if args.typ == "aws:eks/cluster:Cluster":
            state.update(
                endpoint=f"https://{name}.gr7.eu-west-1.eks.amazonaws.com",
                certificateAuthority={"data": "bW9jay1jYQ=="},
                vpcConfig={**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{name}"},
            )
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif args.typ == "aws:rds/cluster:Cluster":
            identifier = inputs["clusterIdentifier"]
            state.update(clusterResourceId=f"cluster-{identifier.upper()}",
                         endpoint=f"{identifier}.cluster-cmock0example.eu-west-1.rds.amazonaws.com",
                         readerEndpoint=f"{identifier}.cluster-ro-cmock0example.eu-west-1.rds.amazonaws.com")
        elif args.typ == "aws:rds/instance:Instance":
            state["address"] = f"{inputs['identifier']}.cmock0example.eu-west-1.rds.amazonaws.com"
            state["resourceId"] = f"db-{inputs['identifier'].upper()}"
        elif args.typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            state["primaryEndpointAddress"] = f"master.{inputs['replicationGroupId']}.mock0x.euw1.cache.amazonaws.com"
        elif args.typ == "aws:kms/key:Key":
            state["keyId"] = f"key-{args.name}"
        elif args.typ == "aws:iam/role:Role":
            # IAM's own ARN format: arn:<partition>:iam::<account>:role/<path><name>.
            state["name"] = name
            state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:role{inputs.get('path') or '/'}{name}"
        elif args.typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:oidc-provider/{inputs['url'].removeprefix('https://')}"
        elif args.typ == "aws:s3/bucket:Bucket":
            state["bucket"] = f"{inputs['bucketPrefix']}mock"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        elif args.typ == "aws:acm/certificate:Certificate":
            state["domainValidationOptions"] = [{
                "domainName": domain, "resourceRecordName": f"_x1.{domain}.",
                "resourceRecordType": "CNAME", "resourceRecordValue": f"_x2.{domain}.acm-validations.aws."}
                # ACM's options are a set: listed here in another order than the domains were given.
                for domain in reversed([inputs["domainName"], *(inputs.get("subjectAlternativeNames") or [])])]
        elif args.typ == "kubernetes:networking.k8s.io/v1:Ingress":
            state["status"] = {"loadBalancer": {"ingress": [
                {"hostname": f"k8s-airflow-{args.name}-1234567890.eu-west-1.elb.amazonaws.com"}]}}
        elif args.typ == "aws:route53/record:Record":
            state["fqdn"] = inputs["name"].rstrip(".")
        elif args.typ == "random:index/randomPassword:RandomPassword":
            rng = random.Random(f"{self.password_seed}-{args.name}") if self.password_seed is not None else None
            state["result"] = fake_password(inputs, self.password_characters, rng)
        elif args.typ == "random:index/randomId:RandomId":
            raw = random.Random(f"{self.password_seed}-{args.name}").randbytes(int(inputs["byteLength"]))
            state.update(hex=raw.hex(), b64Url=base64.urlsafe_b64encode(raw).decode().rstrip("="))
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = (random.Random(f"{self.password_seed}-{args.name}").randbytes(int(inputs["length"]))
                   if self.password_seed is not None else secrets.token_bytes(int(inputs["length"])))
            state.update(base64=base64.b64encode(raw).decode(), hex=raw.hex())
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": FAKE_ZONES, "zoneIds": [f"euw1-az{i}" for i in range(1, 5)], "id": "eu-west-1"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            session = self.deployer_arn.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/") + "/ci"
            return {"accountId": FAKE_ACCOUNT, "arn": session, "userId": "AROA:ci", "id": FAKE_ACCOUNT}
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            # The principal running `pulumi up` (a role session in CI): see DEPLOYER_ROLE.
            return {"arn": args.args["arn"], "issuerArn": self.deployer_arn, "issuerId": "AROA",
                    "issuerName": self.deployer_arn.rsplit("/", 1)[-1], "sessionName": "ci", "id": args.args["arn"]}
        if args.token == "aws:ec2/getPrefixList:getPrefixList":
            return {"name": args.args["name"], "prefixListId": "pl-6da54004", "cidrBlocks": FAKE_S3_CIDRS,
                    "id": "pl-6da54004"}
        if args.token == "aws:ec2/getVpcEndpointService:getVpcEndpointService":
            return {"serviceName": f"com.amazonaws.eu-west-1.{args.args['service']}", "id": "vpce-svc-s3",
                    "serviceType": args.args["serviceType"]}
        if args.token == "aws:lb/getHostedZoneId:getHostedZoneId":
            return {"id": "Z32O12XQLNTSW2"}
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            return {"version": f"v1.0.0-eksbuild.1-{args.args['addonName']}", "id": args.args["addonName"]}
        raise NotImplementedError(f"the mocks do not answer invoke {args.token}; add it to tests/harness.py")


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping parent, dependencies, provider and options of each registration."""

    def __init__(self, mocks: pulumi_mocks.Mocks):
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self.by_urn: dict[str, Registration] = {}
        self.stack_outputs: dict[str, Any] = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(Registration(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=request.custom,
                provider=request.provider,
                dependencies=list(request.dependencies),
                property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
                inputs=rpc.deserialize_properties(request.object),
                protect=request.protect,
                retain_on_delete=request.retainOnDelete,
                ignore_changes=list(request.ignoreChanges),
                state=self.resources[response.urn].state,
                alias_urns=self.alias_urns(request),
                replace_on_changes=list(request.replaceOnChanges),
                delete_before_replace=request.deleteBeforeReplace,
            ))
            self.by_urn[response.urn] = self.registrations[-1]
        return response

    def alias_urns(self, request) -> list[str]:
        """The URNs a registration's aliases stand for, built the way this monitor builds URNs: each alias
        spec (what it sets; the registration's own name, type and parent otherwise), each alias given as a
        URN, and — as the engine does — the registration's name under each of its parent's former URNs."""
        stack_urn = self.make_urn("", "pulumi:pulumi:Stack", f"{pulumi.get_project()}-{pulumi.get_stack()}")
        urns = []
        for alias in request.aliases:
            if alias.HasField("urn"):
                urns.append(alias.urn)
                continue
            spec = alias.spec
            parent = stack_urn if spec.noParent else (spec.parentUrn or request.parent)
            _, qualified, name = self.make_urn(parent, spec.type or request.type,
                                               spec.name or request.name).rsplit("::", 2)
            urns.append(f"urn:pulumi:{spec.stack or pulumi.get_stack()}::{spec.project or pulumi.get_project()}"
                        f"::{qualified}::{name}")
        urns.extend(request.aliasURNs)
        parent = self.by_urn.get(request.parent)
        if parent is not None:
            for parent_alias in parent.alias_urns:
                alias_name = parent_alias.rsplit("::", 1)[-1]
                if request.name.startswith(parent.name):
                    urns.append(self.make_urn(parent_alias, request.type,
                                              alias_name + request.name.removeprefix(parent.name)))
        return sorted(set(urns))

    def RegisterResourceOutputs(self, request):
        if request.urn.endswith(f"::pulumi:pulumi:Stack::{pulumi.get_project()}-{pulumi.get_stack()}"):
            self.stack_outputs = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)


@dataclass
class ProgramRun:
    stack: str
    registrations: list[Registration]
    outputs: dict[str, Any]        # stack outputs, secrets still marked
    seconds: float
    invokes: list[tuple[str, dict]] = field(default_factory=list)   # data-source calls: token, arguments

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def one(self, type_: str, name: Optional[str] = None) -> Registration:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def where(self, predicate: Callable[[Registration], bool]) -> list[Registration]:
        return [r for r in self.registrations if predicate(r)]

    def provider_of(self, registration: Registration) -> Registration:
        """The provider resource a registration uses (its reference is `<urn>::<id>`)."""
        urn = registration.provider.rsplit("::", 1)[0]
        return self.by_urn(urn)

    def ancestors(self, registration: Registration) -> list[Registration]:
        chain = []
        parent = registration.parent
        while parent and not parent.endswith(f"pulumi:pulumi:Stack::{PROJECT}-{self.stack}"):
            found = self.by_urn(parent)
            chain.append(found)
            parent = found.parent
        return chain

    def depends_transitively(self, registration: Registration, target: Registration) -> bool:
        """Whether `registration` waits for `target` through dependencies, parents' dependencies or providers."""
        seen: set[str] = set()
        stack = [registration]
        while stack:
            current = stack.pop()
            if current.urn in seen:
                continue
            seen.add(current.urn)
            edges = list(current.dependencies)
            for deps in current.property_dependencies.values():
                edges.extend(deps)
            if current.provider:
                edges.append(current.provider.rsplit("::", 1)[0])
            if current.parent:
                edges.append(current.parent)
            for urn in edges:
                if urn == target.urn:
                    return True
                found = next((r for r in self.registrations if r.urn == urn), None)
                if found is not None:
                    stack.append(found)
        return False


class ProgramFailed(Exception):
    def __init__(self, cause: BaseException, registrations: list[Registration]):
        super().__init__(str(cause))
        self.cause = cause
        self.registrations = registrations


def run_program(stack: str, overrides: Optional[dict[str, Any]] = None,
                secret_config: Optional[dict[str, str]] = None, password_characters: str = "",
                password_seed: Optional[int] = None, deployer_arn: str = DEPLOYER_ROLE,
                project: str = PROJECT, root: Path = REPO, preview: bool = False) -> ProgramRun:
    """Run `root`'s `__main__.py` for a stack file; `overrides` replace config keys (None deletes one);
    `project` is the project name Pulumi hands the program (the config keys stay in the `airflow` namespace);
    `preview` runs it as `pulumi preview` does.
    An encrypted value of the stack file runs as its setting's stand-in, as a secret (`secret_config` wins)."""
    encrypted: list[str] = []
    config = load_stack_config(stack, root, encrypted)
    secret_config = {**{key: encrypted_stand_in(key) for key in encrypted}, **(secret_config or {})}
    for key, value in (overrides or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            config.pop(full_key, None)
        else:
            config[full_key] = pulumi_config_value(value)
    secret_keys = []
    for key, value in (secret_config or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        config[full_key] = value
        secret_keys.append(full_key)

    mocks = PlatformMocks(password_characters, password_seed, deployer_arn)
    monitor = RecordingMonitor(mocks)
    set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(config, secret_keys)
    # set_mocks made a root Stack of its own; the program gets a fresh one, as under the language host.
    set_root_resource(None)

    started = time.perf_counter()
    try:
        _sync_await(run_in_stack(lambda: runpy.run_path(str(root / "__main__.py"), run_name="__main__")))
    except Exception as exc:  # noqa: BLE001 handed to the test with what was registered before it
        raise ProgramFailed(exc, monitor.registrations) from exc
    return ProgramRun(stack=stack, registrations=monitor.registrations, outputs=monitor.stack_outputs,
                      seconds=time.perf_counter() - started, invokes=mocks.invokes)
