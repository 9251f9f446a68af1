"""IAM documents shared by the components."""

from __future__ import annotations

import json

# EKS Pod Identity: the agent assumes the role on the pod's behalf and tags the session with the
# pod's namespace and service account, so one trust policy serves every association.
POD_IDENTITY_TRUST_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "pods.eks.amazonaws.com"},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
    }],
})


def service_trust_policy(service: str, source_account: str = "") -> str:
    """A trust policy that lets one AWS service (e.g. eks.amazonaws.com) assume the role; with `source_account`,
    only on behalf of that account's resources (the confused-deputy guard)."""
    statement: dict = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if source_account:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": source_account}}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def managed_policy_arn(partition: str, name: str) -> str:
    return f"arn:{partition}:iam::aws:policy/{name}"
