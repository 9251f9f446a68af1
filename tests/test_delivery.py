"""The way GitHub's workflows reach the stack (components/delivery/), checked against the workflows themselves.

Every job that runs the Pulumi action is expanded over its matrix; its OIDC subject is derived with GitHub's
documented rules (docs.github.com, "OpenID Connect reference": a job that references an environment gets
`repo:<owner>/<repo>:environment:<name>` whatever its event; otherwise `pull_request`, or `ref:refs/heads/<branch>`
for a push), and the trust policy of the role its variable names is evaluated the way IAM does (StringEquals,
StringLike). Runner labels follow AWS CodeBuild's documented format
`codebuild-<project-name>-${{ github.run_id }}-${{ github.run_attempt }}`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from itertools import product

import pytest

from mock_engine import FAKE_ACCOUNT, REPO, ProgramFailed, load_stack_config, run_program
from support.workflows import load

PULUMI_ACTION = "./.github/actions/pulumi"
ACTION = REPO / ".github" / "actions" / "pulumi" / "action.yml"
# What docs/delivery.md tells users to copy into each workflow variable: the stack output of that name.
ROLE_VARIABLES = {"AWS_DEPLOY_ROLE_ARN": "github_deploy_role_arn", "AWS_PREVIEW_ROLE_ARN": "github_preview_role_arn"}
GITHUB_ISSUER = "token.actions.githubusercontent.com"
STS_AUDIENCE = "sts.amazonaws.com"   # aws-actions/configure-aws-credentials' default `audience`
REPOSITORY = "example-org/airflow-platform"   # the stack files' githubRepository
CODEBUILD_LABEL = re.compile(r"^codebuild-(?P<project>[A-Za-z0-9][A-Za-z0-9_-]{1,149})"
                             r"-\$\{\{ github\.run_id \}\}-\$\{\{ github\.run_attempt \}\}$")
ADMIN_RUN_ROLE = f"arn:aws:iam::{FAKE_ACCOUNT}:role/platform-admins"


def substitute(value, combo: dict[str, str]):
    if isinstance(value, str):
        for key, item in combo.items():
            value = value.replace(f"${{{{ matrix.{key} }}}}", item)
        return value
    if isinstance(value, dict):
        return {k: substitute(v, combo) for k, v in value.items()}
    return value


def matrix_combinations(job: dict) -> list[dict[str, str]]:
    matrix = job.get("strategy", {}).get("matrix", {})
    assert not {"include", "exclude"} & set(matrix), "expand include/exclude here before using them"
    keys = list(matrix)
    return [dict(zip(keys, values, strict=True)) for values in product(*(matrix[k] for k in keys))] or [{}]


def pulumi_jobs() -> list[dict]:
    """Each (workflow, job, matrix combination) that runs the Pulumi action, with what decides its subject."""
    found = []
    for path in sorted((REPO / ".github" / "workflows").glob("*.yml")):
        workflow = load(path)
        events = workflow["on"] if isinstance(workflow["on"], dict) else {e: {} for e in [workflow["on"]]}
        for job_id, job in workflow["jobs"].items():
            for combo in matrix_combinations(job):
                for step in job.get("steps", []):
                    if step.get("uses") != PULUMI_ACTION:
                        continue
                    environment = substitute(job.get("environment"), combo)
                    found.append({
                        "id": f"{path.stem}/{job_id}{combo or ''}", "events": events, "runs_on": job["runs-on"],
                        "combo": combo, "environment": environment["name"] if isinstance(environment, dict)
                        else environment, "with": substitute(step["with"], combo),
                        "permissions": job.get("permissions", {})})
    return found


def subjects(job: dict, repository: str) -> set[str]:
    """The `sub` claims GitHub can issue to the job (default subject format)."""
    if job["environment"]:
        return {f"repo:{repository}:environment:{job['environment']}"}
    found = set()
    for event, spec in job["events"].items():
        if event in ("pull_request", "pull_request_target"):
            found.add(f"repo:{repository}:pull_request")
        elif event == "push":
            found |= {f"repo:{repository}:ref:refs/heads/{branch}" for branch in (spec or {}).get("branches", [])}
        else:
            raise AssertionError(f"{job['id']}: no subject rule for event {event!r} here yet")
    return found


def condition_holds(operator: str, expected, claim: str) -> bool:
    values = expected if isinstance(expected, list) else [expected]
    if operator == "StringEquals":
        return claim in values
    if operator == "StringLike":   # IAM: `*` any run of characters, `?` one; case-sensitive
        return any(fnmatch.fnmatchcase(claim, value.replace("[", "[[]")) for value in values)
    raise AssertionError(f"condition operator {operator} is not evaluated by this test")


def admits(trust_policy: str, provider_arn: str, sub: str, aud: str = STS_AUDIENCE) -> bool:
    """Whether a web identity token from `provider_arn` with these claims may assume the role."""
    claims = {f"{GITHUB_ISSUER}:sub": sub, f"{GITHUB_ISSUER}:aud": aud}
    for statement in json.loads(trust_policy)["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] != "Allow" or "sts:AssumeRoleWithWebIdentity" not in actions:
            continue
        if statement["Principal"].get("Federated") != provider_arn:
            continue
        conditions = statement.get("Condition", {})
        if all(key in claims and condition_holds(operator, value, claims[key])
               for operator, keys in conditions.items() for key, value in keys.items()):
            return True
    return False


def stack_setting(run, key: str) -> str:
    return load_stack_config(run.stack, REPO, [])[f"airflow:{key}"]


def role_with_arn(run, arn: str):
    (role,) = [r for r in run.of_type("aws:iam/role:Role") if r.state["arn"] == arn]
    return role


def provider_arn_of(run) -> str:
    providers = run.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    if providers:
        (provider,) = providers
        return provider.state["arn"]
    return stack_setting(run, "githubOidcProviderArn")


def role_for(run, job: dict):
    variable = re.fullmatch(r"\$\{\{ vars\.(\w+) \}\}", job["with"]["role-to-assume"]).group(1)
    return role_with_arn(run, run.outputs[ROLE_VARIABLES[variable]])


JOBS = pulumi_jobs()


def test_the_workflows_have_jobs_to_check():
    assert {(j["with"]["command"], j["with"]["stack"]) for j in JOBS} == {
        ("preview", "staging"), ("preview", "prod"), ("up", "staging"), ("up", "prod")}


@pytest.mark.parametrize("job", JOBS, ids=[j["id"] for j in JOBS])
def test_each_job_is_trusted_by_the_role_it_assumes_and_by_no_other(stack_runs, job):
    run = stack_runs[job["with"]["stack"]]
    provider = provider_arn_of(run)
    role = role_for(run, job)
    assert job["permissions"].get("id-token") == "write"
    for sub in subjects(job, REPOSITORY):
        assert admits(role.values["assumeRolePolicy"], provider, sub), (job["id"], sub)
        # Not with another audience, not from another provider.
        assert not admits(role.values["assumeRolePolicy"], provider, sub, aud="sts.amazonaws.com.cn")
        assert not admits(role.values["assumeRolePolicy"], provider.replace(FAKE_ACCOUNT, "444455556666"), sub)
        for other in run.of_type("aws:iam/role:Role"):
            if other.urn != role.urn and "Federated" in other.values["assumeRolePolicy"]:
                assert not admits(other.values["assumeRolePolicy"], provider, sub), (job["id"], other.name)
    # The preview job's token (any pull request's code) never opens the deploy role, nor does any other subject
    # the repository can get without the environment: a pull request, a push to main.
    if job["with"]["command"] == "up":
        for sub in (f"repo:{REPOSITORY}:pull_request", f"repo:{REPOSITORY}:ref:refs/heads/main",
                    f"repo:{REPOSITORY}:environment:preview-{job['with']['stack']}",
                    f"repo:{REPOSITORY}-fork:environment:{job['environment']}"):
            assert not admits(role.values["assumeRolePolicy"], provider, sub), sub


@pytest.mark.parametrize("job", JOBS, ids=[j["id"] for j in JOBS])
def test_each_job_runs_on_its_stacks_runner_inside_the_vpc(stack_runs, job):
    run = stack_runs[job["with"]["stack"]]
    label = substitute(job["runs_on"], job["combo"])
    match = CODEBUILD_LABEL.match(label)
    assert match, f"{job['id']}: runs-on {label!r} is no CodeBuild runner: a hosted runner cannot reach a private endpoint"
    project = run.one("aws:codebuild/project:Project")
    assert project.values["name"] == match["project"] == run.outputs["github_runner_project"]
    eks = run.one("aws:eks/cluster:Cluster").values
    # The subnets of EKS's endpoint: the private ones.
    assert sorted(project.values["vpcConfig"]["subnets"]) == sorted(eks["vpcConfig"]["subnetIds"])
    (group_id,) = project.values["vpcConfig"]["securityGroupIds"]
    group = next(g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup") if f"{g.name}-id" == group_id)
    # The cluster's security group admits the runners on 443 (EKS's private endpoint).
    rules = [r.values for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
             if r.values.get("referencedSecurityGroupId") == group_id]
    assert rules == [{**rules[0], "securityGroupId": f"sg-{eks['name']}", "ipProtocol": "tcp", "fromPort": 443,
                      "toPort": 443}]
    assert [(e["protocol"], e["fromPort"], e["toPort"]) for e in group.values["egress"]] == [("tcp", 443, 443)]
    assert project.values["source"] == {"type": "GITHUB", "location": f"https://github.com/{REPOSITORY}",
                                        "auth": {"type": "CODECONNECTIONS",
                                                 "resource": stack_setting(run, "githubConnectionArn")}}
    webhook = run.one("aws:codebuild/webhook:Webhook").values
    assert webhook["projectName"] == project.values["name"]
    assert webhook["filterGroups"] == [{"filters": [{"type": "EVENT", "pattern": "WORKFLOW_JOB_QUEUED"}]}]
    # CodeBuild's default would hold every pull request's runner for a comment; forks get no runner job anyway.
    assert webhook["pullRequestBuildPolicy"]["requiresCommentApproval"] == "FORK_PULL_REQUESTS"
    assert "GITHUB_READ" not in webhook["pullRequestBuildPolicy"]["approverRoles"]
    # The run outlasts the job: CodeBuild would stop it first.
    assert project.values["buildTimeout"] > int(job_timeout(job))


def job_timeout(job: dict) -> int:
    workflow, job_id = job["id"].split("/", 1)
    doc = load(REPO / ".github" / "workflows" / f"{workflow}.yml")
    return doc["jobs"][job_id.split("{", 1)[0]]["timeout-minutes"]


def test_the_session_the_action_asks_for_is_one_the_roles_grant(stack_runs):
    action = load(ACTION)
    step = next(s for s in action["runs"]["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    asked = int(step["with"]["role-duration-seconds"])
    for job in JOBS:
        role = role_for(stack_runs[job["with"]["stack"]], job)
        assert asked <= role.values["maxSessionDuration"], job["id"]


def test_a_preview_plans_the_same_access_entries_whoever_runs_it(prod):
    """The entries never follow the caller: a preview by the preview role changes none of them."""
    def entries(run):
        return sorted((r.urn, r.values["principalArn"], r.values.get("policyArn", ""))
                      for r in run.registrations if r.type.startswith("aws:eks/access"))
    preview_role = prod.outputs["github_preview_role_arn"]
    deploy_role = prod.outputs["github_deploy_role_arn"]
    as_preview = run_program("prod", deployer_arn=preview_role, preview=True)
    as_deploy = run_program("prod", deployer_arn=deploy_role)
    assert entries(as_preview) == entries(as_deploy) == entries(prod)
    principals = {r.values["principalArn"] for r in prod.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
                  if r.values["policyArn"].endswith("/AmazonEKSClusterAdminPolicy")}
    assert principals == {ADMIN_RUN_ROLE, deploy_role}
    (view,) = [r.values for r in prod.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
               if r.values["principalArn"] == preview_role]
    assert view["policyArn"] == "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"


def test_only_the_deploy_role_may_run_up_from_ci(prod):
    run_program("prod", deployer_arn=prod.outputs["github_deploy_role_arn"])
    with pytest.raises(ProgramFailed, match="gets no cluster-admin access entry") as caught:
        run_program("prod", deployer_arn=prod.outputs["github_preview_role_arn"])
    assert not [r for r in caught.value.registrations if r.type.startswith("aws:")]


def managed_policies(run, role) -> set[str]:
    return {a.values["policyArn"].rsplit("/", 1)[1] for a in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
            if a.values["role"] == role.state["name"]}


def inline_statements(run, role) -> list[dict]:
    return [statement for p in run.of_type("aws:iam/rolePolicy:RolePolicy") if p.values["role"] == role.state["name"]
            for statement in json.loads(p.values["policy"])["Statement"]]


def test_the_preview_role_reads_without_the_platforms_data(prod):
    role = role_with_arn(prod, prod.outputs["github_preview_role_arn"])
    assert managed_policies(prod, role) == {"ReadOnlyAccess"}
    (deny,) = inline_statements(prod, role)
    assert deny["Effect"] == "Deny" and deny["Resource"] == "*"
    assert {"s3:GetObject", "secretsmanager:GetSecretValue", "kms:Decrypt", "ssm:GetParameter"} <= set(deny["Action"])


def test_the_runners_own_credentials_reach_only_logs_network_interfaces_and_the_connection(prod):
    """Every step of every job can read the build's credentials: they must not be worth stealing."""
    project = prod.one("aws:codebuild/project:Project").values
    role = next(r for r in prod.of_type("aws:iam/role:Role") if r.state["arn"] == project["serviceRole"])
    assert managed_policies(prod, role) == set()
    assert json.loads(role.values["assumeRolePolicy"])["Statement"][0]["Principal"] == {
        "Service": "codebuild.amazonaws.com"}
    statements = inline_statements(prod, role)
    actions = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert all(s["Effect"] == "Allow" for s in statements)
    assert {a.split(":")[0] for a in actions} == {"logs", "ec2", "codeconnections", "codestar-connections"}
    assert not [a for a in actions if a.startswith("ec2:") and a not in {
        "ec2:CreateNetworkInterface", "ec2:DescribeDhcpOptions", "ec2:DescribeNetworkInterfaces",
        "ec2:DeleteNetworkInterface", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs",
        "ec2:CreateNetworkInterfacePermission"}]
    (permission,) = [s for s in statements if s["Action"] == "ec2:CreateNetworkInterfacePermission"]
    subnets = sorted(f"arn:aws:ec2:eu-west-1:{FAKE_ACCOUNT}:subnet/{s}" for s in project["vpcConfig"]["subnets"])
    assert sorted(permission["Condition"]["ArnEquals"]["ec2:Subnet"]) == subnets
    (connection,) = [s for s in statements if any(a.startswith("codeconnections:") for a in s["Action"])]
    assert connection["Resource"] == stack_setting(prod, "githubConnectionArn")
    # CodeBuild checks the connection with the role when it creates the project: the policy comes first.
    policy = next(p for p in prod.of_type("aws:iam/rolePolicy:RolePolicy") if p.values["role"] == role.state["name"])
    assert prod.one("aws:codebuild/project:Project").depends_on(policy)


