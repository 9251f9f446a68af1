"""Observability's settings: kube-prometheus-stack, Grafana, the alerts' thresholds and receivers."""

from __future__ import annotations

from pydantic import Field

from components.platform import (
    PlatformSettings,
)


class ObservabilitySettings(PlatformSettings):
    """kube-prometheus-stack, Grafana and the alerts."""

    # renovate: datasource=helm depName=kube-prometheus-stack registryUrl=https://prometheus-community.github.io/helm-charts
    kube_prometheus_stack_chart_version: str = Field(
        default="88.5.3", pattern=r"^\d+\.\d+\.\d+$", description="Chart version of kube-prometheus-stack.")
    prometheus_retention_days: int = Field(
        default=15, ge=1, le=365, description="Days Prometheus keeps its samples.")
    prometheus_storage_gib: int = Field(
        default=20, ge=5, le=4096,
        description="Volume of each Prometheus replica, in GiB; samples are also dropped at 90 % of it.")
    grafana_host: str = Field(
        default="", pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$",
        description="Host name of Grafana, served by the Airflow ALB (an ingress group) with the same certificate; "
                    "required when target=aws, in the zone route53ZoneId.")
    alert_slack_webhook_url: str = Field(
        default="", pattern=r"^$|^https://\S+$", repr=False,
        json_schema_extra={"secret": True, "stand_in": "https://hooks.slack.invalid/stand-in"},
        description="Slack incoming-webhook URL alerts are sent to (set with `pulumi config set --secret`).")
    alert_slack_channel: str = Field(
        default="", pattern=r"^$|^[#@]?[a-z0-9._-]{1,80}$",
        description="Slack channel for alerts; empty uses the webhook's own channel.")
    alert_email_to: str = Field(
        default="", pattern=r"^$|^[^@\s]+@[^@\s]+$", description="E-mail address alerts are sent to.")
    alert_email_from: str = Field(
        default="", pattern=r"^$|^[^@\s]+@[^@\s]+$", description="Sender address of alert e-mails.")
    alert_smtp_smarthost: str = Field(
        default="", pattern=r"^$|^[A-Za-z0-9.-]+:\d{1,5}$",
        description="SMTP server of alert e-mails, host:port (TLS required).")
    alert_smtp_username: str = Field(default="", max_length=256, description="SMTP user of alert e-mails.")
    alert_smtp_password: str = Field(
        default="", max_length=256, repr=False, json_schema_extra={"secret": True, "stand_in": "stand-in"},
        description="SMTP password of alert e-mails (set with `pulumi config set --secret`).")
    alert_runbook_base_url: str = Field(
        default="https://github.com/example/airflow-platform/blob/main/docs/alerts.md", pattern=r"^https?://\S+$",
        description="Where docs/alerts.md is published: every alert's runbook_url is this plus the alert's anchor.")
    postgres_replication_lag_alert_seconds: int = Field(
        default=300, ge=10, le=86400, description="Replication lag of a standby that raises an alert, in seconds.")
    airflow_queued_alert_minutes: int = Field(
        default=15, ge=1, le=1440,
        description="Minutes tasks may sit queued while none run before an alert is raised.")
