"""The GitHub workflows: valid (SchemaStore's schemas, actionlint), and doing what docs/delivery.md promises —
the triggers, the jobs and their order, least permissions, pinned actions, and no literal credential."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from mock_engine import REPO
from support.workflows import load

WORKFLOWS = REPO / ".github" / "workflows"
ACTION = REPO / ".github" / "actions" / "pulumi" / "action.yml"
NODE_TOOLS = os.environ.get("NODE_TOOLS", str(Path.home() / ".cache" / "airflow-platform" / "node-tools"))
FULL_SHA = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict]:
    return {path.stem: load(path) for path in sorted(WORKFLOWS.glob("*.yml"))}


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def uses(doc: dict) -> list[str]:
    found = [job["uses"] for job in doc.get("jobs", {}).values() if "uses" in job]
    for job in doc.get("jobs", {}).values():
        found += [s["uses"] for s in steps(job) if "uses" in s]
    found += [s["uses"] for s in doc.get("runs", {}).get("steps", []) if "uses" in s]
    return found


def test_the_expected_workflows_exist(workflows):
    assert set(workflows) == {"pull-request", "pull-request-comment", "deploy", "tests"}


def test_workflows_and_the_action_match_schemastore_schemas(workflows):
    from check_jsonschema import builtin_schemas

    schema = builtin_schemas.get_builtin_schema("vendor.github-workflows")
    for name in workflows:
        jsonschema.validate(load(WORKFLOWS / f"{name}.yml"), schema)
    jsonschema.validate(load(ACTION), builtin_schemas.get_builtin_schema("vendor.github-actions"))
    # The schema can fail: a job without runs-on or uses is refused.
    broken = load(WORKFLOWS / "deploy.yml")
    del broken["jobs"]["up-prod"]["runs-on"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_actionlint_accepts_the_workflows_and_catches_a_broken_one(tmp_path):
    lint = Path(NODE_TOOLS) / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
    done = subprocess.run(["node", str(lint), ".github/workflows/*.yml"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Checking 4 workflow file(s)" in done.stdout
    broken = tmp_path / ".github" / "workflows"
    broken.mkdir(parents=True)
    text = (WORKFLOWS / "deploy.yml").read_text().replace("needs: [up-staging]", "needs: [up-stagin]")
    (broken / "deploy.yml").write_text(text)
    done = subprocess.run(["node", str(lint), ".github/workflows/*.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "up-stagin" in done.stdout


def test_pull_requests_run_the_tests_previews_and_plans_for_forks(workflows):
    pr = workflows["pull-request"]
    assert pr["on"] == {"pull_request": {"branches": ["main"]}}
    jobs = pr["jobs"]
    assert set(jobs) == {"tests", "preview", "plan-for-forks"}
    assert jobs["tests"]["uses"] == "./.github/workflows/tests.yml"
    # Same-repository pull requests preview both AWS stacks with the policy pack; forks get `python -m plan`.
    same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
    assert jobs["preview"]["if"] == same_repo
    assert jobs["plan-for-forks"]["if"] == same_repo.replace("==", "!=")
    assert jobs["preview"]["strategy"]["matrix"]["stack"] == ["staging", "prod"]
    preview = next(s for s in steps(jobs["preview"]) if s.get("uses") == "./.github/actions/pulumi")
    assert preview["with"]["command"] == "preview" and preview["with"]["comment-on-pr"] is True
    assert preview["with"]["role-to-assume"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"
    # Where its Pulumi token lives, with its own rules; the stack's preview role trusts only it (test_delivery.py).
    assert jobs["preview"]["environment"] == "preview-${{ matrix.stack }}"
    plan_step = next(s for s in steps(jobs["plan-for-forks"]) if "python -m plan " in s.get("run", ""))
    for stack in ("staging", "prod"):
        assert stack in plan_step["run"]
    assert '--against "origin/$BASE_REF"' in plan_step["run"]
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps(jobs["plan-for-forks"]))
    checkout = next(s for s in steps(jobs["plan-for-forks"]) if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0   # origin/main must be there to diff against
    assert "pull_request_target" not in json.dumps(workflows)


def test_the_fork_comment_never_runs_the_forks_code(workflows):
    comment = workflows["pull-request-comment"]
    assert comment["on"] == {"workflow_run": {"workflows": [workflows["pull-request"]["name"]],
                                              "types": ["completed"]}}
    (job,) = comment["jobs"].values()
    assert job["permissions"] == {"actions": "read", "pull-requests": "write"}
    assert "head_repository.full_name != github.repository" in job["if"]
    assert not any(s.get("uses", "").startswith("actions/checkout@") for s in steps(job))
    assert not any("run" in s for s in steps(job))
    script = next(s for s in steps(job) if s.get("uses", "").startswith("actions/github-script@"))["with"]["script"]
    assert "updateComment" in script and "<!-- airflow-platform-plan -->" in script   # one comment, updated
    # The fork wrote the artifact: its pull request number counts only if that pull request is the one built.
    assert "pulls.get" in script and "run.head_sha" in script and "head_repository.full_name" in script
    # Only runs that finished (no artifact from a cancelled or unapproved run).
    assert "(github.event.workflow_run.conclusion == 'success' || github.event.workflow_run.conclusion == 'failure')" \
        in job["if"]
    assert "c.user.login === 'github-actions[bot]'" in script


def test_main_deploys_staging_then_prod_behind_its_environment(workflows):
    deploy = workflows["deploy"]
    assert deploy["on"] == {"push": {"branches": ["main"]}}
    jobs = deploy["jobs"]
    assert jobs["up-staging"]["needs"] == ["tests"]
    assert jobs["up-prod"]["needs"] == ["up-staging"]
    for stack in ("staging", "prod"):
        job = jobs[f"up-{stack}"]
        assert job["environment"] == stack
        assert job["concurrency"] == {"group": f"pulumi-up-{stack}", "cancel-in-progress": False}
        step = next(s for s in steps(job) if s.get("uses") == "./.github/actions/pulumi")
        assert step["with"]["command"] == "up" and step["with"]["stack"] == stack
        assert step["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"


def test_the_test_tiers_run_the_readme_command(workflows):
    (job,) = workflows["tests"]["jobs"].values()
    assert job["strategy"]["matrix"]["target"] == ["test", "e2e"]
    assert "run" in steps(job)[-1] and ".ci/run ${{ matrix.target }}" in steps(job)[-1]["run"]
    # ../shared (schemas, charts) beside the repository, as .ci/run expects it; named literally, because
    # repository variables are empty in pull requests from forks.
    checkouts = [s["with"] for s in steps(job) if s.get("uses", "").startswith("actions/checkout@")]
    assert [c["path"] for c in checkouts] == ["main", "shared"]
    assert checkouts[1]["repository"] == "${{ env.SHARED_REPOSITORY }}"
    # The shared repository at the ref the change itself names (a chart update points it at the new chart).
    assert checkouts[1]["ref"] == "${{ steps.shared.outputs.ref }}"
    assert "main/.github/shared-ref" in next(s for s in steps(job) if s.get("id") == "shared")["run"]
    assert re.fullmatch(r"[A-Za-z0-9._/-]+\n", (REPO / ".github" / "shared-ref").read_text())
    assert "vars." not in json.dumps(workflows["tests"])
    # Every virtualenv is built with the Python the locks were proven with, not the runner's python3.
    import tomllib
    python = next(s for s in steps(job) if s.get("id") == "python")
    assert python["uses"].startswith("actions/setup-python@")
    assert python["with"]["python-version"] == tomllib.loads((REPO / "uv.toml").read_text())["pip"]["python-version"]
    assert steps(job)[-1]["env"]["PYTHON"] == "${{ steps.python.outputs.python-path }}"
    assert "PYTHON" in steps(job)[-1]["run"].split("--preserve-env=")[1].split()[0].split(",")
    assert 'targets=(test e2e)' in (REPO / ".ci" / "run").read_text()


def test_least_permissions(workflows):
    allowed = {
        ("pull-request", "tests"): {"contents": "read"},
        ("pull-request", "preview"): {"contents": "read", "id-token": "write", "pull-requests": "write"},
        ("pull-request", "plan-for-forks"): {"contents": "read"},
        ("pull-request-comment", "comment"): {"actions": "read", "pull-requests": "write"},
        ("tests", "tier"): {"contents": "read"},
        ("deploy", "tests"): {"contents": "read"},
        ("deploy", "up-staging"): {"contents": "read", "id-token": "write"},
        ("deploy", "up-prod"): {"contents": "read", "id-token": "write"},
    }
    for name, doc in workflows.items():
        assert doc["permissions"] == {}, f"{name}: the workflow grants nothing by default"
        for job_name, job in doc["jobs"].items():
            assert job["permissions"] == allowed[(name, job_name)], (name, job_name)


def test_actions_are_pinned_to_full_commit_shas(workflows):
    action = load(ACTION)
    found = [u for doc in [*workflows.values(), action] for u in uses(doc)]
    assert len(found) >= 10
    for ref in found:
        assert ref.startswith("./") or FULL_SHA.match(ref), f"{ref} is not pinned to a commit"
    for path in [*WORKFLOWS.glob("*.yml"), ACTION]:
        for line in path.read_text().splitlines():
            if re.search(r"uses: [\w.-]+/[\w.-]+@", line):
                assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"{path.name}: {line.strip()} (tag?)"


def test_a_failed_preview_does_not_leave_an_older_passing_comment():
    """pulumi/actions comments only after a success (src/main.ts); the action marks its last comment."""
    action = load(ACTION)
    pulumi_step = next(s for s in action["runs"]["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    after = action["runs"]["steps"][action["runs"]["steps"].index(pulumi_step) + 1]
    assert after["if"] == "failure() && steps.pulumi.conclusion == 'failure' && inputs.comment-on-pr == 'true'"
    assert pulumi_step["id"] == "pulumi"
    script = after["with"]["script"]
    # The heading pulumi/actions v7 writes and finds its comment by, so its next success replaces the mark.
    assert "#### :tropical_drink: \\`${process.env.COMMAND}\\` on " in script
    assert "updateComment" in script and "createComment" in script
    assert "pull_request.head.sha" in script and "findLast" in script


def test_shared_repository_token_reaches_the_tests(workflows):
    """A reusable workflow gets only the secrets it declares and its callers pass."""
    assert "SHARED_REPOSITORY_TOKEN" in workflows["tests"]["on"]["workflow_call"]["secrets"]
    for caller in ("pull-request", "deploy"):
        assert workflows[caller]["jobs"]["tests"]["secrets"] == {
            "SHARED_REPOSITORY_TOKEN": "${{ secrets.SHARED_REPOSITORY_TOKEN }}"}


def test_dependencies_are_installed_where_pulumi_expects_them():
    action = load(ACTION)
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    pack = yaml.safe_load((REPO / "policy" / "PulumiPolicy.yaml").read_text())
    install = next(s for s in action["runs"]["steps"] if "pip install" in s.get("run", ""))["run"]
    program_venv, policy_venv = project["runtime"]["options"]["virtualenv"], pack["runtime"]["options"]["virtualenv"]
    assert f"python -m venv {program_venv}\n" in install
    locked = "-m pip install --quiet --require-hashes --no-deps --only-binary :all: -r"
    assert f"{program_venv}/bin/python {locked} requirements.txt" in install
    assert f"python -m venv policy/{policy_venv}\n" in install
    assert f"policy/{policy_venv}/bin/python {locked} policy/requirements.txt" in install
    pulumi_step = next(s for s in action["runs"]["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    sdk = re.search(r"^pulumi==([\w.]+)", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert pulumi_step["with"]["pulumi-version"] == sdk   # the CLI of the SDK the program pins
    assert pulumi_step["with"]["policyPacks"] == "policy"
    # No refresh: an `up` applies what the pull request's preview showed, not drift nobody reviewed (docs/operations.md).
    assert "refresh" not in pulumi_step["with"]
    aws = next(s for s in action["runs"]["steps"] if s.get("uses", "").startswith("aws-actions/"))
    assert set(aws["with"]) == {"role-to-assume", "role-session-name", "aws-region", "role-duration-seconds"}   # OIDC, no keys


ALLOWED_REFERENCE = r"(secrets\.[A-Z_]+|github\.token|inputs\.[\w-]+)"
# Only a secret, the job's own token or an input that a workflow fills from one (or a fallback among them).
CREDENTIAL_REFERENCE = re.compile(rf"\$\{{\{{ {ALLOWED_REFERENCE}( \|\| {ALLOWED_REFERENCE})* \}}\}}")
CREDENTIAL_NAME = re.compile(r"(token|secret|password|passphrase|access[_-]?key|private[_-]?key)", re.IGNORECASE)
LITERAL_CREDENTIALS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                 # AWS access key IDs
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),               # GitHub tokens
    re.compile(r"\bpul-[0-9a-f]{40}\b"),                         # Pulumi access tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def walk(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")
    else:
        yield path, value


@pytest.mark.parametrize("path", [*sorted(WORKFLOWS.glob("*.yml")), ACTION], ids=lambda p: p.name)
def test_no_literal_credential(path):
    text = path.read_text()
    for pattern in LITERAL_CREDENTIALS:
        assert not pattern.search(text), f"{path.name}: {pattern.pattern}"
    for where, value in walk(load(path)):
        key = where.rsplit(".", 1)[-1]
        if CREDENTIAL_NAME.search(key) and isinstance(value, str) and ".permissions." not in where \
                and not key.endswith("description"):
            assert CREDENTIAL_REFERENCE.fullmatch(value), f"{path.name}{where}: {value!r}"


def test_the_literal_credential_check_can_fail():
    fake = {"env": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}}
    leaks = [w for w, v in walk(fake) if CREDENTIAL_NAME.search(w.rsplit(".", 1)[-1])
             and not CREDENTIAL_REFERENCE.fullmatch(v)]
    assert leaks == [".env.AWS_SECRET_ACCESS_KEY"]
    assert LITERAL_CREDENTIALS[0].search("key: AKIAIOSFODNN7EXAMPLE")
    assert CREDENTIAL_REFERENCE.fullmatch("${{ secrets.A_TOKEN || github.token }}")
    assert not CREDENTIAL_REFERENCE.fullmatch("${{ secrets.A_TOKEN || 'hunter2' }}")


def run_steps(workflows) -> list[tuple[str, str]]:
    return [(f"{name}/{job_name}", step["run"]) for name, doc in workflows.items()
            for job_name, job in doc["jobs"].items() for step in steps(job) if "run" in step]


def test_no_step_writes_into_a_directory_of_the_checkout(workflows):
    """A `run:` step is `bash -e`: `mkdir <dir>` of a directory the repository has (a package such as `plan/`)
    fails the job, and files written there would be uploaded with the source."""
    tracked = {path.split("/", 1)[0] for path in subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()}
    made = [(where, directory) for where, script in run_steps(workflows)
            for directory in re.findall(r"\bmkdir\s+(?!-)([\w./-]+)", script)]
    assert made, "no step makes a directory: the check would see nothing"
    assert [(where, d) for where, d in made if d.rstrip("/").split("/", 1)[0] in tracked] == []
    uploads = [step["with"]["path"] for doc in workflows.values() for job in doc["jobs"].values()
               for step in steps(job) if str(step.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and [path for path in uploads if path.rstrip("/").split("/", 1)[0] in tracked] == []
