"""End-to-end tier (`make e2e`): Airflow reads connections and variables from AWS Secrets Manager through the
amazon provider's SecretsManagerBackend, configured with the `config.secrets` section the program puts into the
Airflow release of the `prod-managed` stack (`secretsBackend: aws-secrets-manager`), under the prefix it sets.

The Secrets Manager is moto (requirements/e2e.in) in server mode, on a free loopback port. Why it can stand in
for the service here: SecretsManagerBackend makes one call, `GetSecretValue(SecretId=<prefix>/<kind>/<id>)`,
through a boto3 client, and reads `SecretString` or catches the client's modelled errors, a missing secret being
`ResourceNotFoundException`. moto's Secrets Manager implements that operation on the same JSON protocol
(`X-Amz-Target: secretsmanager.GetSecretValue`), stores secrets per region by name, and answers a name it does
not hold with the error code `ResourceNotFoundException` (HTTP 404 where AWS says 400; botocore picks the
exception class from the code in the body, not the status, so the backend's `except` takes it the same way).
The client is the real one: botocore points it at moto through `AWS_ENDPOINT_URL_SECRETS_MANAGER` (the service
id is "Secrets Manager"; `..._SECRETSMANAGER` is ignored by botocore), and signs with fake static keys, the
region in the signature being the backend's `region_name`. moto's request recorder (MOTO_ENABLE_RECORDING) logs
every request Airflow sends, so the tests read which names were looked up, not only what came back. moto does
not enforce IAM; instead the program's own policy for the pods' role is matched against the ARNs moto gave the
secrets (moto runs as the mocks' account; its ARNs have Secrets Manager's form: name, `-`, six characters).

Airflow runs its real CLI from its own virtualenv (AIRFLOW_BIN) with no metadata database set up: the custom
secrets backend is asked first, so a connection that comes back can only have come from Secrets Manager.
"""

from __future__ import annotations

import base64
import configparser
import fnmatch
import json
import os
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from mock_engine import FAKE_ACCOUNT, REPO, ProgramRun, Registration, run_program
from support.rendering import RELEASE, render_release
from support.servers import free_port, wait_for_port

pytestmark = pytest.mark.e2e

STACK = "prod-managed"
AIRFLOW_RELEASE = "airflow-airflow"
SECRETS_MANAGER_BACKEND = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
# SecretsManagerBackend's own defaults: where it would look if the program's backend_kwargs did not reach it.
DEFAULT_CONNECTIONS_PREFIX = "airflow/connections"
DEFAULT_VARIABLES_PREFIX = "airflow/variables"
# Another stack's secrets in the same account and region.
OTHER_STACK_PREFIX = "airflow/other-stack"

# A connection as docs/managed-backends.md documents it: one JSON object with Airflow's field names.
WAREHOUSE = {"conn_type": "postgres", "host": "warehouse.example.internal", "login": "etl",
             "password": "p@ss:w/rd?#%&=+ with space", "port": 5432, "schema": "analytics"}
# The same kind of connection as one URI (percent-encoded, the extra as the query).
REPORTING_PASSWORD = "r3p@rt/ing:%"
REPORTING_URI = (f"postgres://reporter:{quote(REPORTING_PASSWORD, safe='')}@reporting.example.internal:6432/reports"
                 "?sslmode=verify-full")
VARIABLE_KEY, VARIABLE_VALUE = "environment_name", "production-managed"
DECOY_CONN_ID = "shared_warehouse"

SEED = """
import json, sys
import boto3
spec = json.load(sys.stdin)
client = boto3.client("secretsmanager", region_name=spec["region"], endpoint_url=spec["endpoint"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
for name, value in spec["secrets"].items():
    client.create_secret(Name=name, SecretString=value)
print(json.dumps({s["Name"]: s["ARN"] for s in client.list_secrets()["SecretList"]}))
"""


