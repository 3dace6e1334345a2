"""Trainability per stage: freeze everything, then unfreeze exactly the groups the stage's YAML names.

Groups: `input_projector`, `output_projectors`, `lora` (peft `lora_` parameters), `token_rows` (the new signal-token rows
of the input embeddings and the LM head), and for full fine-tuning `llm` (the backbone) and `embeddings` (the whole
vocabulary matrices); `nextgpt.parameters`. The original froze LoRA after injecting it (stage 3 trained nothing) and
trained only the audio projector in stage 2; here the set is explicit and logged.

    counts = apply_trainable_groups(model, ("lora", "input_projector", "output_projectors", "token_rows"))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

from nextgpt.parameters import (  # noqa: F401  (re-exported for the training code)
    BASE_ROWS_NAME,
    GROUPS,
    PEFT_PREFIXES,
    TOKEN_ROW_MARKER,
    base_row_modules,
    canonical_name,
    changed_base_rows,
    parameter_group,
    project_state_dict,
    trainable_group,
)

logger = logging.getLogger(__name__)


def apply_trainable_groups(model: nn.Module, groups: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Set `requires_grad` so exactly the named groups train; log trainable/frozen counts per group.

    Args:
        model: a NextGPT.
        groups: names from `GROUPS`.

    Returns:
        {group or "frozen base": (trainable params, total params)}.

    Raises:
        ValueError: an unknown group, or a named group with no parameters (e.g. `lora` without model.lora.enabled).
    """
    wanted = set(groups)
    unknown = wanted - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown trainable groups {sorted(unknown)}; valid: {list(GROUPS)}")
    counts: dict[str, list[int]] = {g: [0, 0] for g in (*GROUPS, "frozen base")}
    for name, param in model.named_parameters():
        group = trainable_group(name)
        param.requires_grad_(group in wanted)
        key = group or "frozen base"
        counts[key][1] += param.numel()
        if param.requires_grad:
            counts[key][0] += param.numel()
    empty = [g for g in wanted if counts[g][1] == 0]
    if empty:
        hint = " (set model.lora.enabled=true)" if "lora" in empty else ""
        raise ValueError(f"trainable group(s) {sorted(empty)} have no parameters in this model{hint}")
    if "embeddings" in wanted:
        for module in base_row_modules(model).values():
            module.base_rows_changed = True  # trained whole matrices travel with every checkpoint from now on
    for key, (trainable, total) in counts.items():
        if total:
            logger.info("params %-18s trainable %12s / %12s", key, f"{trainable:,}", f"{total:,}")
    return {k: (v[0], v[1]) for k, v in counts.items()}
