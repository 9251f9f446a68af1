"""The Security component: namespaces, RBAC, NetworkPolicies as a flow matrix, secrets, TLS."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from components import workloads as w
from components.config import Settings
from mock_engine import SECRET_SIG, is_secret, plain_strings, run_program, unwrap
from mock_engine import SIG_KEY as SECRET_MARKER
from support.flows import policies_of
from support.netpol import Endpoint, Policy, allowed
from support.schemas import validate_against_json_schema

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SECRET = "kubernetes:core/v1:Secret"


# --- NetworkPolicies (the flow matrix over every pod is in test_network_flows.py) -----------------------
def test_default_deny_covers_both_directions(prod):
    deny = next(p for p in policies_of(prod) if p.name == "default-deny-all")
    assert deny.spec == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_evaluator_follows_kubernetes_semantics():
    a = Endpoint("a", "ns", "10.0.0.1", {"app": "a"})
    b = Endpoint("b", "ns", "10.0.0.2", {"app": "b"})
    assert allowed([], a, b, 80)
    deny = Policy("deny", "ns", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    assert not allowed([deny], a, b, 80)
    out = Policy("out", "ns", {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}],
                                           "ports": [{"port": 80, "protocol": "TCP"}]}]})
    into = Policy("in", "ns", {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]})
    assert not allowed([deny, out], a, b, 80)
    assert allowed([deny, out, into], a, b, 80)
    assert not allowed([deny, out, into], a, b, 81)
    assert not allowed([deny, out, into], a, b, 80, "UDP")
    assert not allowed([deny, out, into], b, a, 80)


# --- namespaces and RBAC --------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", ["local", "prod"])
def test_namespaces_enforce_pod_security(stack_runs, stack):
    namespaces = {r.values["metadata"]["name"]: r.values["metadata"]["labels"]
                  for r in stack_runs[stack].of_type("kubernetes:core/v1:Namespace")}
    assert namespaces[w.AIRFLOW_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces[w.CERT_MANAGER_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "restricted"
    # node-exporter needs host namespaces; restricted is still warned about and audited there.
    assert namespaces[w.MONITORING_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "privileged"
    for labels in namespaces.values():
        assert labels["pod-security.kubernetes.io/warn"] == "restricted"
        assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_operators_role_reads_and_never_touches_secrets(prod):
    role = prod.one("kubernetes:rbac.authorization.k8s.io/v1:Role", "security-operators-read-only").values
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
    binding = prod.one("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding", "security-operators-read-only").values
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                    "name": "airflow-operators"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    entry = prod.one("aws:eks/accessEntry:AccessEntry", "security-operator-role-airflow-operators").values
    assert entry["principalArn"] == "arn:aws:iam::111122223333:role/airflow-operators"
    assert entry["kubernetesGroups"] == ["airflow-operators"]
    associations = prod.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    assert all(a.values["principalArn"] != entry["principalArn"] for a in associations), \
        "operators get only what the Role grants"


def test_removing_or_reordering_operators_leaves_the_other_entries_alone():
    """An entry's name is its principal's, not its place in the list: removing the first operator or reordering
    them keeps the others' URNs (by position they would be replaced, and EKS refuses a second entry for a
    principal with 409). The name it had by position stays an alias, for the first `up` after the rename."""
    first, second = "arn:aws:iam::111122223333:role/on-call", "arn:aws:iam::111122223333:role/team/analysts"

    def entries(principals: list[str]) -> dict[str, object]:
        run = run_program("prod", overrides={"operatorPrincipalArns": principals})
        return {r.values["principalArn"]: r for r in run.of_type("aws:eks/accessEntry:AccessEntry")
                if r.values.get("kubernetesGroups") == ["airflow-operators"]}
    both, reordered, alone = entries([first, second]), entries([second, first]), entries([second])
    assert both[second].urn == reordered[second].urn == alone[second].urn
    assert both[first].urn == reordered[first].urn
    assert both[second].name == "security-operator-role-team-analysts"
    assert "security-operator-1" in both[second].alias_names and "security-operator-0" in alone[second].alias_names


@pytest.mark.parametrize(("principals", "message"), [
    (["arn:aws:iam::111122223333:role/team/analysts", "arn:aws:iam::111122223333:role/team-analysts"],
     r"'arn:aws:iam::111122223333:role/team/analysts' and 'arn:aws:iam::111122223333:role/team-analysts' "
     r"would name the same access entry \('role-team-analysts'\)"),
    (["arn:aws:iam::111122223333:role/on-call", "arn:aws:iam::111122223333:role/on-call"],
     "lists 'arn:aws:iam::111122223333:role/on-call' twice"),
])
def test_principals_whose_entries_would_share_a_name_are_refused(principals, message):
    from components.config import SettingsError, load_settings
    config = {"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com", "grafanaHost": "g.example.com",
              "route53ZoneId": "Z0123", "operatorPrincipalArns": principals}
    with pytest.raises(SettingsError, match=rf"airflow:operatorPrincipalArns: {message}"):
        load_settings(config)


# --- secrets --------------------------------------------------------------------------------------------
def secrets_by_name(run) -> dict[str, dict]:
    """The Secrets of the Airflow namespace by name."""
    return {r.values["metadata"]["name"]: r for r in run.of_type(SECRET)
            if r.values["metadata"]["namespace"] == w.AIRFLOW_NAMESPACE}


@pytest.mark.parametrize("stack", ["local", "prod"])
def test_secrets_carry_the_names_and_keys_the_charts_expect(stack_runs, stack):
    found = secrets_by_name(stack_runs[stack])
    expected = {
        w.FERNET_KEY_SECRET: {"fernet-key"},
        w.API_SECRET_KEY_SECRET: {"api-secret-key"},
        w.JWT_SECRET: {"jwt-secret"},
        w.ADMIN_USER_SECRET: {"username", "password"},
        w.POSTGRES_APP_USER_SECRET: {"username", "password"},
        w.REDIS_AUTH_SECRET: {"auth"},
    }
    assert {name: set(found[name].values["stringData"]) for name in expected} == expected
    assert found[w.POSTGRES_APP_USER_SECRET].values["type"] == "kubernetes.io/basic-auth"
    for secret in found.values():
        assert secret.values["metadata"]["namespace"] == w.AIRFLOW_NAMESPACE
        data = secret.inputs["stringData"]
        assert is_secret(data) or all(is_secret(value) for value in data.values())


def test_fernet_key_is_a_valid_fernet_key(prod):
    key = secrets_by_name(prod)[w.FERNET_KEY_SECRET].values["stringData"]["fernet-key"]
    fernet = Fernet(key.encode())
    assert fernet.decrypt(fernet.encrypt(b"connection password")) == b"connection password"


def test_generated_passwords_are_long_and_use_url_reserved_characters(prod):
    password = secrets_by_name(prod)[w.POSTGRES_APP_USER_SECRET].values["stringData"]["password"]
    assert len(password) == 32
    generator = prod.one("random:index/randomPassword:RandomPassword", "security-postgres-password").values
    assert set("@:/?#%&") <= set(generator["overrideSpecial"])
    redis = secrets_by_name(prod)[w.REDIS_AUTH_SECRET].values["stringData"]["auth"]
    assert redis.isalnum() and len(redis) == 32


@pytest.mark.parametrize("stack", ["local", "staging", "prod"])
def test_no_generated_secret_appears_in_plain_text_anywhere(stack_runs, stack):
    run = stack_runs[stack]
    generated = set()
    for r in run.of_type("random:index/randomPassword:RandomPassword"):
        generated.add(r.state["result"])
    for r in run.of_type("random:index/randomBytes:RandomBytes"):
        generated.update({r.state["base64"], r.state["hex"]})
    for secret in run.of_type(SECRET):
        generated.update(unwrap(secret.inputs["stringData"]).values())
    generated.discard(w.ADMIN_USER)
    generated.discard(w.POSTGRES_USER)
    generated.difference_update({w.POSTGRES_KEDA_USER, w.POSTGRES_WORKER_USER})   # user names, not secrets
    assert len(generated) >= 7
    for registration in run.where(lambda r: not r.type.startswith("random:")):
        for text in plain_strings(registration.inputs):
            for value in generated:
                assert value not in text, f"{registration.type} {registration.name} holds a secret in plain text"
    for name, output in run.outputs.items():
        for text in plain_strings(output):
            for value in generated:
                assert value not in text, f"stack output {name} holds a secret in plain text"


def test_the_secret_scan_would_catch_a_leak(prod):
    leaked = secrets_by_name(prod)[w.JWT_SECRET].values["stringData"]["jwt-secret"]
    assert any(leaked in text for text in plain_strings({"values": {"config": f"x{leaked}y"}}))
    hidden = {"values": {"config": {SECRET_MARKER: SECRET_SIG, "value": leaked}}}
    assert not any(leaked in text for text in plain_strings(hidden))


# --- Kubernetes objects and charts ----------------------------------------------------------------------
@pytest.mark.parametrize("stack", ["local", "prod"])
def test_cert_manager_release_and_issuers(stack_runs, stack):
    run = stack_runs[stack]
    release = run.one("kubernetes:helm.sh/v3:Release", "security-cert-manager")
    assert release.values["version"] == "v1.21.1"
    validate_against_json_schema(release.values["values"], "cert-manager/values.schema.json")
    assert release.values["values"]["crds"]["enabled"] is True
    issuers = run.of_type("kubernetes:cert-manager.io/v1:ClusterIssuer")
    assert {i.values["metadata"]["name"] for i in issuers} == {"selfsigned-bootstrap", "airflow-platform-ca"}
    for issuer in issuers:
        assert issuer.depends_on(release), "the CRDs come with the release"
    ca = run.one("kubernetes:cert-manager.io/v1:Certificate").values["spec"]
    assert ca["isCA"] is True


def test_cert_manager_schema_rejects_a_misspelled_key():
    from jsonschema import ValidationError

    from components.security import cert_manager_values
    with pytest.raises(ValidationError):
        validate_against_json_schema({**cert_manager_values(True), "replicaCont": 2},
                                     "cert-manager/values.schema.json")


# --- TLS for the ingress host ---------------------------------------------------------------------------
def test_prod_issues_a_dns_validated_certificate_for_the_ingress_host(prod):
    certificate = prod.one("aws:acm/certificate:Certificate").values
    assert certificate["domainName"] == "airflow.example.com"
    assert certificate["validationMethod"] == "DNS"
    record = prod.one("aws:route53/record:Record", "security-ingress-validation")
    assert record.values["zoneId"] == "Z0123456789EXAMPLE"
    # Each record validates its own host, whatever order ACM lists the domains in.
    assert record.values["name"] == "_x1.airflow.example.com."
    assert prod.one("aws:route53/record:Record", "security-ingress-validation-1").values["name"] == \
        "_x1.grafana.example.com."
    assert record.values["type"] == "CNAME"
    validation = prod.one("aws:acm/certificateValidation:CertificateValidation")
    assert validation.depends_on(record) or record.urn in sum(validation.property_dependencies.values(), [])
    assert unwrap(prod.outputs["certificate_arn"]).startswith("arn:aws:")


def test_an_existing_certificate_is_used_as_is():
    arn = "arn:aws:acm:eu-west-1:111122223333:certificate/0b4e6a3c-1111-2222-3333-444455556666"
    run = run_program("prod", overrides={"certificateArn": arn})
    assert not run.of_type("aws:acm/certificate:Certificate")
    assert unwrap(run.outputs["certificate_arn"]) == arn


def test_aws_needs_an_ingress_host_and_a_zone_or_certificate():
    from components.config import SettingsError, load_settings
    with pytest.raises(SettingsError, match=r"airflow:ingressHost: is required"):
        load_settings({"target": "aws", "region": "eu-west-1", "route53ZoneId": "Z0123"})
    for certificate in ({}, {"certificateArn": "arn:aws:acm:eu-west-1:111122223333:certificate/0b4e6a3c-1111"}):
        with pytest.raises(SettingsError, match=r"airflow:route53ZoneId: is required"):
            load_settings({"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com", **certificate})
    assert isinstance(load_settings({"target": "local"}), Settings)


def test_fernet_rotation_decrypts_with_both_keys_and_encrypts_with_the_new_one():
    """`previousFernetKey` during a rotation: the Secret holds `new,old` in the order Airflow's get_fernet
    reads it (a MultiFernet of the comma-separated keys), and the Airflow pods roll to read it."""
    import random as stdlib_random

    from cryptography.fernet import MultiFernet

    seed = stdlib_random.SystemRandom().randrange(2**32)
    old = Fernet.generate_key().decode()
    rotating = run_program("prod", secret_config={"previousFernetKey": old}, password_seed=seed)
    settled = run_program("prod", password_seed=seed)
    secret = rotating.one(SECRET, "security-airflow-fernet-key")
    assert is_secret(secret.inputs["stringData"]) or is_secret(secret.inputs["stringData"]["fernet-key"])
    value = secret.values["stringData"]["fernet-key"]
    new = settled.one(SECRET, "security-airflow-fernet-key").values["stringData"]["fernet-key"]
    assert value == f"{new},{old}"
    airflow = MultiFernet([Fernet(part.encode()) for part in value.split(",")])
    assert airflow.decrypt(Fernet(old.encode()).encrypt(b"connection")) == b"connection"
    assert Fernet(new.encode()).decrypt(airflow.encrypt(b"variable")) == b"variable"
    # The pods' digest of the keys changes, so they roll onto the rotated Secret (and back after it).
    def checksum(run):
        return run.one("kubernetes:helm.sh/v3:Release", "airflow-airflow").values["values"]["scheduler"][
            "podAnnotations"]["checksum/platform-secrets"]
    assert checksum(rotating) != checksum(settled)


def test_previous_fernet_key_must_be_a_fernet_key_given_as_a_secret():
    from mock_engine import ProgramFailed

    with pytest.raises(ProgramFailed, match="previousFernetKey"):
        run_program("local", secret_config={"previousFernetKey": "not-a-key"})
    with pytest.raises(ProgramFailed, match="pulumi config set --secret airflow:previousFernetKey"):
        run_program("local", overrides={"previousFernetKey": Fernet.generate_key().decode()})
