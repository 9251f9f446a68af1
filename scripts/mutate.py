"""The mutation gate: apply each mutation of tests/mutations/curated.yaml to a copy of the repository and run the
tests it names with -x; a mutation the tests do not catch survives, and the gate fails. Prints each result and
its time. Run with `make mutate` (the default tier's environment: Helm, checkov, Node tools)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import yaml

ROOT = Path(__file__).resolve().parents[1]
CURATED = ROOT / "tests" / "mutations" / "curated.yaml"


def copy_tree(target: Path) -> None:
    """The working tree's files (tracked or not, ignored ones left out), as `git ls-files` lists them."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(tree: Path, tests: list[str]) -> tuple[int, list[str]]:
    """pytest's exit code, and the failures' messages ("AssertionError: …" when an assertion failed), read from
    its JUnit report. The virtualenvs stay where `make` built them; the copy is only the code under test."""
    report = tree.parent / "report.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}", *tests], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    failures = []
    if report.exists():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            for failure in case.findall("failure"):
                failures.append(f"{case.get('classname')}::{case.get('name')}: {failure.get('message') or ''}")
            # An error is a fixture's (set-up or tear-down), never the test's verdict.
            for error in case.findall("error"):
                failures.append(f"{case.get('classname')}::{case.get('name')}: error: {error.get('message') or ''}")
        report.unlink()
    return done.returncode, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only the mutations of these names")
    args = parser.parse_args()
    mutations = yaml.safe_load(CURATED.read_text())
    chosen = [m for m in mutations if not args.only or m["name"] in args.only]
    survived, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutate-") as directory:
        # The tests read the chart sources and schemas in ../shared, beside the repository.
        tree = Path(directory) / ROOT.name
        (Path(directory) / "shared").symlink_to((ROOT.parent / "shared").resolve())
        copy_tree(tree)
        for mutation in chosen:
            path = tree / mutation["file"]
            original = path.read_text()
            if original.count(mutation["old"]) != 1:
                print(f"{mutation['name']}: `old` occurs {original.count(mutation['old'])} times in "
                      f"{mutation['file']}, not once: fix the list")
                return 1
            clock = time.perf_counter()
            code, failures = run_tests(tree, mutation["tests"])
            if code != 0:
                print(f"{mutation['name']}: its tests fail without the mutation: {failures[:1]}")
                return 1
            path.write_text(original.replace(mutation["old"], mutation["new"]))
            try:
                code, failures = run_tests(tree, mutation["tests"])
            finally:
                path.write_text(original)
            # Caught: a named rule test failed on its own verdict (exit 1), not a crash, a fixture's error or no test
            # run. pytest reports a failed `assert` as "assert …", or "AssertionError: …" with a message, and the
            # test's own `pytest.fail` (a `pytest.raises` whose exception did not come included) as "Failed: …".
            caught = code == 1 and bool(failures) and all(
                f.split(": ", 1)[1].startswith(("assert", "AssertionError", "Failed: ")) for f in failures)
            verdict = "caught  " if caught else ("SURVIVED" if code == 0 else "CRASHED ")
            print(f"{verdict} {mutation['name']} ({time.perf_counter() - clock:.0f} s)"
                  + (f": {failures[0][:220]}" if failures else f": pytest exit {code}"))
            if not caught:
                survived.append(mutation["name"])
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught in {time.perf_counter() - started:.0f} s")
    if survived:
        print(f"survived: {', '.join(survived)}: a test that states the rule each breaks is missing")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
