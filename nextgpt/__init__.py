"""nextgpt: NExT-GPT (any-to-any multimodal LLM) as a research training framework.

The public API, importable from the package root (heavy modules load on first use):

    from nextgpt import load_config, train, NextGPTPipeline
    cfg = load_config("configs/tiny_stage_1.yaml", overrides=["train.max_steps=20"])
    result = train(cfg)                                   # -> TrainResult(final_dir=runs/.../final, ...)
    pipeline = NextGPTPipeline.from_pretrained(result.final_dir, device="cpu")

Command lines: `nextgpt-train`, `nextgpt-predict`, `nextgpt-merge`, `nextgpt-demo`, ... (`nextgpt.cli`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("nextgpt")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "Config": "nextgpt.config",
    "ConfigError": "nextgpt.config",
    "load_config": "nextgpt.config",
    "save_config": "nextgpt.config",
    "NextGPT": "nextgpt.model",
    "build_nextgpt": "nextgpt.model",
    "NextGPTPipeline": "nextgpt.inference.pipeline",
    "Message": "nextgpt.inference.requests",
    "TrainResult": "nextgpt.training.loop",
    "train": "nextgpt.training.loop",
    "merge_checkpoint": "nextgpt.training.merge",
}
_RENAMED = {"train": "run"}
"""Public name -> name in its module (the training recipe's `run` is `nextgpt.train`)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access, so `import nextgpt` stays light (no torch until needed)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nextgpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
