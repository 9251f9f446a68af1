"""Where the project is, and its config as the Pulumi CLI hands it to a program: project defaults from
Pulumi.yaml, then the stack file, every value a string (structured values as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

# The repository (this package sits at its root) and the charts and schemas in ../shared beside it.
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SCHEMAS = SHARED / "schemas"
PROJECT = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["name"]
STACKS = ("local", "staging", "prod", "prod-managed")


def pulumi_config_value(value: Any) -> str:
    """How the Pulumi CLI passes a config value to a program: strings as-is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def load_stack_config(stack: str, root: Path = REPO, encrypted: Optional[list[str]] = None) -> dict[str, str]:
    """The config of `root`'s project and stack file. An encrypted value raises, unless `encrypted` is a list:
    then its key is appended there and the value left out (the caller supplies a stand-in)."""
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    namespace = project["name"]
    config: dict[str, str] = {}
    for key, spec in (project.get("config") or {}).items():
        full_key = key if ":" in key else f"{namespace}:{key}"
        if isinstance(spec, dict) and "default" in spec:
            config[full_key] = pulumi_config_value(spec["default"])
        elif isinstance(spec, dict) and "value" in spec:
            config[full_key] = pulumi_config_value(spec["value"])
    stack_file = root / f"Pulumi.{stack}.yaml"
    for key, value in (yaml.safe_load(stack_file.read_text()).get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            if encrypted is None:
                raise ValueError(f"{stack_file.name}: {key} is encrypted; tests pass secrets through `secret_config=`")
            encrypted.append(key)
            continue
        config[key] = pulumi_config_value(value)
    return config


def encrypted_stand_in(key: str) -> str:
    """A value of the right form for an encrypted setting (its `stand_in` in the settings model of the
    program on the import path), so a stack file with `pulumi config set --secret` values runs without them."""
    try:
        from components.config import Settings
    except ImportError:   # a program from before the settings were split by area (plan --against an older ref)
        from components.settings import Settings  # type: ignore[no-redef,import-not-found]

    alias = key.split(":", 1)[-1]
    for name, spec in Settings.model_fields.items():
        if alias in (name, spec.alias):
            extra = spec.json_schema_extra if isinstance(spec.json_schema_extra, dict) else {}
            return str(extra.get("stand_in", "stand-in"))
    return "stand-in"
