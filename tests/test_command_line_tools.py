"""Every command-line tool the README shows runs both as `python -m MODULE` and as an installed
command, and the README's table says so."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; we support 3.10
SECTION = PYPROJECT.split("[project.scripts]\n")[1].split("\n\n")[0]
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', SECTION, flags=re.MULTILINE))
README = (ROOT / "README.md").read_text()


def test_every_module_the_readme_runs_is_an_installed_command():
    assert len(SCRIPTS) == SECTION.count("\n") + 1  # every line of the section was read
    shown = set(re.findall(r"python -m (geomim[\w.]*)", README))
    targets = {target.split(":")[0].removesuffix(".cli") for target in SCRIPTS.values()}
    assert shown <= targets, f"no [project.scripts] entry for {sorted(shown - targets)}"


def test_every_command_points_at_a_main_function_and_is_in_the_readme_table():
    for command, target in SCRIPTS.items():
        module_name, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module_name), function)), target
        module = module_name.removesuffix(".cli")
        assert f"| `{command}` | `python -m {module}` |" in README, command
