"""The code's layout rules, which a refactoring must not quietly undo: no component imports another (they share
only the modules beside them), and each component's Args take its own area's settings and typed handles, never
another component."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pulumi
import pytest

from components.platform import PlatformSettings
from mock_engine import REPO
from support.imports import imported_modules

COMPONENTS = REPO / "components"
PACKAGES = sorted(path.name for path in COMPONENTS.iterdir() if (path / "__init__.py").exists())
ARGS = {"cluster": "ClusterArgs", "security": "SecurityArgs", "storage": "StorageArgs", "database": "DatabaseArgs",
        "broker": "BrokerArgs", "airflow": "AirflowReleaseArgs", "observability": "ObservabilityArgs",
        "delivery": "DeliveryArgs"}


def peers_imported(package: str) -> set[str]:
    """The other component packages any module of `package` imports (their settings models included)."""
    found = set()
    for module in (COMPONENTS / package).rglob("*.py"):
        for name in imported_modules(module):
            parts = name.split(".")
            if parts[0] == "components" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != package:
                found.add(f"{module.relative_to(REPO)} imports {name}")
    return found


def test_every_component_package_has_args():
    assert set(PACKAGES) == set(ARGS)


@pytest.mark.parametrize("package", sorted(ARGS))
def test_no_component_imports_another(package):
    assert peers_imported(package) == set()


def test_the_layout_check_sees_a_peer_import(tmp_path, monkeypatch):
    module = tmp_path / "probe.py"
    module.write_text("from components.database import Database\nfrom components import workloads as w\n")
    assert "components.database" in imported_modules(module)
    assert "components.workloads" in imported_modules(module)


@pytest.mark.parametrize("package", sorted(ARGS))
def test_args_take_their_own_settings_slice_and_no_component(package):
    module = importlib.import_module(f"components.{package}")
    args = getattr(module, ARGS[package])
    hints = typing.get_type_hints(args, vars(module))
    settings = hints["settings"]
    assert issubclass(settings, PlatformSettings) and settings.__module__ == f"components.{package}.settings"
    for field in dataclasses.fields(args):
        hint = hints[field.name]
        for candidate in (hint, *typing.get_args(hint)):
            assert not (isinstance(candidate, type) and issubclass(candidate, pulumi.ComponentResource)), \
                f"{ARGS[package]}.{field.name} takes a component"
