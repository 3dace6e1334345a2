"""Metrics sink: one JSON line per optimizer step in `<run>/metrics.jsonl`, TensorBoard scalars, a log echo.

A run that resumes from step N (or starts over: N = 0) first drops the records of steps after N that the interrupted
run wrote, so every step appears once in the file and in TensorBoard.

The loop does not read a step's loss values when the step ends (that would make the host wait for the GPU every
step): `PendingMetrics` keeps them on the device with the step's timing, and `flush` reads every pending value in one
transfer and writes the records in step order.

metrics = MetricLogger(run_dir, resume_step=100)   # keeps steps 1..100 of the file
metrics.log(step, {"loss": 1.2, "lr": 1e-4})
pending = PendingMetrics(metrics, echo_every=10)
pending.add(step, [{"loss": loss.detach()}], lr=1e-4, num_tokens=512, timing=timing)
pending.flush()  # [(step, {"loss": 1.2, "lr": 1e-4, "tokens_per_s": ..., "ms_forward": ..., ...})]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nextgpt.utils.step_timer import StepTiming

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep one record (the last) of each step <= `last_step`, dropping later steps and lines cut short by a kill.

    The file is rewritten atomically, and only when something is dropped.

    Returns:
        The number of lines dropped.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept: dict[int, str] = {}
    for line in lines:
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(step, int) and step <= last_step:
            kept[step] = line
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{kept[step]}\n" for step in sorted(kept)))
        os.replace(tmp, path)
        logger.info("%s: dropped %d records after step %d (the interrupted run's)", path, dropped, last_step)
    return dropped


class MetricLogger:
    """Append-only metrics for one run (rank 0 only; other ranks pass enabled=False).

    Args:
        run_dir: the run's output folder.
        enabled: False makes every call a no-op.
        tensorboard: also write TensorBoard scalars under run_dir/tensorboard.
        resume_step: the step training continues after; records of later steps are dropped first.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0) -> None:
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / METRICS_FILE
        truncate_metrics(path, resume_step)
        self._file = path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the interrupted run's events from resume_step + 1 on.
            self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, values: dict[str, float], echo: bool = False) -> None:
        """Record `values` for optimizer step `step`."""
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"train/{key}", value, step)
        if echo:
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def close(self) -> None:
        """Flush and close the files."""
        if not self.enabled:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()


@dataclass
class _PendingStep:
    step: int
    values: dict[str, torch.Tensor]
    lr: float
    num_tokens: int
    timing: StepTiming


def read_scalars(tensors: list[torch.Tensor]) -> list[float]:
    """The values of one-element tensors with one device-to-host copy per device (so one wait for the GPU).

    Float64 holds every float32/bf16/fp16 value exactly: the floats equal what `.item()` would give.
    """
    values: list[float] = [0.0] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(i)
    for indices in by_device.values():
        stacked = torch.stack([tensors[i].reshape(()).to(torch.float64) for i in indices])  # (N,)
        for i, value in zip(indices, stacked.cpu().tolist(), strict=True):
            values[i] = value
    return values


class PendingMetrics:
    """Optimizer steps whose loss values are still on the device, written to a `MetricLogger` on `flush`.

    Args:
        metrics: where the records go.
        echo_every: also log the record of every step divisible by this (`train.log_every`).
    """

    def __init__(self, metrics: MetricLogger, echo_every: int) -> None:
        self._metrics = metrics
        self._echo_every = echo_every
        self._steps: list[_PendingStep] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(
        self,
        step: int,
        values: dict[str, torch.Tensor],
        lr: float,
        num_tokens: int,
        timing: StepTiming,
    ) -> None:
        """Keep one step until the next flush.

        Args:
            step: the optimizer step.
            values: the step's detached loss and its terms (unread, any device; `nextgpt.training.step_loss` makes
                them the means over all of the step's samples).
            lr: the step's learning rate.
            num_tokens: real tokens of the step's micro-batches; `tokens_per_s` divides them by the step's wall time.
            timing: the step's phases; closed before the flush that writes it.
        """
        self._steps.append(_PendingStep(step, values, lr, num_tokens, timing))

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """Read the pending values in one transfer, resolve the timings and write one record per step, in order.

        Returns:
            The (step, record) pairs written, oldest first.
        """
        steps, self._steps = self._steps, []
        if not steps:
            return []
        tensors = [t for s in steps for t in s.values.values()]
        scalars = iter(read_scalars(tensors))
        written: list[tuple[int, dict[str, float]]] = []
        for s in steps:
            record = {key: next(scalars) for key in s.values}
            times = s.timing.resolve()
            record.update(lr=s.lr, tokens_per_s=s.num_tokens / max(times["ms_step"] / 1e3, 1e-9), **times)
            self._metrics.log(s.step, record, echo=s.step % self._echo_every == 0)
            written.append((s.step, record))
        return written
