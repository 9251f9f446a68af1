"""Prometheus's and Alertmanager's own checkers (Debian's prometheus and prometheus-alertmanager): found through
support.availability, so a missing one fails under CI and skips elsewhere."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from support.availability import tool


def promtool() -> str:
    return tool("promtool", "prometheus")


def amtool_check(config: str) -> subprocess.CompletedProcess:
    binary = tool("amtool", "prometheus-alertmanager")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "alertmanager.yaml")
        path.write_text(config)
        return subprocess.run([binary, "check-config", str(path)], capture_output=True, text=True, timeout=60)
