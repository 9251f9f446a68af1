"""Updates arrive as pull requests (Renovate, .github/renovate.json), not as a broken main: the configuration is
valid, and every version the platform pins is one of its dependencies — each chart a Helm release installs and
each image tag the program sets, read from the program as it runs, not from a list kept beside the rules."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from mock_engine import REPO, run_program
from support.locks import LOCKS, header_command
from support.rendering import RELEASE, platform_pods

CONFIG = REPO / ".github" / "renovate.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads(CONFIG.read_text())


def python_pattern(pattern: str) -> re.Pattern:
    """A Renovate pattern as Python reads it: `/…/` strings are JavaScript regular expressions, whose named
    groups are written `(?<name>…)`."""
    if pattern.startswith("/") and pattern.endswith("/"):
        pattern = pattern[1:-1]
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z])", "(?P<", pattern))


def repository_files() -> list[str]:
    """The files Renovate reads: the repository's, with what is about to be committed."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    return sorted(name for name in listed if (REPO / name).is_file())


def extracted(config: dict) -> list[dict]:
    """What Renovate's regex managers find: each match's named groups, with the file it is in."""
    found = []
    files = repository_files()
    for manager in config["customManagers"]:
        assert manager["customType"] == "regex"
        for name in files:
            if not any(python_pattern(p).search(name) for p in manager["managerFilePatterns"]):
                continue
            text = (REPO / name).read_text()
            for match_string in manager["matchStrings"]:
                for match in python_pattern(match_string).finditer(text):
                    found.append({**{k: v for k, v in match.groupdict().items() if v}, "file": name})
    return found


def test_the_configuration_is_valid_renovate(config):
    from check_jsonschema import builtin_schemas
    schema = builtin_schemas.get_builtin_schema("vendor.renovate")
    jsonschema.validate(config, schema)
    spoilt = json.loads(json.dumps(config))
    spoilt["packageRules"][0]["groupName"] = 7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spoilt, schema)


def test_every_lock_is_kept_by_the_pip_compile_manager_which_can_read_its_header(config):
    """Renovate's pip-compile manager (lib/modules/manager/pip-compile/common.ts) takes the command from a
    lock's header, refuses an option it does not know and an option argument without `=`, and needs the
    source files named; it runs the command again in the lock's directory."""
    patterns = [python_pattern(p) for p in config["pip-compile"]["managerFilePatterns"]]
    locks = {str(lock.relative_to(REPO)) for _, lock in LOCKS.values()}
    matched = {name for name in repository_files() if any(p.search(name) for p in patterns)}
    assert matched == locks
    header = re.compile(r"^(#.*?\r?\n)+# {4}(?P<command>\S*)(?P<arguments> .*?)?\r?\n")
    for source, lock in LOCKS.values():
        found = header.match(lock.read_text())
        assert found and found["command"] == "uv", lock
        arguments = found["arguments"].split()
        assert arguments[:2] == ["pip", "compile"]
        options = [a for a in arguments[2:] if a.startswith("-")]
        assert options == [f"--output-file={lock.name}"]   # known to every version of the manager
        assert [a for a in arguments[2:] if not a.startswith("-")] == [source.name]
        assert header_command(lock).endswith(f"--output-file={lock.name}")
    assert "pip_requirements" not in config["enabledManagers"], "the .in files are pip-compile's sources"


def test_every_renovate_comment_is_read_by_one_rule(config):
    """A `# renovate:` comment that no rule matches would be a pin nobody updates, silently."""
    comments = [(name, line) for name in repository_files() if name.startswith(("components/", ".github/"))
                for line in (REPO / name).read_text().splitlines() if line.lstrip().startswith("# renovate: ")]
    deps = extracted(config)
    assert len(comments) == len(deps) >= 16
    for dep in deps:
        assert dep["datasource"] in {"helm", "docker", "pypi"}, dep
        assert dep["currentValue"] and dep["depName"], dep


def chart_dependency(release) -> dict:
    """The dependency a Helm release pins, as Renovate names it: a Helm chart in its repository, or an OCI
    chart as a docker artifact."""
    values = release.values
    if values["chart"].startswith("oci://"):
        return {"datasource": "docker", "depName": values["chart"].removeprefix("oci://"),
                "currentValue": values["version"]}
    return {"datasource": "helm", "depName": values["chart"], "registryUrl": values["repositoryOpts"]["repo"],
            "currentValue": values["version"]}


