"""Airflow connections and variables from AWS Secrets Manager (`secretsBackend: aws-secrets-manager`).

Airflow's SecretsManagerBackend (the amazon provider, in the official image) looks up `<prefix>/connections/<conn_id>`
and `<prefix>/variables/<key>` before the metadata database. The Airflow pods read them through EKS Pod Identity
with a policy scoped to that prefix, over the VPC's Secrets Manager endpoint.
"""

from __future__ import annotations

import json

SECRETS_MANAGER_BACKEND = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SECRET_READ_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]


# The connection the platform itself sets (remote logging's, from the pods' environment) is never looked up
# there: a secret of that name could not take over where task logs go, and each log upload costs no call.
PLATFORM_CONNECTIONS_LOOKUP_PATTERN = "^(?!aws_default$)"


def backend_kwargs(prefix: str, region: str) -> dict:
    """SecretsManagerBackend's arguments: connections and variables under the stack's prefix; Airflow's own
    configuration is never looked up there (config_prefix off: one call fewer per option read)."""
    return {"connections_prefix": f"{prefix}/connections", "variables_prefix": f"{prefix}/variables",
            "connections_lookup_pattern": PLATFORM_CONNECTIONS_LOOKUP_PATTERN,
            "config_prefix": None, "region_name": region}


def airflow_secrets_config(prefix: str, region: str) -> dict:
    """The chart's `config.secrets` section."""
    return {"backend": SECRETS_MANAGER_BACKEND, "backend_kwargs": json.dumps(backend_kwargs(prefix, region))}


def secrets_read_policy(partition: str, region: str, account_id: str, prefix: str) -> str:
    """Read the stack's connections and variables, and nothing else. Secrets Manager appends `-` and six
    characters to a secret's ARN."""
    base = f"arn:{partition}:secretsmanager:{region}:{account_id}:secret:{prefix}"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "AirflowConnectionsAndVariables", "Effect": "Allow", "Action": SECRET_READ_ACTIONS,
                       "Resource": [f"{base}/connections/*", f"{base}/variables/*"]}],
    })
