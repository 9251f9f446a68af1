"""A git ref's version of a stack: that commit's program, evaluated by the working tree's engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from plan.common import ROOT, PlanError


def git(*args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True).stdout
    except FileNotFoundError as exc:
        raise PlanError("git is needed for --against") from exc
    except subprocess.CalledProcessError as exc:
        raise PlanError(f"git {' '.join(args)}: {exc.stderr.decode().strip()}") from exc


def resolve(ref: str) -> str:
    """The commit a ref names, or a clear error before anything runs."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except PlanError as exc:
        raise PlanError(f"cannot read git ref {ref!r}: not a commit in {ROOT}") from exc


# What of a commit's tree is its program: what the language host runs (the entry point, its modules, the
# project and stack files), and what the plan reads beside it (the lock, the policy pack's per-stack config).
# Nothing else of that tree is extracted where the child process imports from: the engine, the plan and the
# policy rules are always the working tree's.
PROGRAM = ("__main__.py", "components", "Pulumi.yaml", "requirements.txt", "policy/config")


def document_at(ref: str, commit: str, stack: str, secret_digests: bool = False) -> Optional[dict]:
    """The stack as `ref` (resolved to `commit`) defines it: that commit's program and stack file, run by this
    plan in a child process (so its modules never mix with the working tree's). None when the commit has no
    such stack file."""
    # The project may sit in a subdirectory of its repository.
    prefix = git("rev-parse", "--show-prefix").decode().strip()
    archive = git("archive", "--format=tar", f"{commit}:{prefix}" if prefix else commit)
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        tree, program = Path(tmp) / "tree", Path(tmp) / "program"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
        if not (tree / f"Pulumi.{stack}.yaml").exists():
            return None
        for name in (*PROGRAM, f"Pulumi.{stack}.yaml"):
            if (tree / name).exists():
                (program / name).parent.mkdir(parents=True, exist_ok=True)
                (tree / name).rename(program / name)
        # The child imports the commit's program first, then this tree's engine (`-P`: nothing else in front,
        # not even the current directory), as the language host imports a program from its project directory.
        child = subprocess.run([sys.executable, "-P", "-m", "plan", "--stack", stack, "--format", "json",
                                "--root", str(program), *(["--secret-digests"] if secret_digests else [])], capture_output=True, text=True, cwd=program,
                               env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                    "PYTHONPATH": os.pathsep.join((str(program), str(ROOT)))})
        requirements = program / "requirements.txt"
        same_requirements = requirements.exists() and requirements.read_bytes() == (ROOT / "requirements.txt").read_bytes()
    if child.returncode not in (0, 1) or not child.stdout.strip():
        raise PlanError(f"the program at {ref} failed for stack {stack}:\n{child.stderr.strip()}")
    if not same_requirements:
        print(f"plan: requirements.txt differs at {ref}: both sides run with this virtualenv's providers, so what a "
              "provider upgrade itself changes does not show", file=sys.stderr)
    return json.loads(child.stdout)
