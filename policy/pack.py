"""The rules of `rules.py` as pulumi-policy policies (imported by `__main__.py`, and by the tests that drive
them through pulumi-policy's own argument classes)."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy
from pulumi_policy.proxy import UnknownValueError

import rules

# A bucket or database whose configuration a preview cannot know yet is skipped alone; the rest are still
# judged.
rules.UNKNOWN_VALUE_ERRORS = (UnknownValueError,)


def _level(rule: rules.Rule) -> EnforcementLevel:
    return EnforcementLevel.MANDATORY if rule.mandatory else EnforcementLevel.ADVISORY


def _resource_policy(rule: rules.Rule) -> ResourceValidationPolicy:
    def validate(args, report_violation):
        resource = rules.Resource(type=args.resource_type, name=args.name, urn=args.urn, props=args.props,
                                  protect=bool(args.opts.protect))
        for message in rule.check(resource):
            report_violation(message)
    return ResourceValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                    enforcement_level=_level(rule))


def _stack_policy(rule: rules.Rule) -> StackValidationPolicy:
    def validate(args, report_violation):
        resources = [rules.Resource(type=r.resource_type, name=r.name, urn=r.urn, props=r.props,
                                    protect=bool(r.opts.protect),
                                    property_dependencies={key: [d.urn for d in deps]
                                                           for key, deps in r.property_dependencies.items()})
                     for r in args.resources]
        for urn, message in rule.check(resources):
            report_violation(message, urn)
    return StackValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                 enforcement_level=_level(rule))


def policies() -> list:
    return [_resource_policy(rule) if rule.scope == "resource" else _stack_policy(rule) for rule in rules.RULES]
