"""Trainability per stage: freeze everything, then unfreeze exactly the groups the stage's YAML names.

Groups: `input_projector`, `output_projectors`, `lora` (peft `lora_` parameters), `token_rows` (the new signal-token rows
of the input embeddings and the LM head — never the full matrices). The original froze LoRA after injecting it
(stage 3 trained nothing) and trained only the audio projector in stage 2; here the set is explicit and logged.

    counts = apply_trainable_groups(model, ("lora", "input_projector", "output_projectors", "token_rows"))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

logger = logging.getLogger(__name__)

GROUPS = ("input_projector", "output_projectors", "lora", "token_rows")

TOKEN_ROW_MARKER = "new_rows"
"""Parameter-name part of the trainable signal-token rows (nextgpt.llm.token_rows)."""

PEFT_PREFIXES = ("base_model.model.",)


def canonical_name(name: str) -> str:
    """Parameter name without peft's wrapper prefix, so stage checkpoints load with or without LoRA."""
    for prefix in PEFT_PREFIXES:
        name = name.replace(prefix, "")
    return name


def parameter_group(name: str) -> str | None:
    """Which trainable group a (model-level) parameter name belongs to, or None for frozen base weights."""
    if name.startswith("input_projector."):
        return "input_projector"
    if name.startswith("output_projectors."):
        return "output_projectors"
    if name.startswith("llm.") and "lora_" in name:
        return "lora"
    if name.startswith("llm.") and TOKEN_ROW_MARKER in name:
        return "token_rows"
    return None


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
        group = parameter_group(name)
        param.requires_grad_(group in wanted)
        key = group or "frozen base"
        counts[key][1] += param.numel()
        if param.requires_grad:
            counts[key][0] += param.numel()
    empty = [g for g in wanted if counts[g][1] == 0]
    if empty:
        hint = " (set model.lora.enabled=true)" if "lora" in empty else ""
        raise ValueError(f"trainable group(s) {sorted(empty)} have no parameters in this model{hint}")
    for key, (trainable, total) in counts.items():
        if total:
            logger.info("params %-18s trainable %12s / %12s", key, f"{trainable:,}", f"{total:,}")
    return {k: (v[0], v[1]) for k, v in counts.items()}


BASE_ROWS_NAME = "base_weight"
"""Parameter name of the frozen original vocabulary rows (nextgpt.llm.token_rows)."""


def changed_base_rows(model: nn.Module) -> dict[str, object]:
    """Base vocabulary rows that differ from the base LLM's and so must travel with the checkpoint, canonical names.

    Only token-row modules flagged `base_rows_changed` (rows loaded from a checkpoint that trained whole
    matrices: the legacy release) are included; for every other checkpoint the base LLM supplies them.
    """
    return {
        canonical_name(f"{name}.{BASE_ROWS_NAME}"): module.base_weight.detach()
        for name, module in model.named_modules()
        if getattr(module, "base_rows_changed", False)
    }


def project_state_dict(model: nn.Module) -> dict[str, object]:
    """The weights a checkpoint holds: every parameter of a trainable group (trained now or not), canonical names.

    Frozen base weights (LLM, ImageBind) are not included — they come from the base checkpoints — except vocabulary
    rows that a loaded checkpoint changed (`changed_base_rows`).
    """
    state = {
        canonical_name(name): param.detach()
        for name, param in model.named_parameters()
        if parameter_group(name) is not None
    }
    return {**state, **changed_base_rows(model)}
