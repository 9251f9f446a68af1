import pytest

# The program imports `components` from the project root, as `pulumi up` runs it from there: pyproject.toml's
# `pythonpath` puts the root (the program, mock_engine, plan) and tests/ (support) on the import path.
from mock_engine import STACKS, run_program


@pytest.fixture(scope="session")
def stack_runs():
    """The whole program, run once per stack file (each run takes well under a second)."""
    return {stack: run_program(stack) for stack in STACKS}


@pytest.fixture(scope="session")
def prod(stack_runs):
    return stack_runs["prod"]


@pytest.fixture(scope="session")
def staging(stack_runs):
    return stack_runs["staging"]


@pytest.fixture(scope="session")
def local(stack_runs):
    return stack_runs["local"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell in its teardown whether the test
    failed (the end-to-end tier prints the Airflow components' logs then)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
