"""The hint a CPU run prints when other work holds the cores its threads need."""

from __future__ import annotations

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
