"""examples/pretrain_quickstart.py, the README's main-job command, end to end (shortened)."""

from __future__ import annotations

import runpy
import sys

from tests.helpers import TESTS

QUICKSTART = TESTS.parent / "examples" / "pretrain_quickstart.py"


def test_pretrain_quickstart_trains_exports_and_reloads(tmp_path, monkeypatch, capsys):
    argv = [str(QUICKSTART), "--out", str(tmp_path), "--steps", "20", "--scenes", "1", "--quiet"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(QUICKSTART), run_name="__main__")  # exits non-zero if the loss rose
    out = capsys.readouterr().out
    assert "max |difference| to the trained encoder 0.0e+00" in out
    assert f"panel              {tmp_path / 'run' / 'panels' / 'step-00000020.png'}" in out
    assert (tmp_path / "exported" / "model.safetensors").is_file()
