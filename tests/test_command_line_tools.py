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


# `-X importtime` lists on stderr every module a command imports
def modules_loaded_by(command: list[str]) -> set[str]:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-X", "importtime", *command], capture_output=True, text=True
    )
    assert run.returncode == 0, (command, run.stderr[-2000:])
    return {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if "|" in line}


def test_every_help_answers_before_torch_loads():
    """`python -m geomim.X --help` and the installed `geomim-X --help` parse before importing
    torch and timm (which took 35-76 s on a loaded 2-core machine)."""
    import shutil

    for command, target in SCRIPTS.items():
        module = target.partition(":")[0].removesuffix(".cli")
        help_args = ["cache", "--help"] if command == "geomim-teacher" else ["--help"]
        loaded = modules_loaded_by(["-m", module, *help_args])
        assert not {"torch", "timm"} & loaded, f"python -m {module} --help imports torch or timm"
        script = shutil.which(command)
        assert script, f"{command} is not installed here: pip install -e ."
        loaded = modules_loaded_by([script, *help_args])
        assert not {"torch", "timm"} & loaded, f"{command} --help imports torch or timm"


def test_a_library_import_registers_the_models():
    """Outside the command lines, `import geomim` registers the models with timm at once."""
    loaded = modules_loaded_by(["-c", "import geomim, timm; assert timm.is_model('geomim_base')"])
    assert "geomim.models.swin" in loaded


def test_names_the_command_lines_spell_out_match_the_library():
    """The parsers list choices without importing torch; they must equal the library's."""
    from geomim import teacher
    from geomim.check import cli
    from geomim.kernels.dispatch import BACKENDS
    from geomim.pretrain.teacher_cache import DTYPES

    assert set(cli.BACKEND_NAMES) == {name for names in BACKENDS.values() for name in names}
    assert set(teacher.DTYPES) == set(DTYPES)
