"""What a stack deploys, and what a change does to it, without credentials or network.

    python -m plan --stack prod                        components, resources, Helm releases, policy
    python -m plan --stack prod --format json          the same, machine-readable
    python -m plan --stack prod --format mermaid       the component graph as a Mermaid flowchart
    python -m plan --stack prod --against origin/main  what changes from that git ref to the working tree

The program runs under the mock engine the tests use too (mock_engine/): every resource the stack file
registers is recorded with its inputs, options and dependencies; secrets print as `[secret]`. Exit codes:
0 = no change (or no `--against`), 2 = changes, 1 = error or a mandatory policy violation.

    common        ROOT, PlanError and the names every part shares
    document      one stack as a document (the program under the mock engine, the policy pack's verdict)
    replacements  the tables: which input changes replace which resource types, refusals, maintenance deferrals
    diff          two documents compared, replacements followed through the inputs that carry them
    against       a git ref's program, evaluated by this engine in a child process
    reports       text, Mermaid and JSON
    cli           the arguments and exit codes of `python -m plan`
"""

from plan.common import COMPONENT_PREFIX, HELM_RELEASE, REDACTED, ROOT, PlanError
from plan.diff import compare, data_loss_warnings, deferred_to_maintenance, flatten, has_changes, replacement_reason
from plan.document import (
    MODELLED_CHART_MINUTES,
    MODELLED_CREATE_MINUTES,
    MODELLED_DEFAULT_MINUTES,
    longest_chain,
    policy_enforcement,
    policy_report,
    policy_resources,
    redact,
    stack_document,
    steps,
)
from plan.replacements import (
    DEFERRED_INPUTS,
    KUBERNETES_REPLACED_ON_CHANGE,
    REPLACED_ON_CHANGE,
    REPLACED_WHEN,
    SET_INPUTS,
    UPDATED_IN_PLACE,
    refusal,
)
from plan.reports import diff_text, dumps, mermaid_report, policy_text, short, text_report

__all__ = [
    "COMPONENT_PREFIX", "DEFERRED_INPUTS", "HELM_RELEASE", "KUBERNETES_REPLACED_ON_CHANGE", "MODELLED_CHART_MINUTES",
    "MODELLED_CREATE_MINUTES", "MODELLED_DEFAULT_MINUTES", "REDACTED", "REPLACED_ON_CHANGE", "REPLACED_WHEN", "ROOT",
    "SET_INPUTS", "UPDATED_IN_PLACE", "PlanError", "compare", "data_loss_warnings", "deferred_to_maintenance",
    "diff_text", "dumps", "flatten", "has_changes", "longest_chain", "mermaid_report", "policy_enforcement",
    "policy_report", "policy_resources", "policy_text", "redact", "refusal", "replacement_reason", "short",
    "stack_document", "steps", "text_report",
]
