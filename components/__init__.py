"""Reusable Pulumi components of the Airflow-on-EKS platform."""
