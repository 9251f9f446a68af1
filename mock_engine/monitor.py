"""The mock monitor that records every registration: inputs, options, parent, dependencies, provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from mock_engine.values import unwrap


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    provider: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    inputs: dict[str, Any]          # as sent, secrets still marked
    protect: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    state: dict[str, Any] = field(default_factory=dict)
    # The URNs of former identities this resource takes over (a new name, type or parent each changes the URN).
    alias_urns: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False

    @property
    def alias_names(self) -> list[str]:
        """The names of those former identities."""
        return [urn.rsplit("::", 1)[-1] for urn in self.alias_urns]

    @property
    def values(self) -> dict[str, Any]:
        """Inputs with secret markers removed."""
        return unwrap(self.inputs)

    def depends_on(self, other: "Registration") -> bool:
        return other.urn in self.dependencies


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping parent, dependencies, provider and options of each registration."""

    def __init__(self, mocks: pulumi_mocks.Mocks):
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self.by_urn: dict[str, Registration] = {}
        self.stack_outputs: dict[str, Any] = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(Registration(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                custom=request.custom,
                provider=request.provider,
                dependencies=list(request.dependencies),
                property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
                inputs=rpc.deserialize_properties(request.object),
                protect=request.protect,
                retain_on_delete=request.retainOnDelete,
                ignore_changes=list(request.ignoreChanges),
                state=self.resources[response.urn].state,
                alias_urns=self.alias_urns(request),
                replace_on_changes=list(request.replaceOnChanges),
                delete_before_replace=request.deleteBeforeReplace,
            ))
            self.by_urn[response.urn] = self.registrations[-1]
        return response

    def alias_urns(self, request) -> list[str]:
        """The URNs a registration's aliases stand for, built the way this monitor builds URNs: each alias
        spec (what it sets; the registration's own name, type and parent otherwise), each alias given as a
        URN, and — as the engine does — the registration's name under each of its parent's former URNs."""
        stack_urn = self.make_urn("", "pulumi:pulumi:Stack", f"{pulumi.get_project()}-{pulumi.get_stack()}")
        urns = []
        for alias in request.aliases:
            if alias.HasField("urn"):
                urns.append(alias.urn)
                continue
            spec = alias.spec
            parent = stack_urn if spec.noParent else (spec.parentUrn or request.parent)
            _, qualified, name = self.make_urn(parent, spec.type or request.type,
                                               spec.name or request.name).rsplit("::", 2)
            urns.append(f"urn:pulumi:{spec.stack or pulumi.get_stack()}::{spec.project or pulumi.get_project()}"
                        f"::{qualified}::{name}")
        urns.extend(request.aliasURNs)
        parent = self.by_urn.get(request.parent)
        if parent is not None:
            for parent_alias in parent.alias_urns:
                alias_name = parent_alias.rsplit("::", 1)[-1]
                if request.name.startswith(parent.name):
                    urns.append(self.make_urn(parent_alias, request.type,
                                              alias_name + request.name.removeprefix(parent.name)))
        return sorted(set(urns))

    def RegisterResourceOutputs(self, request):
        if request.urn.endswith(f"::pulumi:pulumi:Stack::{pulumi.get_project()}-{pulumi.get_stack()}"):
            self.stack_outputs = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)
