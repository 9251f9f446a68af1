"""Rewrites the generated parts of Pulumi.yaml (config block) and docs/settings.md (settings table) from the
settings models. `make docs` (python -m scripts.generate_docs, from the root); the tests fail when either is out
of date."""

import re
import sys
from pathlib import Path

import yaml

from components.config import pulumi_yaml_config, settings_reference_markdown

ROOT = Path(__file__).resolve().parent.parent

project_file = ROOT / "Pulumi.yaml"
head = project_file.read_text().split("\nconfig:\n", 1)[0]
body = yaml.safe_dump({"config": pulumi_yaml_config()}, sort_keys=False, width=10_000, allow_unicode=True)
project_file.write_text(f"{head}\n{body}")

settings_file = ROOT / "docs" / "settings.md"
settings_doc = settings_file.read_text()
begin, end = "<!-- settings:begin -->", "<!-- settings:end -->"
pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
if not pattern.search(settings_doc):
    sys.exit(f"{settings_file}: no {begin} … {end} block to fill")
settings_file.write_text(pattern.sub(lambda _: f"{begin}\n{settings_reference_markdown()}\n{end}", settings_doc))