def test_every_chart_a_stack_installs_is_updated_by_renovate(config, stack_runs):
    deps = [{k: v for k, v in d.items() if k != "file"} for d in extracted(config)]
    charts = {json.dumps(chart_dependency(r), sort_keys=True)
              for run in stack_runs.values() for r in run.of_type(RELEASE)}
    # Airflow, KEDA, CloudNativePG, its Barman Cloud plugin, redis-ha, cert-manager, kube-prometheus-stack, the
    # AWS Load Balancer Controller, Karpenter.
    assert len(charts) == 9
    for chart in map(json.loads, charts):
        assert chart in deps, f"no Renovate rule updates {chart}"


def image_name_and_tag(image: str) -> tuple[str, str]:
    image = image.split("@", 1)[0]
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "latest")


def strings(value) -> set[str]:
    if isinstance(value, dict):
        return set().union(*map(strings, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(strings, value)) if value else set()
    return {value} if isinstance(value, str) else set()


def test_every_image_tag_the_program_sets_is_updated_by_renovate(config):
    """The images the platform really runs (charts rendered by Helm, the program's own Jobs) whose tag the
    program chooses: the tag is in the values it hands a chart, or in the workload it creates itself."""
    deps = [{k: v for k, v in d.items() if k != "file"} for d in extracted(config)]
    runs = [run_program("prod", overrides={"gitSyncRepository": "https://github.com/example/dags"}),
            run_program("prod-managed")]
    pinned = set()
    for run in runs:
        chosen = set().union(*(strings(r.values["values"]) for r in run.of_type(RELEASE)))
        for pod in platform_pods(run):
            for container in pod.containers:
                if "image" not in container:   # an operator's pod as modelled from its source, image unknown
                    continue
                name, tag = image_name_and_tag(container["image"])
                if pod.source.startswith("program:") or tag in chosen:
                    pinned.add((name, tag))
    # statsd exporter, git-sync, Airflow, Redis, HAProxy, the Redis exporter, the database bootstrap's psql.
    assert len(pinned) == 7, pinned
    for name, tag in pinned:
        assert {"datasource": "docker", "depName": name, "currentValue": tag} in deps, \
            f"no Renovate rule updates {name}:{tag}"


def test_the_pulumi_cli_moves_with_the_sdk(config):
    (cli,) = [d for d in extracted(config) if d["file"].startswith(".github/")]
    assert cli == {"datasource": "pypi", "depName": "pulumi", "currentValue": cli["currentValue"],
                   "file": ".github/actions/pulumi/action.yml"}
    pulumi_rule = next(r for r in config["packageRules"] if r.get("groupName") == "Pulumi")
    assert {"pulumi", "pulumi-aws", "pulumi-kubernetes", "pulumi-random", "pulumi-policy"} <= \
        set(pulumi_rule["matchPackageNames"])


def test_airflow_moves_as_one_reviewed_group(config):
    """The image's version (airflowVersion, docker) and the end-to-end tier's Airflow (pypi) change together and
    only on request: an Airflow upgrade is a project of its own, not a Monday pull request."""
    rule = next(r for r in config["packageRules"] if r.get("groupName") == "Airflow")
    assert {"apache/airflow", "apache-airflow", "celery"} <= set(rule["matchPackageNames"])
    assert rule["dependencyDashboardApproval"] is True
    # Later rules win in Renovate: no later rule may move Airflow's packages into another group.
    later = config["packageRules"][config["packageRules"].index(rule) + 1:]
    assert not [r for r in later if "groupName" in r]


def test_nothing_merges_without_the_tests(config):
    assert "automerge" not in json.dumps(config)
    assert not any(r.get("enabled") is False for r in config["packageRules"])
    assert Path(REPO / ".github" / "workflows" / "pull-request.yml").read_text().count("uses: ./.github/workflows/"
                                                                                       "tests.yml") == 1


def test_renovate_locks_with_the_uv_make_lock_uses(config):
    from support.locks import lock_pins
    assert config["constraints"]["uv"] == lock_pins(LOCKS["dev"][1])["uv"]
    uv_rule = next(r for r in config["packageRules"] if r.get("matchPackageNames") == ["uv"])
    assert uv_rule["dependencyDashboardApproval"] is True and "constraints.uv" in uv_rule["prBodyNotes"][0]


def test_a_chart_update_says_how_to_bring_its_chart_source(config):
    """The tests render ../shared/charts at the ref .github/shared-ref names: a chart pull request points it at
    a branch with the new chart, or stays red."""
    (rule,) = [r for r in config["packageRules"] if r.get("matchDatasources") == ["helm"]]
    assert ".github/shared-ref" in rule["prBodyNotes"][0]
