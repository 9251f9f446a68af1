"""Availability zones by letter: the one rule the subnet layout and everything named per zone follow."""

from __future__ import annotations

# Zone letters a..f index the subnet layout: a zone's subnets depend on its own letter only, never on how many
# zones there are or where the zone sits in the list, so adding, removing or reordering zones never moves the
# subnets of the others (EC2 rejects a replacement subnet that overlaps the one it replaces).
ZONE_LETTERS = "abcdef"


def zone_index(zone: str) -> int:
    """The layout slot of a zone: the position of its letter (eu-west-1a -> 0, eu-west-1c -> 2)."""
    letter = zone[-1]
    if letter not in ZONE_LETTERS:
        raise ValueError(f"zone {zone!r}: the subnet layout has slots for zone letters "
                         f"{ZONE_LETTERS[0]} to {ZONE_LETTERS[-1]}")
    return ZONE_LETTERS.index(letter)
