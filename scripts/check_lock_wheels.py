"""Whether every lock installs where the project says it does: for each supported platform and Python, each
package the lock selects there (its environment marker) has a wheel for it on PyPI whose sha256 the lock holds,
and admits that Python. That is what `pip install --require-hashes --only-binary :all:` needs (the Makefile's
install); a lock that fails here fails on someone's machine.

    python scripts/check_lock_wheels.py            # every lock; `make lock` runs it after compiling
Exit status 1 names each lock, platform, Python and package that would not install."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
# The index the locks are made from (uv.toml), read through its JSON simple API (PEP 691).
INDEX = "https://pypi.org/simple"
EVERYWHERE = ("linux-x86_64", "linux-aarch64", "macos-arm64", "macos-x86_64")
PYTHONS = ("3.11", "3.12", "3.13")
# Where each lock must install. Airflow's end-to-end tier has no Intel macOS wheels of lazy-object-proxy and
# libcst in its set (Airflow's own images are Linux); it runs on Linux and Apple silicon.
SUPPORTED = {
    "requirements.txt": (EVERYWHERE, PYTHONS),
    "policy/requirements.txt": (EVERYWHERE, PYTHONS),
    "requirements/dev.txt": (EVERYWHERE, PYTHONS),
    "requirements/scan.txt": (EVERYWHERE, PYTHONS),
    "requirements/e2e.txt": (("linux-x86_64", "linux-aarch64", "macos-arm64"), PYTHONS),
}
# The oldest of each the wheels must support: glibc 2.28 (Debian 10, Ubuntu 20.04, AL2023 has 2.34), macOS 13.
MANYLINUX_GLIBC = 28
MACOS = (13, 0)


def platform_tags(platform: str) -> list[str]:
    system, arch = platform.split("-")
    if system == "linux":
        legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
        found = [f"manylinux_2_{minor}_{arch}" for minor in range(MANYLINUX_GLIBC, 4, -1)]
        found += [f"{name}_{arch}" for name, minor in legacy.items() if minor <= MANYLINUX_GLIBC]
        return found + [f"linux_{arch}"]
    return list(tags.mac_platforms(MACOS, arch))


def environment(platform: str, python: str) -> dict[str, str]:
    system, arch = platform.split("-")
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "implementation_version": f"{python}.0", "platform_python_implementation": "CPython", "os_name": "posix",
            "sys_platform": "linux" if system == "linux" else "darwin",
            "platform_system": "Linux" if system == "linux" else "Darwin",
            "platform_machine": arch, "platform_release": "", "platform_version": "", "extra": ""}


def target_tags(platform: str, python: str) -> set[tags.Tag]:
    version = tuple(int(part) for part in python.split("."))
    platforms = platform_tags(platform)
    return {*tags.cpython_tags(version, platforms=platforms),
            *tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)}


def lock_entries(path: Path) -> list[tuple[str, str, set[str], str]]:
    """(name, version, sha256s, marker) of each line of a lock."""
    entries = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        requirement = Requirement(" ".join(w for w in words if not w.startswith("--hash=")))
        (specifier,) = requirement.specifier
        hashes = {w.removeprefix("--hash=sha256:") for w in words if w.startswith("--hash=")}
        entries.append((str(canonicalize_name(requirement.name)), specifier.version, hashes, str(requirement.marker or "")))
    return entries


def wheels(name: str) -> dict[str, list[dict]]:
    """A project's wheels on the index, by version: filename, sha256 and the Python versions they admit."""
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    found: dict[str, list[dict]] = {}
    for file in files:
        if file["filename"].endswith(".whl") and not file.get("yanked"):
            try:
                _, version, _, wheel_tags = parse_wheel_filename(file["filename"])
            except InvalidWheelFilename:   # a few ancient uploads; no lock pins them
                continue
            found.setdefault(str(version), []).append({"sha256": file["hashes"].get("sha256"), "tags": wheel_tags,
                                                       "requires_python": file.get("requires-python")})
    return found


def problems(lock: str, index: dict[str, dict[str, list[dict]]]) -> list[str]:
    found = []
    platforms, pythons = SUPPORTED[lock]
    entries = lock_entries(ROOT / lock)
    for platform in platforms:
        for python in pythons:
            wanted = target_tags(platform, python)
            for name, version, hashes, marker in entries:
                if marker and not Marker(marker).evaluate(environment(platform, python)):
                    continue
                usable = [f for f in index[name].get(version, []) if f["sha256"] in hashes and f["tags"] & wanted
                          and python_allowed(f["requires_python"], python)]
                if not usable:
                    found.append(f"{lock}: {name}=={version} has no wheel for {platform}, Python {python} "
                                 "among the files the lock's hashes name")
    return found


def python_allowed(requires_python: str | None, python: str) -> bool:
    return not requires_python or SpecifierSet(requires_python).contains(f"{python}.0")


def main() -> int:
    names = sorted({name for lock in SUPPORTED for name, _, _, _ in lock_entries(ROOT / lock)})
    with ThreadPoolExecutor(max_workers=16) as pool:
        index = dict(zip(names, pool.map(wheels, names), strict=True))
    found = [problem for lock in SUPPORTED for problem in problems(lock, index)]
    for problem in found:
        print(problem, file=sys.stderr)
    checked = ", ".join(f"{lock} ({len(SUPPORTED[lock][0])} platforms × Python {'/'.join(SUPPORTED[lock][1])})"
                        for lock in SUPPORTED)
    print(f"{'FAILED' if found else 'ok'}: {checked}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
