"""A stack file's settings as the program validates them (the settings model), with overrides."""

from __future__ import annotations

from typing import Optional

from components.config import Settings, load_settings
from mock_engine import load_stack_config


def stack_settings(stack: str, overrides: Optional[dict] = None) -> Settings:
    config = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack).items() if k.startswith("airflow:")}
    return load_settings({**config, **(overrides or {})})

