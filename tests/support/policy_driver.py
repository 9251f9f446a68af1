"""Runs the policy pack's policies through pulumi-policy's own classes, in the pack's virtualenv.

    PYTHONPATH=policy policy/venv/bin/python tests/support/policy_driver.py <graph.json>

The graph is a list of resources (type, name, urn, props, protect, propertyDependencies), as the tests
record them. Props reach each policy through pulumi-policy's unknown-checking proxy, as under
`pulumi preview`. Prints the violations as JSON: [{policy, urn, message}] or, for a policy that read a
value preview cannot know, [{policy, urn, unknown: path}].
"""

import json
import sys
from pathlib import Path

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

# The pack's modules (pack, rules) come from policy/ on PYTHONPATH, as `pulumi preview --policy-pack policy`
# runs them from there.
from pack import policies


def options(entry):
    return PolicyResourceOptions(protect=entry["protect"], ignore_changes=[], delete_before_replace=None,
                                 aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
                                 additional_secret_outputs=[])


def main(path):
    graph = json.loads(Path(path).read_text())
    found = []
    stack_resources = {}
    for entry in graph:
        stack_resources[entry["urn"]] = PolicyResource(
            resource_type=entry["type"], props=unknown_checking_proxy(entry["props"]), urn=entry["urn"],
            name=entry["name"], opts=options(entry), provider=None, parent=None, dependencies=[],
            property_dependencies={})
    for entry in graph:
        stack_resources[entry["urn"]].property_dependencies = {
            key: [stack_resources[u] for u in urns if u in stack_resources]
            for key, urns in entry["propertyDependencies"].items()}
    for policy in policies():
        if isinstance(policy, ResourceValidationPolicy):
            for entry in graph:
                args = ResourceValidationArgs(resource_type=entry["type"], props=unknown_checking_proxy(entry["props"]),
                                              urn=entry["urn"], name=entry["name"], opts=options(entry),
                                              provider=None)
                try:
                    policy.validate(args, lambda message, urn=None, e=entry, p=policy: found.append(
                        {"policy": p.name, "urn": urn or e["urn"], "message": message}))
                except UnknownValueError as unknown:
                    found.append({"policy": policy.name, "urn": entry["urn"], "unknown": ".".join(unknown.props)})
        else:
            args = StackValidationArgs(resources=list(stack_resources.values()))
            try:
                policy.validate(args, lambda message, urn=None, p=policy: found.append(
                    {"policy": p.name, "urn": urn, "message": message}))
            except UnknownValueError as unknown:
                found.append({"policy": policy.name, "urn": None, "unknown": ".".join(unknown.props)})
    print(json.dumps({"policies": [p.name for p in policies()], "violations": found}))


if __name__ == "__main__":
    main(sys.argv[1])
