"""Production Airflow on EKS (or on a laptop cluster): the stack's composition.

Thin on purpose: read the settings, build the components in dependency order, export the outputs.
"""

import pulumi
import pulumi_aws as aws

from components.cluster import Cluster, ClusterArgs
from components.settings import load_settings

settings = load_settings()
stack = pulumi.get_stack()

aws_provider = None
if settings.is_aws:
    aws_provider = aws.Provider(
        "aws",
        region=settings.region,
        default_tags={"tags": {"project": pulumi.get_project(), "stack": stack, "managed-by": "pulumi"}},
    )

cluster = Cluster("cluster", ClusterArgs(settings=settings, stack=stack, aws_provider=aws_provider))

pulumi.export("cluster_name", cluster.cluster_name)
if cluster.kubeconfig is not None:
    pulumi.export("kubeconfig", cluster.kubeconfig)
