"""`python -m geomim.check`: passes on a working install, names every broken backend."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from geomim.check.cli import main
from geomim.kernels.dispatch import BACKENDS, usable_backends

attention = importlib.import_module("geomim.kernels.window_attention")
cross_view = importlib.import_module("geomim.kernels.row_attention")


def test_the_quick_check_passes_on_the_cpu_with_every_usable_backend(interpreter, tmp_path):
    report_file = tmp_path / "check.json"
    assert main(["--device", "cpu", "--quick", "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["failed"] == 0 and report["passed"] > 20
    ran = {(r["op"], r["backend"]) for r in report["results"] if r["status"] == "pass"}
    for op in BACKENDS:
        for backend in usable_backends(op, "cpu"):
            if backend != "flex":  # compiled per shape: only the full check runs it
                assert (op, backend) in ran, (op, backend)
    assert ("window_attention", "triton") in ran  # on the interpreter
    steps = {r["backend"] for r in report["results"] if r["op"] == "pretraining_step"}
    assert {"window_attention=chunked", "row_attention=triton", "splat=sparse"} <= steps
    dtypes = {r["dtype"] for r in report["results"] if r["op"] == "window_attention"}
    assert dtypes == {"float32", "bfloat16"}
    assert report["environment"]["cpu capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_wrong_backend_fails_the_check_naming_op_backend_and_dtype(monkeypatch, capsys):
    run_backend = attention._run_backend

    def off_by_one_percent(name, *args):
        out = run_backend(name, *args)
        return out * 1.01 if name == "sdpa" else out

    monkeypatch.setattr(attention, "_run_backend", off_by_one_percent)
    status = main(["--device", "cpu", "--quick", "--ops", "window_attention", "--skip-teacher"])
    output = capsys.readouterr().out
    assert status == 1
    assert "window_attention / sdpa / float32: outside the tolerance" in output
    assert "window_attention / sdpa / bfloat16" not in output  # 1% is within bf16's 4%
    assert "pretraining_step / window_attention=sdpa / float32" in output
    assert "GEOMIM_KERNELS=window_attention=chunked" in output
    assert "window_attention / chunked" not in output


def test_a_backend_that_cannot_run_is_named_with_its_error(monkeypatch, capsys):
    def launch_failure(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution")

    monkeypatch.setattr(cross_view.F, "scaled_dot_product_attention", launch_failure)
    status = main(
        ["--device", "cpu", "--quick", "--ops", "row_attention", "--skip-teacher", "--skip-steps"]
    )
    output = capsys.readouterr().out
    assert status == 1
    assert "row_attention / sdpa / float32: KernelBackendError: row_attention: backend 'sdpa'" in (
        output
    )
    assert "no kernel image" in output
    assert "GEOMIM_KERNELS=row_attention=reference" in output


def test_help_and_usage_errors_come_before_any_work():
    help_text = subprocess.run(
        [sys.executable, "-m", "geomim.check", "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--quick" in help_text.stdout
    with pytest.raises(SystemExit) as raised:
        main(["--repeats", "-1"])
    assert raised.value.code == 2


def test_a_wrong_gradient_names_its_input_and_backends_narrow_the_check(monkeypatch, capsys):
    run_backend = attention._run_backend

    def wrong_table_gradient(name, qkv, table, *rest):  # the forward is unchanged
        out = run_backend(name, qkv, table, *rest)
        extra = 0.01 * table.sum()
        return out + (extra - extra.detach()) if name == "sdpa" else out

    monkeypatch.setattr(attention, "_run_backend", wrong_table_gradient)
    args = ["--device", "cpu", "--quick", "--ops", "window_attention", "--skip-teacher"]
    status = main([*args, "--skip-steps", "--backends", "sdpa"])
    output = capsys.readouterr().out
    assert status == 1
    lines = [line for line in output.splitlines() if line.startswith(("  PASS", "  FAIL"))]
    assert lines and all(" sdpa " in line for line in lines)  # nothing else was checked
    assert "fwd 0.0e+00" not in lines[0]
    failing = next(line for line in lines if "float32" in line)
    assert "outside the tolerance; gradients: qkv " in failing
    qkv_error, table_error = (
        float(p.split()[1]) for p in failing.split("gradients: ")[1].split(", ")
    )
    assert qkv_error < 1e-4 < table_error


def test_padding_tokens_outputs_are_not_compared(monkeypatch, capsys):
    """A token in no group is padding: no caller reads its output, and fp16 cannot express the
    reference's uniform row there, so the check leaves it out (forward and backward)."""
    run_backend = attention._run_backend

    def padding_rows_differ(name, qkv, table, index, mask, *rest):
        out = run_backend(name, qkv, table, index, mask, *rest)
        if name != "sdpa" or mask is None:
            return out
        padding = (mask.groups < 0).repeat(qkv.shape[0] // mask.groups.shape[0], 1)
        return out.masked_fill(padding[..., None], 1e6)

    monkeypatch.setattr(attention, "_run_backend", padding_rows_differ)
    args = ["--device", "cpu", "--quick", "--ops", "window_attention", "--skip-teacher"]
    assert main([*args, "--skip-steps", "--backends", "sdpa"]) == 0
    assert "PASS sdpa" in capsys.readouterr().out


def test_a_bf16_step_that_goes_nan_fails_the_check(monkeypatch):
    """On CUDA the check also takes each step in bf16 (as train.precision=bf16): an op whose
    bf16 gradients are NaN (as SDPA's window attention on an H200) must fail it, by name."""
    from geomim.check.system import STEP_OPS, check_pretraining_steps

    run_backend = attention._run_backend

    def nan_in_bf16(name, qkv, *rest):
        out = run_backend(name, qkv, *rest)
        poison = qkv.dtype == torch.bfloat16 and name == "sdpa"
        return out + (qkv.sum() * float("nan") if poison else 0)

    monkeypatch.setattr(attention, "_run_backend", nan_in_bf16)
    backends = {op: ("sdpa",) if op == "window_attention" else () for op in STEP_OPS}
    results = check_pretraining_steps(
        torch.device("cpu"), True, backends, (torch.float32, torch.bfloat16)
    )
    status = {(r.backend, r.dtype): r.status for r in results}
    assert status == {
        ("window_attention=sdpa", "float32"): "pass",
        ("reference", "bfloat16"): "pass",
        ("window_attention=sdpa", "bfloat16"): "fail",
    }