# --- The program's configuration ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def program() -> ProgramRun:
    """The program for the stack, under the mock engine."""
    if not (REPO / f"Pulumi.{STACK}.yaml").exists():
        pytest.fail(f"Pulumi.{STACK}.yaml does not exist: this tier reads the secrets backend's configuration "
                    f"from that stack's Airflow release (secretsBackend: aws-secrets-manager)")
    return run_program(STACK)


@pytest.fixture(scope="module")
def airflow_release(program) -> Registration:
    return program.one(RELEASE, AIRFLOW_RELEASE)


@pytest.fixture(scope="module")
def secrets_section(airflow_release) -> dict:
    """The release's `config.secrets`, exactly as the program produced it (nothing is filled in here)."""
    section = (airflow_release.values["values"].get("config") or {}).get("secrets")
    if not section:
        pytest.fail(f"the {STACK} stack's Airflow release has no config.secrets section: the program does not "
                    f"configure a secrets backend for it")
    assert section.get("backend") == SECRETS_MANAGER_BACKEND, section
    # The chart writes each config value into airflow.cfg through `tpl (toString)`: it has to be the JSON text
    # (a mapping would come out as Go's `map[...]`).
    assert isinstance(section.get("backend_kwargs"), str), section
    return section


@pytest.fixture(scope="module")
def kwargs(secrets_section) -> dict:
    parsed = json.loads(secrets_section["backend_kwargs"])
    for key in ("connections_prefix", "variables_prefix", "region_name"):
        assert parsed.get(key), f"backend_kwargs has no {key}: {parsed}"
    # The decoys below must lie outside the program's prefix for the test to mean anything.
    for decoy in (DEFAULT_CONNECTIONS_PREFIX, f"{OTHER_STACK_PREFIX}/connections"):
        assert parsed["connections_prefix"] != decoy
    assert parsed["variables_prefix"] != DEFAULT_VARIABLES_PREFIX
    return parsed


# --- The Secrets Manager stand-in -----------------------------------------------------------------------------

