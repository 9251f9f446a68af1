"""Rewrites the generated parts of Pulumi.yaml (config block) and README.md (settings table) from the
settings model. `make docs` (python -m scripts.generate_docs, from the root); the tests fail when either is out
of date."""

import re
from pathlib import Path

import yaml

from components.settings import pulumi_yaml_config, settings_reference_markdown

ROOT = Path(__file__).resolve().parent.parent

project_file = ROOT / "Pulumi.yaml"
head = project_file.read_text().split("\nconfig:\n", 1)[0]
body = yaml.safe_dump({"config": pulumi_yaml_config()}, sort_keys=False, width=10_000, allow_unicode=True)
project_file.write_text(f"{head}\n{body}")

readme_file = ROOT / "README.md"
readme = readme_file.read_text()
begin, end = "<!-- settings:begin -->", "<!-- settings:end -->"
pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
readme_file.write_text(pattern.sub(lambda _: f"{begin}\n{settings_reference_markdown()}\n{end}", readme))
