"""The trained backbone of a full fine-tune, saved as a standalone HF folder inside each checkpoint.

A stage that trains `llm` or `embeddings` (`nextgpt.parameters.BACKBONE_GROUPS`) changes the base LLM itself, so its
checkpoints carry it: `<checkpoint>/llm/` is a transformers folder (config.json, sharded `model-*.safetensors` with
their index, the tokenizer with the signal tokens), the signal-token rows folded into the vocabulary matrices and the
base vocabulary size recorded (`nextgpt_num_base_tokens`), like a merged export. The checkpoint's config.yaml points
`model.llm.model_path` at it (relative to the folder), so prediction, merging, evaluation and the next stage
(`train.init_from`) load the trained backbone with the usual code. Under ZeRO-3 the weights are gathered one module at a
time, so no rank ever holds more than one layer's full weights beyond its shard.

    write_backbone(model, staging / "llm", zero_stage=3, write=is_rank_zero())   # every rank
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from torch import nn

from nextgpt.llm.backbone import NUM_BASE_TOKENS_KEY
from nextgpt.parameters import BACKBONE_GROUPS, BASE_ROWS_NAME, TOKEN_ROW_MARKER
from nextgpt.training.zero import gathered

logger = logging.getLogger(__name__)

SHARD_SIZE = "5GB"
"""Largest safetensors file of a saved backbone (transformers' own default): a 7B backbone in bf16 is 3 files."""


_LORA_PART = ".lora_"
"""Module names of PEFT's LoRA parts (lora_A, lora_B, lora_dropout, lora_embedding_*), left out of the backbone."""
_WRAPPED = ".base_layer."
"""PEFT's name for the original layer inside a LoRA-wrapped one."""


def trains_backbone(trainable: tuple[str, ...]) -> bool:
    """Whether a stage's trainable groups change the base LLM, so its checkpoints carry `llm/`."""
    return bool(set(BACKBONE_GROUPS) & set(trainable))


def _folded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Token-row modules' `base_weight` + `new_rows` -> one HF `weight` (V_base + N_new, D) each."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(f".{TOKEN_ROW_MARKER}"):
            continue
        if name.endswith(f".{BASE_ROWS_NAME}"):
            prefix = name[: -len(BASE_ROWS_NAME) - 1]
            out[f"{prefix}.weight"] = torch.cat([tensor, state[f"{prefix}.{TOKEN_ROW_MARKER}"]], dim=0)
        else:
            out[name] = tensor
    return out


def write_backbone(model: nn.Module, out_dir: Path, zero_stage: int, write: bool) -> None:
    """Write the LLM of `model` (a NextGPT) as a standalone HF folder; a collective under ZeRO-3.

    Args:
        model: the NextGPT being trained (its `llm` a transformers model, or a PEFT model when `embeddings` trains with
            `lora`: the config refuses `llm` with LoRA).
        out_dir: the folder to create (`<staging checkpoint>/llm`).
        zero_stage: the engine's ZeRO stage (3: gather each module's weights on every rank in turn).
        write: this rank writes (rank 0); the others only join the gathers.
    """
    # With LoRA on top (a stage training `embeddings` and `lora`), the folder holds the backbone under the adapter:
    # the adapter itself is saved apart (lora/), so its weights are left out and wrapped layers keep their HF names.
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    state: dict[str, torch.Tensor] = {}
    for module_name, module in llm.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params or _LORA_PART in module_name:
            continue
        with gathered([p for _, p in params], zero_stage):
            if write:
                for name, param in params:
                    full = f"{module_name}.{name}" if module_name else name
                    state[full.replace(_WRAPPED, ".")] = param.detach().to("cpu", copy=True)
    if not write:
        return
    embed_name = next(name for name, m in llm.named_modules() if m is llm.get_input_embeddings())
    num_base = state[f"{embed_name}.{BASE_ROWS_NAME}"].shape[0]  # read here: a ZeRO-3 module's own shape is empty
    num_tokens = num_base + state[f"{embed_name}.{TOKEN_ROW_MARKER}"].shape[0]
    state = _folded(state)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    save_torch_state_dict(state, str(out_dir), max_shard_size=SHARD_SIZE)
    config = copy.deepcopy(llm.config)
    config.vocab_size = int(num_tokens)
    setattr(config, NUM_BASE_TOKENS_KEY, int(num_base))
    config.save_pretrained(str(out_dir))
    if getattr(llm, "generation_config", None) is not None:
        llm.generation_config.save_pretrained(str(out_dir))
    model.tokenizer.save_pretrained(str(out_dir))
    logger.info("saved the trained backbone (%d tensors) to %s", len(state), out_dir)
