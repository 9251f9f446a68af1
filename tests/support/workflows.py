"""The GitHub workflows as data."""

from __future__ import annotations

from pathlib import Path

import yaml


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc
