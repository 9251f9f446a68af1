"""Runs a program's `__main__.py` for a stack file under the mocks, inside a `Stack` exactly as the language
host runs it, and hands back what it registered."""

from __future__ import annotations

import runpy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
from pulumi.runtime.settings import set_root_resource
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

from mock_engine.config import PROJECT, REPO, encrypted_stand_in, load_stack_config, pulumi_config_value
from mock_engine.mocks import DEPLOYER_ROLE, PlatformMocks
from mock_engine.monitor import RecordingMonitor, Registration


@dataclass
class ProgramRun:
    stack: str
    registrations: list[Registration]
    outputs: dict[str, Any]        # stack outputs, secrets still marked
    seconds: float
    invokes: list[tuple[str, dict]] = field(default_factory=list)   # data-source calls: token, arguments

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def one(self, type_: str, name: Optional[str] = None) -> Registration:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def where(self, predicate: Callable[[Registration], bool]) -> list[Registration]:
        return [r for r in self.registrations if predicate(r)]

    def provider_of(self, registration: Registration) -> Registration:
        """The provider resource a registration uses (its reference is `<urn>::<id>`)."""
        urn = registration.provider.rsplit("::", 1)[0]
        return self.by_urn(urn)

    def ancestors(self, registration: Registration) -> list[Registration]:
        chain = []
        parent = registration.parent
        while parent and not parent.endswith(f"pulumi:pulumi:Stack::{PROJECT}-{self.stack}"):
            found = self.by_urn(parent)
            chain.append(found)
            parent = found.parent
        return chain

    def depends_transitively(self, registration: Registration, target: Registration) -> bool:
        """Whether `registration` waits for `target` through dependencies, parents' dependencies or providers."""
        seen: set[str] = set()
        stack = [registration]
        while stack:
            current = stack.pop()
            if current.urn in seen:
                continue
            seen.add(current.urn)
            edges = list(current.dependencies)
            for deps in current.property_dependencies.values():
                edges.extend(deps)
            if current.provider:
                edges.append(current.provider.rsplit("::", 1)[0])
            if current.parent:
                edges.append(current.parent)
            for urn in edges:
                if urn == target.urn:
                    return True
                found = next((r for r in self.registrations if r.urn == urn), None)
                if found is not None:
                    stack.append(found)
        return False


class ProgramFailed(Exception):
    def __init__(self, cause: BaseException, registrations: list[Registration]):
        super().__init__(str(cause))
        self.cause = cause
        self.registrations = registrations


def clear_root_resource() -> None:
    """No root resource: the next Stack made becomes it (the SDK's own reset; its signature takes a Resource)."""
    set_root_resource(None)  # type: ignore[arg-type]


def run_program(stack: str, overrides: Optional[dict[str, Any]] = None,
                secret_config: Optional[dict[str, str]] = None, password_characters: str = "",
                password_seed: Optional[int] = None, deployer_arn: str = DEPLOYER_ROLE,
                project: str = PROJECT, root: Path = REPO, preview: bool = False) -> ProgramRun:
    """Run `root`'s `__main__.py` for a stack file; `overrides` replace config keys (None deletes one);
    `project` is the project name Pulumi hands the program (the config keys stay in the `airflow` namespace);
    `preview` runs it as `pulumi preview` does.
    An encrypted value of the stack file runs as its setting's stand-in, as a secret (`secret_config` wins)."""
    encrypted: list[str] = []
    config = load_stack_config(stack, root, encrypted)
    secret_config = {**{key: encrypted_stand_in(key) for key in encrypted}, **(secret_config or {})}
    for key, value in (overrides or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            config.pop(full_key, None)
        else:
            config[full_key] = pulumi_config_value(value)
    secret_keys = []
    for key, value in (secret_config or {}).items():
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        config[full_key] = value
        secret_keys.append(full_key)

    mocks = PlatformMocks(password_characters, password_seed, deployer_arn)
    monitor = RecordingMonitor(mocks)
    clear_root_resource()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(config, secret_keys)
    # set_mocks made a root Stack of its own; the program gets a fresh one, as under the language host.
    clear_root_resource()

    def program() -> None:
        runpy.run_path(str(root / "__main__.py"), run_name="__main__")

    started = time.perf_counter()
    try:
        _sync_await(run_in_stack(program))
    except Exception as exc:  # noqa: BLE001 handed to the test with what was registered before it
        raise ProgramFailed(exc, monitor.registrations) from exc
    return ProgramRun(stack=stack, registrations=monitor.registrations, outputs=monitor.stack_outputs,
                      seconds=time.perf_counter() - started, invokes=mocks.invokes)