@dataclass
class Moto:
    url: str
    recording: Path
    arns: dict[str, str]       # secret name -> the ARN Secrets Manager gave it (name, `-`, six characters)

    def reset_recording(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/recorder/reset-recording", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def requests(self) -> list[dict]:
        """Every Secrets Manager request recorded since the last reset: operation, secret id, signing region."""
        found = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            headers = {name.lower(): value for name, value in entry["headers"].items()}
            body = base64.b64decode(entry["body"]) if entry["body_encoded"] else (entry["body"] or "")
            scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request", headers.get("authorization", ""))
            found.append({"operation": headers.get("x-amz-target", ""),
                          "secret_id": json.loads(body or "{}").get("SecretId"),
                          "region": scope and scope.group(1), "service": scope and scope.group(2)})
        return found


@pytest.fixture(scope="module")
def moto(airflow_bin, kwargs, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """moto's server on a free loopback port, with the secrets of this stack, of another stack, and at the
    backend's default prefixes; its recorder logs each request that follows."""
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    recording = workdir / "requests.jsonl"
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir)}
    with open(workdir / "moto.log", "w") as log:
        process = subprocess.Popen([str(airflow_bin.parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                   env={**env, "MOTO_ENABLE_RECORDING": "True",
                                        "MOTO_RECORDER_FILEPATH": str(recording),
                                        # The account the program's policies name (the mocks' caller identity).
                                        "MOTO_ACCOUNT_ID": FAKE_ACCOUNT},
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        server = Moto(url=f"http://127.0.0.1:{port}", recording=recording, arns={})
        connections, variables = kwargs["connections_prefix"], kwargs["variables_prefix"]
        secrets = {
            f"{connections}/warehouse": json.dumps(WAREHOUSE),
            f"{connections}/reporting": REPORTING_URI,
            f"{variables}/{VARIABLE_KEY}": VARIABLE_VALUE,
            # The decoys: the same ids outside the prefix.
            f"{OTHER_STACK_PREFIX}/connections/{DECOY_CONN_ID}": json.dumps({**WAREHOUSE, "host": "other-stack"}),
            f"{DEFAULT_CONNECTIONS_PREFIX}/{DECOY_CONN_ID}": json.dumps({**WAREHOUSE, "host": "default-prefix"}),
            f"{DEFAULT_CONNECTIONS_PREFIX}/warehouse": json.dumps({**WAREHOUSE, "host": "default-prefix"}),
            f"{DEFAULT_VARIABLES_PREFIX}/{VARIABLE_KEY}": "from-the-default-prefix",
        }
        seeded = subprocess.run([str(airflow_bin.parent / "python"), "-c", SEED], env=env, capture_output=True,
                                text=True, timeout=120, input=json.dumps(
                                    {"region": kwargs["region_name"], "endpoint": server.url, "secrets": secrets}))
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        server.arns = json.loads(seeded.stdout)
        assert sorted(server.arns) == sorted(secrets)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- Airflow ---------------------------------------------------------------------------------------------------

def airflow_env(home: Path, moto: Moto, secrets: dict | None) -> dict[str, str]:
    """Airflow's CLI with the `[secrets]` options as environment variables (None: they come from airflow.cfg),
    fake static AWS keys, no region but the backend's own, and Secrets Manager's endpoint at moto."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto.url,
    }
    for option, value in (secrets or {}).items():
        env[f"AIRFLOW__SECRETS__{option.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@pytest.fixture(scope="module")
def lookups(airflow_bin, moto):  # noqa: F811
    """Runs one Airflow CLI command: its result, and the Secrets Manager requests it made."""
    def run(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        moto.reset_recording()
        result = subprocess.run([str(airflow_bin), *args], env=env, capture_output=True, text=True, timeout=300)
        return result, moto.requests()
    return run


def expected_requests(kwargs: dict, *secret_ids: str) -> list[dict]:
    return [{"operation": "secretsmanager.GetSecretValue", "secret_id": secret_id, "region": kwargs["region_name"],
             "service": "secretsmanager"} for secret_id in secret_ids]


def connection_fields(stdout: str) -> dict:
    [connection] = json.loads(stdout)
    return connection


@pytest.fixture()
def env(tmp_path, moto, secrets_section) -> dict[str, str]:
    return airflow_env(tmp_path / "airflow-home", moto, secrets_section)


def test_a_connection_stored_as_json_comes_back_field_by_field(lookups, kwargs, env):
    result, requests = lookups(env, "connections", "get", "warehouse", "--output", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    connection = connection_fields(result.stdout)
    # The CLI prints every set field as text.
    assert {field: connection[field] for field in WAREHOUSE} == {k: str(v) for k, v in WAREHOUSE.items()}
    assert connection["extra_dejson"] == {}
    assert requests == expected_requests(kwargs, f"{kwargs['connections_prefix']}/warehouse")


def test_a_connection_stored_as_a_uri_comes_back(lookups, kwargs, env):
    result, requests = lookups(env, "connections", "get", "reporting", "--output", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    connection = connection_fields(result.stdout)
    assert {field: connection[field] for field in WAREHOUSE} == {
        "conn_type": "postgres", "host": "reporting.example.internal", "login": "reporter",
        "password": REPORTING_PASSWORD, "port": "6432", "schema": "reports"}
    assert connection["extra_dejson"] == {"sslmode": "verify-full"}
    assert requests == expected_requests(kwargs, f"{kwargs['connections_prefix']}/reporting")


def test_a_variable_comes_from_the_programs_prefix(lookups, kwargs, env):
    result, requests = lookups(env, "variables", "get", VARIABLE_KEY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == VARIABLE_VALUE  # not the value at the backend's default prefix
    assert requests == expected_requests(kwargs, f"{kwargs['variables_prefix']}/{VARIABLE_KEY}")


def test_a_connection_outside_the_prefix_is_not_found(lookups, kwargs, env):
    """`shared_warehouse` exists under another stack's prefix and under the backend's default prefix, not under
    the program's: Airflow asks for the program's name only, Secrets Manager has nothing there."""
    result, requests = lookups(env, "connections", "get", DECOY_CONN_ID, "--output", "json")
    assert result.returncode != 0
    assert "Connection not found." in result.stderr + result.stdout
    assert requests == expected_requests(kwargs, f"{kwargs['connections_prefix']}/{DECOY_CONN_ID}")
    # A missing variable is the same: one lookup under the prefix, then not found.
    result, requests = lookups(env, "variables", "get", "not_a_variable")
    assert result.returncode != 0
    assert "does not exist" in result.stderr + result.stdout
    assert requests == expected_requests(kwargs, f"{kwargs['variables_prefix']}/not_a_variable")


def test_airflow_reads_the_backend_from_the_rendered_airflow_cfg(lookups, moto, kwargs, airflow_release, tmp_path):
    """What the pods really get: the `[secrets]` section of the airflow.cfg that Helm renders into the chart's
    ConfigMap from those values, given to Airflow as its config file (every other option at Airflow's default)."""
    documents = render_release(airflow_release)
    cfg = next(d for d in documents if d["kind"] == "ConfigMap" and "airflow.cfg" in (d.get("data") or {}))
    rendered_text = cfg["data"]["airflow.cfg"]
    rendered = configparser.ConfigParser(interpolation=None)
    rendered.read_string(rendered_text)
    assert rendered.get("secrets", "backend") == SECRETS_MANAGER_BACKEND
    assert json.loads(rendered.get("secrets", "backend_kwargs")) == kwargs

    lines = rendered_text.splitlines()
    start = lines.index("[secrets]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    home = tmp_path / "airflow-home"
    env = airflow_env(home, moto, secrets=None)
    (home / "airflow.cfg").write_text("\n".join(lines[start:end]) + "\n")
    env["AIRFLOW_CONFIG"] = str(home / "airflow.cfg")

    result, requests = lookups(env, "connections", "get", "warehouse", "--output", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert connection_fields(result.stdout)["host"] == WAREHOUSE["host"]
    assert requests == expected_requests(kwargs, f"{kwargs['connections_prefix']}/warehouse")


def test_the_pods_policy_reads_what_airflow_looks_up_and_nothing_around_it(program, moto, kwargs):
    """The same prefix on the other side: the program's IAM policy that reads secrets, on the role Pod Identity
    gives Airflow's worker, matches the ARNs Secrets Manager gave the secrets under the prefix Airflow looks up,
    and none of the decoys'."""
    policies = [policy for policy in program.of_type("aws:iam/rolePolicy:RolePolicy")
                if "secretsmanager:GetSecretValue" in policy.values["policy"]]
    assert policies, "no IAM policy of the program lets a role read a secret"
    # The role's id as the mocks give it (`<name>-id`), or its name.
    roles = {key: role for role in program.of_type("aws:iam/role:Role")
             for key in (f"{role.name}-id", role.state.get("name"))}
    for policy in policies:
        role_arn = roles[policy.values["role"]].state["arn"]
        service_accounts = {(a.values["namespace"], a.values["serviceAccount"])
                            for a in program.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                            if a.values["roleArn"] == role_arn}
        assert ("airflow", "airflow-worker") in service_accounts, (policy.name, service_accounts)

    statements = [statement for policy in policies for statement in json.loads(policy.values["policy"])["Statement"]
                  if "secretsmanager:GetSecretValue" in statement["Action"]]
    assert all(statement["Effect"] == "Allow" for statement in statements)
    patterns = [resource for statement in statements
                for resource in ([statement["Resource"]] if isinstance(statement["Resource"], str)
                                 else statement["Resource"])]

    def readable(name: str) -> bool:
        return any(fnmatch.fnmatchcase(moto.arns[name], pattern) for pattern in patterns)

    looked_up = {name for name in moto.arns if name.startswith((f"{kwargs['connections_prefix']}/",
                                                                 f"{kwargs['variables_prefix']}/"))}
    assert looked_up and all(readable(name) for name in looked_up), (patterns, looked_up)
    assert not [name for name in set(moto.arns) - looked_up if readable(name)], patterns
