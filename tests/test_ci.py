"""CI means CI everywhere: `.ci/run` sets CI, the GitHub workflow keeps it through sudo, and with CI set a test
whose real server or tool is missing fails the run instead of being skipped (tests/support/availability.py).
And the tooling's layout holds: no test file imports another, nothing edits sys.path."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mock_engine import REPO
from support.imports import imported_modules

TESTS = REPO / "tests"


def environment(ci: bool, path: str = os.environ["PATH"]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env["PATH"] = path
    if ci:
        env["CI"] = "true"
    return env


def run_ci(tmp_path: Path, *targets: str) -> list[str]:
    """.ci/run with make, dpkg and apt-get replaced by stubs: what make would have been asked, and with which CI."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    record = tmp_path / "make-calls"
    (stubs / "make").write_text(f'#!/bin/sh\necho "$1 CI=${{CI:-unset}}" >> {record}\n')
    (stubs / "dpkg").write_text("#!/bin/sh\nexit 0\n")
    (stubs / "apt-get").write_text("#!/bin/sh\necho apt-get must not run here >&2; exit 1\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    done = subprocess.run([str(REPO / ".ci" / "run"), *targets], capture_output=True, text=True, timeout=60,
                          env=environment(ci=False, path=f"{stubs}:{os.environ['PATH']}"))
    assert done.returncode == 0, done.stderr
    return record.read_text().splitlines()


def test_ci_run_sets_ci_for_both_tiers(tmp_path):
    assert run_ci(tmp_path) == ["test CI=true", "e2e CI=true"]


def test_ci_run_runs_one_tier_when_asked(tmp_path):
    assert run_ci(tmp_path, "e2e") == ["e2e CI=true"]


def test_the_github_workflow_keeps_ci_through_sudo():
    (job,) = yaml.safe_load((REPO / ".github" / "workflows" / "tests.yml").read_text())["jobs"].values()
    runs = [step["run"] for step in job["steps"] if ".ci/run" in step.get("run", "")]
    assert len(runs) == 1
    words = runs[0].split()
    if words[0] == "sudo":
        kept = next(w for w in words if w.startswith("--preserve-env="))
        assert "CI" in kept.removeprefix("--preserve-env=").split(","), runs[0]


PROBE = '''
from support import availability

def test_a_missing_tool():
    availability.tool("no-such-tool-anywhere", "no-such-package")

def test_a_missing_server():
    availability.unavailable("PostgreSQL server binaries not found")
'''


def run_pytest(arguments: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rsf",
                           *arguments], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("ci", [True, False])
def test_a_missing_server_or_tool_fails_in_ci_and_is_skipped_elsewhere(tmp_path, ci):
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**environment(ci), "PYTHONPATH": str(TESTS)}
    done = run_pytest(["test_probe.py"], tmp_path, env)
    if ci:
        assert done.returncode == 1 and "2 failed" in done.stdout, done.stdout
        assert "no-such-tool-anywhere not found (apt-get install no-such-package)" in done.stdout
    else:
        assert done.returncode == 0 and "2 skipped" in done.stdout, done.stdout


def test_the_real_modules_fail_in_ci_without_their_tools(monkeypatch):
    """promtool (the alert rules), amtool (Alertmanager's configuration) and the real servers, each missing with
    CI set: the module's own lookup fails the test."""
    from support import prometheus_tools, servers

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))   # neither promtool nor amtool on it
    with pytest.raises(pytest.fail.Exception, match="promtool not found"):
        prometheus_tools.promtool()
    with pytest.raises(pytest.fail.Exception, match="amtool not found"):
        prometheus_tools.amtool_check("route: {receiver: x}\nreceivers: [{name: x}]\n")
    monkeypatch.setattr(servers, "unavailable_reason", lambda: "PostgreSQL server binaries not found")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL server binaries not found"):
        with servers.servers_session("airflow-platform-ci-"):
            pass


def test_no_test_skips_except_through_availability():
    """A bare skip (pytest.skip, skipif, importorskip, an xfail that hides a failure, or one imported from pytest)
    would pass CI without running what it guards."""
    forbidden = {"skip", "skipif", "importorskip", "xfail"}
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == TESTS / "support" / "availability.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in forbidden and \
                    isinstance(node.value, (ast.Name, ast.Attribute)):
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest") and \
                    forbidden & {alias.name for alias in node.names}:
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert offenders == []


def python_files() -> list[Path]:
    """The repository's own Python files (the virtualenvs left out)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "*.py"], capture_output=True, check=True).stdout.decode().split("\0")
    return [REPO / name for name in filter(None, listed) if (REPO / name).is_file()]


def test_no_test_file_imports_another():
    """What several test files share lives in tests/support (or a conftest.py), never in a test file: a test file
    is collected, not imported."""
    test_modules = {path.stem for path in TESTS.rglob("test_*.py")}
    offenders = {str(path.relative_to(REPO)): sorted(test_modules & {m.split(".")[-1] for m in imported_modules(path)})
                 for path in python_files()}
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_nothing_edits_the_import_path():
    """The import path comes from how a thing is run (pyproject.toml's pythonpath for pytest, `python -m` from the
    root, PYTHONPATH where the Makefile or plan's child process sets it), never from sys.path edits."""
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                    and node.value.id == "sys":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
