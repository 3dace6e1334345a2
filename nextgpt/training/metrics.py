"""Metrics sink: one JSON line per optimizer step in `<run>/metrics.jsonl`, TensorBoard scalars, a log echo.

A run that resumes from step N (or starts over: N = 0) first drops the records of steps after N that the interrupted
run wrote, so every step appears once in the file and in TensorBoard.

metrics = MetricLogger(run_dir, resume_step=100)   # keeps steps 1..100 of the file
metrics.log(step, {"loss": 1.2, "lr": 1e-4})
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

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
