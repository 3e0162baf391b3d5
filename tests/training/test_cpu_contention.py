"""What a CPU run does about the machine: a hint when other work holds the cores its threads
need, and freed memory kept for reuse unless `train.keep_freed_memory=false`."""

from __future__ import annotations

import pytest

from geomim import train as train_cli
from geomim.training import engine
from geomim.training.cpu_contention import contention_hint


def test_a_busy_core_under_two_threads_gets_a_hint_naming_the_remedies(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    hint = contention_hint(threads=2, cores=2, load_average=1.0)
    assert "load average 1.0 on 2 cores" in hint and "torch runs 2 threads" in hint
    assert "OMP_WAIT_POLICY=PASSIVE" in hint and "train.threads=1" in hint


def test_no_hint_when_the_threads_fit_the_free_cores_or_the_policy_is_chosen(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert contention_hint(threads=2, cores=2, load_average=0.3) is None
    assert contention_hint(threads=2, cores=2, load_average=0.6) is None  # a job just ended
    assert contention_hint(threads=4, cores=16, load_average=8.0) is None
    assert contention_hint(threads=1, cores=2, load_average=1.2) is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert contention_hint(threads=2, cores=2, load_average=2.0) is None


def test_the_suggested_thread_count_is_the_free_cores_and_at_least_one(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "train.threads=5" in contention_hint(threads=8, cores=8, load_average=3.0)
    assert "train.threads=1" in contention_hint(threads=2, cores=2, load_average=4.0)


@pytest.mark.parametrize("keep", [True, False])
def test_a_cpu_run_keeps_freed_memory_as_configured(keep, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append(True) or True)
    train_cli.main([
        "--config", "tiny_synthetic", "data.source=rig", "data.rig_samples=2", "data.workers=0",
        "train.max_steps=1", "train.batch_size=2", "log.progress=false",
        "log.tensorboard=false", "train.device=cpu", f"train.keep_freed_memory={str(keep).lower()}",
        f"run_dir={tmp_path}",
    ])  # fmt: skip
    assert calls == ([True] if keep else [])
