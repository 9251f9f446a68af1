"""What a test does when a real server or tool it needs is missing: on a workstation the test is skipped (say
which package brings it), in CI it fails. CI is any run with `CI` set: `.ci/run` exports it, GitHub sets it,
and the tests workflow keeps it through sudo. Every test that depends on something outside the virtualenvs
goes through here (tests/test_ci.py checks that none skips any other way)."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; in CI every real server and tool must run (.ci/run installs them)", pytrace=False)
    pytest.skip(reason)


def tool(name: str, package: str) -> str:
    """The path of a command-line tool from a Debian package, or the test's end (see the module)."""
    binary = shutil.which(name)
    if binary is None:
        unavailable(f"{name} not found (apt-get install {package})")
    return binary
