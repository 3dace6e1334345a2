"""Logging setup for entry points: one call, rank-zero filter, concise format.

from nextgpt.utils.logging import setup_logging
setup_logging()  # in train.py / predict.py, never inside the library
"""

from __future__ import annotations

import logging
import os


class _RankZeroFilter(logging.Filter):
    """Let records through only on the process with global rank 0 (unless `all_ranks` was asked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int | str = logging.INFO, all_ranks: bool = False) -> None:
    """Configure the root logger once for a script.

    Args:
        level: logging level for the `nextgpt` loggers.
        all_ranks: log from every distributed rank instead of rank 0 only.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    if not all_ranks:
        handler.addFilter(_RankZeroFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("nextgpt").setLevel(level)
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for name in ("transformers", "diffusers", "DeepSpeed", "deepspeed", "torch"):
        logging.getLogger(name).setLevel(logging.WARNING)
