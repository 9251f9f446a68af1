"""The mock engine: runs the whole Pulumi program (`__main__.py`) under Pulumi mocks and records what it registers.

The config is loaded the way the Pulumi CLI hands it to a program: project defaults from Pulumi.yaml,
then the stack file, every value a string (structured values as JSON). The program runs inside a
`Stack` exactly as the language host runs it, and every assertion happens after it has finished.
`python -m plan` and the tests both run the program through it.

The program's own modules (`components`) are imported from the import path, as the language host imports
them from the project directory: the repository root for `python -m plan` and pytest (pyproject.toml's
`pythonpath`), another checkout's root first for `plan --against`.

    config   REPO, SHARED, SCHEMAS, PROJECT, STACKS; a stack's config as the CLI hands it over
    values   secrets and string assets in registered values
    mocks    the fake AWS: FAKE_ZONES, FAKE_ACCOUNT, FAKE_S3_CIDRS, DEPLOYER_ROLE, PlatformMocks
    monitor  Registration, RecordingMonitor
    program  run_program, ProgramRun, ProgramFailed
"""

from mock_engine.config import (
    PROJECT,
    REPO,
    SCHEMAS,
    SHARED,
    STACKS,
    encrypted_stand_in,
    load_stack_config,
    pulumi_config_value,
)
from mock_engine.mocks import (
    DEPLOYER_ROLE,
    FAKE_ACCOUNT,
    FAKE_S3_CIDRS,
    FAKE_ZONES,
    PlatformMocks,
    fake_password,
)
from mock_engine.monitor import RecordingMonitor, Registration
from mock_engine.program import ProgramFailed, ProgramRun, run_program
from mock_engine.values import SECRET_SIG, SIG_KEY, is_secret, plain_strings, unwrap

__all__ = [
    "DEPLOYER_ROLE", "FAKE_ACCOUNT", "FAKE_S3_CIDRS", "FAKE_ZONES", "PROJECT", "REPO", "SCHEMAS", "SECRET_SIG",
    "SHARED", "SIG_KEY", "STACKS", "PlatformMocks", "ProgramFailed", "ProgramRun", "RecordingMonitor",
    "Registration", "encrypted_stand_in", "fake_password", "is_secret", "load_stack_config", "plain_strings",
    "pulumi_config_value", "run_program", "unwrap",
]
