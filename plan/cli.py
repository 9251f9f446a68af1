"""`python -m plan`: the arguments, the run (with progress on stderr) and the exit code."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from plan.against import document_at, resolve
from plan.common import ROOT, PlanError
from plan.diff import compare, data_loss_warnings, has_changes
from plan.document import stack_document
from plan.reports import diff_text, dumps, mermaid_report, policy_text, text_report

USAGE = """What a stack deploys, and what a change does to it, without credentials or network.

    python -m plan --stack prod                        components, resources, Helm releases, policy
    python -m plan --stack prod --format json          the same, machine-readable
    python -m plan --stack prod --format mermaid       the component graph as a Mermaid flowchart
    python -m plan --stack prod --against origin/main  what changes from that git ref to the working tree

Run from the repository's root. Exit codes: 0 = no change (or no `--against`), 2 = changes, 1 = error or a
mandatory policy violation."""

PROGRESS_AFTER_SECONDS = 2.0


class Progress:
    """Says on stderr what is running once it has taken longer than a moment, and how long it took."""

    def __init__(self, what: str):
        self.what = what
        self.started = time.perf_counter()
        self.spoke = False
        self.timer = threading.Timer(PROGRESS_AFTER_SECONDS, self._speak)
        self.timer.daemon = True

    def _speak(self):
        self.spoke = True
        print(f"plan: {self.what}…", file=sys.stderr, flush=True)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        if self.spoke:
            print(f"plan: {self.what}: {time.perf_counter() - self.started:.1f} s", file=sys.stderr, flush=True)


def parse_args(argv: Optional[Iterable[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m plan", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, help="stack file Pulumi.<stack>.yaml (local, staging, prod, …)")
    parser.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    parser.add_argument("--against", metavar="GIT_REF",
                        help="show what changes from this ref (branch, tag, commit) to the working tree")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # the program to plan
    # Digests of the (mock) secret values instead of `[secret]`: for scripts/record_graph.py.
    parser.add_argument("--secret-digests", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_program_importable(root: Path) -> None:
    """The program's modules are imported from the import path, as the language host imports them from the
    project directory: `root`'s must be the ones found (another checkout's come first on PYTHONPATH)."""
    spec = importlib.util.find_spec("components")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is None or not origin.is_relative_to(root):
        raise PlanError(f"the program's modules (components) are imported from {origin or 'nowhere'}, not from "
                        f"{root}: run `python -m plan` from the repository's root")


def main(argv: Optional[Iterable[str]] = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    try:
        check_program_importable(root)
        if args.against:
            if args.format == "mermaid":
                raise PlanError("--against prints a diff: use --format text or json")
            commit = resolve(args.against)
            with Progress(f"evaluating stack {args.stack} at {args.against} and in the working tree"):
                result: dict = {}

                def plan_ref():
                    try:
                        result["old"] = document_at(args.against, commit, args.stack)
                    except PlanError as exc:
                        result["error"] = exc

                # The ref's program runs in a child process while this one runs the working tree's.
                worker = threading.Thread(target=plan_ref)
                worker.start()
                new_doc = stack_document(args.stack, root)
                worker.join()
            if "error" in result:
                raise result["error"]
            diff = compare(result["old"], new_doc)
            diff["against"] = args.against
            diff["warnings"] = data_loss_warnings(diff, new_doc)
            diff["policy"] = new_doc["policy"]
            print(dumps(diff) if args.format == "json" else diff_text(diff, args.against) + "\n\n"
                  + policy_text(new_doc))
            code = 2 if has_changes(diff) else 0
        else:
            with Progress(f"evaluating stack {args.stack}"):
                doc = stack_document(args.stack, root, secret_digests=args.secret_digests)
            print({"json": dumps, "text": text_report, "mermaid": mermaid_report}[args.format](doc))
            code = 0
            new_doc = doc
    except PlanError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 1
    mandatory = [v for v in new_doc["policy"]["violations"] if v["enforcement"] == "mandatory"]
    if mandatory:
        print(f"plan: {len(mandatory)} mandatory policy violations", file=sys.stderr)
        return 1
    return code
