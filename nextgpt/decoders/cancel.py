"""Stopping a generation between steps: the demo's Stop button sets an event that every decoding loop checks.

Text decoding checks it before every token (`nextgpt.inference.fast_decode`), diffusion after every denoising step
through the pipeline's step callback, so a stopped request frees the model within one step instead of running to the
end of a minute-long ZeroScope call.

    cancel = threading.Event()
    decoder.generate(prompt_embeds, cancel=cancel)   # another thread: cancel.set() -> GenerationCancelled
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """The caller asked to stop (a set cancel event): the reply or media being generated was abandoned."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    """Stop the work in progress when `cancel` is set.

    Raises:
        GenerationCancelled: the event is set.
    """
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("generation stopped on request")


def step_callback_kwargs(pipeline: Any, cancel: threading.Event | None) -> dict[str, Any]:
    """Pipeline-call arguments that check `cancel` after every denoising step.

    Newer pipelines (Stable Diffusion) take `callback_on_step_end`; ZeroScope's and AudioLDM's take the older
    `callback` with `callback_steps`.

    Args:
        pipeline: a diffusers pipeline.
        cancel: the event to check; None adds nothing.

    Returns:
        Keyword arguments for `pipeline(...)`.
    """
    if cancel is None:
        return {}
    parameters = inspect.signature(pipeline.__call__).parameters
    if "callback_on_step_end" in parameters:

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            raise_if_cancelled(cancel)
            return tensors

        return {"callback_on_step_end": on_step_end}
    if "callback" in parameters:
        return {"callback": lambda step, timestep, latents: raise_if_cancelled(cancel), "callback_steps": 1}
    logger.warning("%s cannot be stopped between steps; a stop takes effect after it", type(pipeline).__name__)
    return {}
