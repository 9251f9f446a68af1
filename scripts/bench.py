"""How long the whole program takes to evaluate under the mock engine, per stack file.

    python -m scripts.bench        (from the repository's root: `make bench`)

Prints figures; asserts nothing (machines differ). The first stack pays for importing pulumi_aws, so
each stack is run several times and the best and the median are shown.
"""

from __future__ import annotations

import statistics
import time

started = time.perf_counter()
from mock_engine import STACKS, run_program  # noqa: E402 (the import is what is timed)

print(f"import of the program's modules and mocks: {time.perf_counter() - started:.2f} s")
ROUNDS = 5
for stack in STACKS:
    seconds = []
    for _ in range(ROUNDS):
        run = run_program(stack)
        seconds.append(run.seconds)
    print(f"{stack:8s} {len(run.registrations):4d} resources  first {seconds[0]:.2f} s  "
          f"best {min(seconds):.2f} s  median {statistics.median(seconds):.2f} s  ({ROUNDS} runs)")
