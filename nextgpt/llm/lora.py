"""LoRA on the LLM (stage 3): wrap with peft, keep the signal-token rows trainable, merge for export.

peft freezes every non-LoRA parameter when it wraps a model; `apply_lora` re-enables the token rows
afterwards (the original froze LoRA itself instead, spec §7.1). Presets: configs/presets/lora_paper.yaml
(r 32, alpha 32, q/k/v/o) and configs/presets/lora_all_linear.yaml (r 128, alpha 256, all linear layers).

    llm = apply_lora(load_llm(cfg.llm, tokenizer), cfg.lora)
    merged = merge_lora(llm)  # a plain transformers model with the LoRA deltas folded into the weights
"""

from __future__ import annotations

import logging

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from nextgpt.config import LoRAConfig
from nextgpt.llm.token_rows import TokenRowsEmbedding, TokenRowsHead

logger = logging.getLogger(__name__)


def list_linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's `nn.Linear` layers (the names LoRA can target).

    Args:
        model: a transformers model.

    Returns:
        Sorted names such as `["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]`.
    """
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def apply_lora(model: PreTrainedModel, cfg: LoRAConfig) -> PeftModel:
    """Wrap the LLM with LoRA adapters; the LoRA weights and the new token rows are trainable.

    Args:
        model: a model from `load_llm`.
        cfg: `model.lora` (enabled, r, alpha, dropout, target_modules).

    Returns:
        The peft model (task CAUSAL_LM, bias "none").

    Raises:
        ValueError: LoRA disabled in the config, or a target module name the model does not have.
    """
    if not cfg.enabled:
        raise ValueError("apply_lora called with model.lora.enabled=false; set it true or skip LoRA")
    available = list_linear_module_names(model)
    unknown = [name for name in cfg.target_modules if name not in available]
    if unknown:
        raise ValueError(
            f"model.lora.target_modules has {unknown}, not linear layers of this model; choose from {available}"
        )
    lora_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, lora_config)
    for module in peft_model.modules():
        if isinstance(module, (TokenRowsEmbedding, TokenRowsHead)):
            module.new_rows.requires_grad_(True)
    num_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    logger.info("LoRA r=%d alpha=%d on %s: %d parameters", cfg.r, cfg.alpha, ",".join(cfg.target_modules), num_lora)
    return peft_model


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """Fold the LoRA deltas into the base weights and drop the peft wrapper.

    Args:
        model: a model from `apply_lora`.

    Returns:
        The underlying transformers model (token rows, if any, are kept as they are).

    Raises:
        ValueError: the model carries no LoRA adapters.
    """
    if not isinstance(model, PeftModel):
        raise ValueError(f"merge_lora expects a peft model from apply_lora, got {type(model).__name__}")
    return model.merge_and_unload()
