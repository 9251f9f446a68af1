"""The documentation a newcomer reads: a short README that names every component and links every topic, and docs
whose relative links and anchors all resolve (GitHub's heading anchors: lower case, punctuation dropped, spaces
to dashes, a repeated heading numbered)."""

from __future__ import annotations

import re
from pathlib import Path

from mock_engine import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code blanked (a link inside code is not a link)."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line))
    return lines


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text().split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"^#{1,6} (.+?)\s*#*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):
                continue          # an absolute URL
            file_part, _, anchor = target.partition("#")
            destination = (path.parent / file_part).resolve() if file_part else path
            if not destination.exists():
                broken.append(f"{target}: no such file")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{target}: no such heading")
    return broken


def test_every_relative_link_and_anchor_resolves():
    problems = {str(path.relative_to(REPO)): broken_links(path) for path in [README, *DOCS]}
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](#nowhere) [missing](other.md) `[code](#not-a-link)`\n")
    assert broken_links(page) == ["#nowhere: no such heading", "other.md: no such file"]


def test_the_readme_is_short_and_leads_to_every_topic():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(text) if target.startswith("docs/")}
    assert {path.name for path in DOCS} <= linked, "a docs file the README does not lead to"


def test_the_readme_names_every_component_and_package():
    """The component table: each ComponentResource's package, and every module beside them, on a line."""
    text = README.read_text()
    packages = {path.name for path in (REPO / "components").iterdir() if (path / "__init__.py").exists()}
    modules = {path.name for path in (REPO / "components").glob("*.py") if path.name != "__init__.py"}
    assert {name for name in packages if f"components/{name}/" not in text} == set()
    assert {name for name in modules if name not in text} == set()
