"""What every part of the plan shares: where the working tree is, the error it reports, a few names."""

from __future__ import annotations

from pathlib import Path

# The working tree (this package sits at its root): `--against` compares a git ref's program to it.
ROOT = Path(__file__).resolve().parent.parent

REDACTED = "[secret]"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
COMPONENT_PREFIX = "airflow:platform:"


class PlanError(Exception):
    pass
