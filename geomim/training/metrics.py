"""What rank 0 reports: a progress bar, metrics as JSON lines and (if installed) TensorBoard."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from geomim.checkpoints import write_atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a run's `metrics.jsonl` (a torn last line, from a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Drop records after `last_step` (those a resumed run will log again)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    write_atomic(path, lambda temp: Path(temp).write_text(text))


class StepSummary(Protocol):
    losses: dict[str, float]  # "total" and each term
    grad_norm: float
    lr: float


def window_record(
    step: int,
    steps_per_epoch: int,
    window: Sequence[StepSummary],
    seconds: float,
    batch_size: int,
) -> dict[str, Any]:
    """A metrics record: the window's mean losses and gradient norm, the last lr, the speed."""
    record: dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
    for name in window[0].losses:
        key = "loss" if name == "total" else f"loss_{name}"
        record[key] = sum(r.losses[name] for r in window) / len(window)
    record["grad_norm"] = sum(r.grad_norm for r in window) / len(window)
    record["lr"] = window[-1].lr
    record["steps_per_s"] = round(len(window) / max(seconds, 1e-9), 4)
    record["samples_per_s"] = round(len(window) * batch_size / max(seconds, 1e-9), 4)
    return record


class MetricsWriter:
    """JSONL (always), TensorBoard (when the package is there and wanted), and a progress bar
    with it/s, ETA and the losses. Only rank 0 makes one; the others pass `enabled=False`."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not (enabled and progress),
            desc="pretrain",
            unit="step",
            dynamic_ncols=True,
        )
        self.board = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.write_line(
                    "TensorBoard is not installed (pip install tensorboard): JSONL only"
                )
            else:
                self.board = SummaryWriter(
                    str(Path(run_dir) / "tensorboard"), purge_step=start_step
                )

    def step(self, losses: dict[str, float], lr: float) -> None:
        """Advance the bar by one step and show its losses (names cut to 5 letters) and lr."""
        if not self.enabled:
            return
        self.bar.update(1)
        shown = {name[:5]: f"{value:.4f}" for name, value in losses.items()}
        self.bar.set_postfix(shown | {"lr": f"{lr:.2e}"}, refresh=False)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold "step") to the JSONL file and TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.board is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(name, value, record["step"])

    def write_line(self, text: str) -> None:
        """A message that does not break the progress bar."""
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        """Flush and close the bar and TensorBoard."""
        self.bar.close()
        if self.board is not None:
            self.board.close()
