"""Record every stack's condensed graph at a git ref (tests/support/graph.py), for a test that holds a refactoring
to it: `PYTHONPATH=tests python -m scripts.record_graph <ref> <file>`. The ref's program is run by this tree's plan
and mock engine (as `python -m plan --against` does), so only the program differs between the two sides."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mock_engine import STACKS
from plan.against import document_at, resolve
from support.graph import stack_fingerprint


def main(ref: str, out: Path) -> None:
    commit = resolve(ref)
    recorded = {}
    for stack in STACKS:
        doc = document_at(ref, commit, stack, secret_digests=True)
        if doc is None:
            raise SystemExit(f"{ref} has no stack file Pulumi.{stack}.yaml")
        recorded[stack] = stack_fingerprint(doc)
    out.write_text(json.dumps({"ref": commit, "stacks": recorded}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {', '.join(STACKS)} at {commit} in {out}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