def test_the_deploy_role_is_not_given_administrator_access_by_name(prod):
    role = role_with_arn(prod, prod.outputs["github_deploy_role_arn"])
    assert managed_policies(prod, role) == {"PowerUserAccess", "IAMFullAccess"}


def test_the_stacks_name_the_accounts_oidc_provider_or_make_it_and_keep_it(staging, prod):
    """An account has one provider per URL (IAM refuses a second): stacks name it; a stack of a new account
    makes it, and keeps it on destroy for the account's other stacks."""
    for run in (staging, prod):
        assert run.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider") == []
        arn = stack_setting(run, "githubOidcProviderArn")
        for role in (role_with_arn(run, run.outputs[o]) for o in ROLE_VARIABLES.values()):
            assert json.loads(role.values["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Federated": arn}
    fresh = run_program("staging", overrides={"githubOidcProviderArn": None})
    (provider,) = fresh.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert provider.values["url"] == f"https://{GITHUB_ISSUER}"
    assert provider.values["clientIdLists"] == [STS_AUDIENCE]
    assert provider.retain_on_delete and not provider.protect
    for job in (j for j in JOBS if j["with"]["stack"] == "staging"):
        role = role_for(fresh, job)
        for sub in subjects(job, REPOSITORY):
            assert admits(role.values["assumeRolePolicy"], provider.state["arn"], sub)


def test_a_repository_on_immutable_subject_claims_is_trusted_by_its_ids():
    repository = "example-org@123456/airflow-platform@456789"
    run = run_program("prod", overrides={"githubRepository": repository})
    project = run.one("aws:codebuild/project:Project").values
    assert project["source"]["location"] == "https://github.com/example-org/airflow-platform"
    provider = provider_arn_of(run)
    for job in (j for j in JOBS if j["with"]["stack"] == "prod"):
        role = role_for(run, job)
        for sub in subjects(job, repository):
            assert admits(role.values["assumeRolePolicy"], provider, sub)
        for sub in subjects(job, REPOSITORY):   # the name alone: a later repository of that name has other IDs
            assert not admits(role.values["assumeRolePolicy"], provider, sub)


def test_a_stack_without_a_repository_has_no_delivery(local, stack_runs):
    for run in (local, run_program("prod", overrides={"githubRepository": None, "githubConnectionArn": None,
                                                      "githubOidcProviderArn": None})):
        assert not [r for r in run.registrations if r.type == "airflow:platform:Delivery"]
        assert "github_deploy_role_arn" not in run.outputs


@pytest.mark.parametrize(("overrides", "message"), [
    ({"githubConnectionArn": None}, r"airflow:githubConnectionArn: is required with githubRepository"),
    ({"githubConnectionArn": "arn:aws:codeconnections:us-east-1:111122223333:connection/3f2a9c41-7b6e"},
     r"airflow:githubConnectionArn: is in us-east-1, the stack in eu-west-1"),
    ({"githubRepository": None}, r"airflow:githubConnectionArn: is used only with githubRepository"),
    ({"githubRepository": "example-org/airflow platform"}, r"airflow:githubRepository: String should match pattern"),
    ({"githubRepository": "example-org@1/airflow-platform"}, r"airflow:githubRepository: String should match pattern"),
    ({"githubOidcProviderArn": "arn:aws:iam::111122223333:oidc-provider/example.com"},
     r"airflow:githubOidcProviderArn: String should match pattern"),
])
def test_bad_delivery_settings_are_refused_by_name_before_anything_is_created(overrides, message):
    with pytest.raises(ProgramFailed, match=message) as caught:
        run_program("prod", overrides=overrides)
    assert not [r for r in caught.value.registrations if r.type.startswith("aws:")]


def test_a_laptop_stack_refuses_a_repository():
    from components.config import SettingsError, load_settings
    with pytest.raises(SettingsError, match=r"airflow:githubRepository: needs target 'aws'"):
        load_settings({"target": "local", "githubRepository": REPOSITORY,
                       "githubConnectionArn": "arn:aws:codeconnections:eu-west-1:111122223333:connection/3f2a"})
