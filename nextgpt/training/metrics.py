"""Metrics sink: one JSON line per optimizer step in `<run>/metrics.jsonl`, TensorBoard scalars, a log echo.

metrics = MetricLogger(run_dir)
metrics.log(step, {"loss": 1.2, "lr": 1e-4})
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class MetricLogger:
    """Append-only metrics for one run (rank 0 only; other ranks pass enabled=False).

    Args:
        run_dir: the run's output folder.
        enabled: False makes every call a no-op.
        tensorboard: also write TensorBoard scalars under run_dir/tensorboard.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = (run_dir / "metrics.jsonl").open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))

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
