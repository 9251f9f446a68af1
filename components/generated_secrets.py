"""Generated passwords and the digest pods roll on: the one way every component makes and hands on a secret."""

from __future__ import annotations

import hashlib

import pulumi
import pulumi_random as random

# Special characters of generated passwords: URL-reserved ones on purpose, so the connection URLs must
# percent-encode them.
URL_RESERVED_SPECIAL = "!#%&*()-_=+[]{}<>:?@/"
# What RDS and Aurora accept in a password: all of those but `@` and `/` (quotes and spaces are not among them).
RDS_SPECIAL = URL_RESERVED_SPECIAL.replace("@", "").replace("/", "")


def generated_password(resource_name: str, parent: pulumi.Resource, special: bool,
                       override_special: str = URL_RESERVED_SPECIAL, generation: int = 1) -> pulumi.Output[str]:
    """A generated password (pulumi_random: in the state, encrypted), 32 characters of every class. A new
    generation is a new password (keepers replace it); generation 1 has none, as passwords made before."""
    password = random.RandomPassword(
        resource_name, length=32, special=special, override_special=override_special if special else None,
        min_lower=2, min_upper=2, min_numeric=2, min_special=2 if special else 0,
        keepers={"generation": str(generation)} if generation > 1 else None,
        opts=pulumi.ResourceOptions(parent=parent))
    return password.result


def secrets_checksum(*values: pulumi.Input[str]) -> pulumi.Output[str]:
    """A digest of secret values, for pod annotations: when a value changes (a rotation), the pods that
    read it roll. The digest reveals nothing of the values, so it is not kept secret (it would hide every
    diff of the Helm values it sits in)."""
    digest = pulumi.Output.all(*values).apply(
        lambda plain: hashlib.sha256("\0".join(plain).encode()).hexdigest())
    return pulumi.Output.unsecret(digest)
