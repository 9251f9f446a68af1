"""The way in on AWS: an HTTPS-only ALB Ingress with the ACM certificate, and a Route53 alias for its host.

Airflow and Grafana share one load balancer through an ingress group: the AWS Load Balancer Controller
merges Ingresses of the same `group.name` into one ALB, with one listener rule per host. Settings that belong
to the load balancer (scheme, listeners, TLS policy, allow-list, attributes) must be the same on every
Ingress of the group, so all of them come from `alb_annotations`.
"""

from __future__ import annotations

import json
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.handles import Ingress

ALB_GROUP = "airflow-platform"


def alb_annotations(ingress: Ingress, health_check_path: str, group_order: int) -> dict:
    annotations = {
        "alb.ingress.kubernetes.io/group.name": ALB_GROUP,
        "alb.ingress.kubernetes.io/group.order": str(group_order),
        "alb.ingress.kubernetes.io/scheme": ingress.scheme,
        # Straight to the pods (VPC CNI addresses): no NodePort hop, and the NetworkPolicies see the ALB.
        "alb.ingress.kubernetes.io/target-type": "ip",
        "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTP": 80}, {"HTTPS": 443}]),
        "alb.ingress.kubernetes.io/ssl-redirect": "443",
        "alb.ingress.kubernetes.io/certificate-arn": ingress.certificate_arn,
        "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
        "alb.ingress.kubernetes.io/healthcheck-path": health_check_path,
        "alb.ingress.kubernetes.io/success-codes": "200",
        "alb.ingress.kubernetes.io/load-balancer-attributes": "routing.http.drop_invalid_header_fields.enabled=true",
    }
    if ingress.allowed_cidrs:
        annotations["alb.ingress.kubernetes.io/inbound-cidrs"] = ",".join(ingress.allowed_cidrs)
    return annotations


def alb_ingress(resource_name: str, *, ingress: Ingress, namespace: pulumi.Input[str], host: str, service: str,
                port: int, health_check_path: str, group_order: int, opts: pulumi.ResourceOptions,
                record_resource_name: Optional[str] = None) -> pulumi.Output[str]:
    """The Ingress and its DNS alias; returns the https URL once the record exists."""
    aws_provider = ingress.aws_provider
    route = k8s.networking.v1.Ingress(
        resource_name,
        metadata={"name": service, "namespace": namespace,
                  "annotations": alb_annotations(ingress, health_check_path, group_order)},
        spec={
            "ingressClassName": "alb",
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}}}]}}],
        },
        opts=opts)
    # Pulumi waits for the Ingress to get its load balancer address, which the alias needs.
    load_balancer_host = route.status.apply(lambda status: status.load_balancer.ingress[0].hostname)
    alb_zone = aws.lb.get_hosted_zone_id(load_balancer_type="application", region=ingress.region,
                                         opts=pulumi.InvokeOptions(provider=aws_provider)).id
    record = aws.route53.Record(
        record_resource_name or f"{resource_name}-host",
        zone_id=ingress.route53_zone_id,
        name=host,
        type="A",
        aliases=[{"name": load_balancer_host, "zone_id": alb_zone, "evaluate_target_health": True}],
        opts=pulumi.ResourceOptions(parent=opts.parent, provider=aws_provider))
    return record.fqdn.apply(lambda _: f"https://{host}")
