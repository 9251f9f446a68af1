"""The platform's policy pack: `pulumi preview --policy-pack policy` (see docs/delivery.md)."""

from pulumi_policy import PolicyPack

from pack import policies

PolicyPack(name="airflow-platform", policies=policies())
