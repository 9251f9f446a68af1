"""Values as the program registers them: secrets under Pulumi's marker, string assets."""

from __future__ import annotations

from typing import Any, Iterable

import pulumi
from pulumi.runtime import rpc

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    """The value with every secret marker removed (and a string asset as its text, so it can be searched)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, pulumi.StringAsset):
        return {"stringAsset": value.text}
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_strings(value: Any) -> Iterable[str]:
    """Every string in a value that is not under a secret marker."""
    if is_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from plain_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from plain_strings(v)
