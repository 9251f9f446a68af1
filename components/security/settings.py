"""Security's settings: who may reach what (operators, egress allow-lists, the ingress), the generated secrets'
rotations, and TLS."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from components.platform import (
    PlatformSettings,
    principal_arns_problem,
)


class SecuritySettings(PlatformSettings):
    """Who may reach what, and the secrets: operators, egress allow-lists, rotations, TLS and the way in."""

    local_ingress_namespace: str = Field(
        default="kube-system", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Namespace of the local cluster's ingress controller (k3d's Traefik lives in kube-system), "
                    "admitted to the Airflow API server by the NetworkPolicies (target=local).")
    operator_principal_arns: list[str] = Field(
        default_factory=list, max_length=50,
        description="IAM role or user ARNs given the read-only `airflow-operators` group in the Airflow namespace.")
    worker_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks Airflow workers may reach beyond the platform (your data sources); egress is "
                    "otherwise denied. `0.0.0.0/0` opens everything. Tasks' KubernetesPodOperator pods get the same.")
    triggerer_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks the triggerer may reach beyond the platform: what deferred tasks' triggers poll (HTTP "
                    "APIs, AWS services other than S3); usually the same as workerEgressCidrs.")
    dag_processor_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Networks the DAG processor may reach beyond the platform: Airflow 3 runs DAG callbacks "
                    "(on_failure_callback, on_success_callback) and their e-mail there.")
    git_sync_egress_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="Where git-sync may fetch the repository from, on 443: your git host's IPv4 networks (GitHub "
                    "publishes its `git` ranges). Empty means the whole public internet. Inside private addresses or "
                    "the VPC, name the host's own addresses (/28 or narrower). The rule is the pods' (the DAG "
                    "processor, triggerer and workers): their own code reaches these networks too.")
    # renovate: datasource=helm depName=cert-manager registryUrl=https://charts.jetstack.io
    cert_manager_chart_version: str = Field(
        default="v1.21.1", pattern=r"^v\d+\.\d+\.\d+$", description="Chart version of cert-manager.")
    broker_password_generation: int = Field(
        default=1, ge=1, le=1000,
        description="Generation of the broker's password (Redis's, or ElastiCache's AUTH token): raising it "
                    "generates a new one in the next `pulumi up` (docs/operations.md, Rotate secrets).")
    fernet_key_rotation: int = Field(
        default=1, ge=1, le=1000,
        description="Generation of the Fernet key: raising it generates a new key in the next `pulumi up` (a "
                    "rotation as a reviewed change; set previousFernetKey in the same change, docs/operations.md, Rotate secrets).")
    previous_fernet_key: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9_-]{43}=$", repr=False,
        json_schema_extra={"secret": True, "stand_in": "A" * 43 + "="},
        description="The Fernet key being rotated out (set with `pulumi config set --secret` while rotating): "
                    "Airflow then decrypts with both keys and encrypts with the new one, until "
                    "`airflow rotate-fernet-key` has re-encrypted everything (docs/operations.md, Rotate secrets).")
    certificate_arn: str = Field(
        default="", pattern=r"^$|^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$",
        description="An existing ACM certificate for ingressHost; empty means one is issued and DNS-validated in route53ZoneId.")
    route53_zone_id: str = Field(
        default="", pattern=r"^$|^Z[A-Z0-9]{1,31}$",
        description="Route53 hosted zone of ingressHost: holds its alias record and validates the ACM certificate. Required when target=aws.")
    ingress_scheme: Literal["internet-facing", "internal"] = Field(
        default="internet-facing", description="Whether the ALB is reachable from the internet or only inside the VPC.")
    ingress_allowed_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list, max_length=50,
        description="CIDRs allowed to reach the ALB; empty allows everyone the scheme allows.")

    @field_validator("operator_principal_arns")

    @classmethod
    def _operator_principal_arns(cls, values: list[str]) -> list[str]:
        principal_arns_problem(values)
        return values
