"""Which parameters belong to which trainable group, and what a checkpoint holds: names shared by the model, training,
checkpoint reading and inference (no training code needed to read a checkpoint).

Groups: `input_projector`, `output_projectors`, `lora` (peft `lora_` parameters), `token_rows` (the new signal-token
rows of the input embeddings and the LM head) — the project's own weights, in every checkpoint — and, for full
fine-tuning, the LLM's own weights: `llm` (the backbone: every LLM weight except the vocabulary matrices and LoRA)
and `embeddings` (the base rows of the input embedding and LM-head matrices, which the legacy release trained).
These two are frozen unless a stage names them, and saved only by the stages that train them.

    parameter_group("llm.model.embed_tokens.new_rows")  # "token_rows"
    state = project_state_dict(model)                   # canonical names -> tensors
"""

from __future__ import annotations

from torch import nn

from nextgpt.constants import BACKBONE_GROUPS, GROUPS, PROJECT_GROUPS  # noqa: F401  (re-exported)

TOKEN_ROW_MARKER = "new_rows"
"""Parameter-name part of the trainable signal-token rows (nextgpt.llm.token_rows)."""

PEFT_PREFIXES = ("base_model.model.",)


def canonical_name(name: str) -> str:
    """Parameter name without peft's wrapper prefix, so stage checkpoints load with or without LoRA."""
    for prefix in PEFT_PREFIXES:
        name = name.replace(prefix, "")
    return name


def parameter_group(name: str) -> str | None:
    """Which project group (`PROJECT_GROUPS`) a (model-level) parameter name belongs to, or None for base weights."""
    if name.startswith("input_projector."):
        return "input_projector"
    if name.startswith("output_projectors."):
        return "output_projectors"
    if name.startswith("llm.") and "lora_" in name:
        return "lora"
    if name.startswith("llm.") and TOKEN_ROW_MARKER in name:
        return "token_rows"
    return None


BASE_ROWS_NAME = "base_weight"
"""Parameter name of the frozen original vocabulary rows (nextgpt.llm.token_rows)."""


def trainable_group(name: str) -> str | None:
    """The group a stage names to train a parameter (`GROUPS`): its project group, else `embeddings` / `llm` for the
    base LLM's weights, None for the frozen encoder."""
    group = parameter_group(name)
    if group is not None or not name.startswith("llm."):
        return group
    return "embeddings" if name.endswith(f".{BASE_ROWS_NAME}") else "llm"


def base_row_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Token-row modules (`nextgpt.llm.token_rows`) by the canonical name their base rows have in a checkpoint."""
    return {
        canonical_name(f"{name}.{BASE_ROWS_NAME}"): module
        for name, module in model.named_modules()
        if hasattr(module, "base_rows_changed")
    }


def changed_base_rows(model: nn.Module) -> dict[str, object]:
    """Base vocabulary rows that differ from the base LLM's and so must travel with the checkpoint, canonical names.

    Only token-row modules flagged `base_rows_changed` (rows loaded from a checkpoint that trained whole
    matrices: the legacy release) are included; for every other checkpoint the base LLM supplies them.
    """
    return {
        name: module.base_weight.detach()
        for name, module in base_row_modules(model).items()
        if module.base_rows_changed
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
