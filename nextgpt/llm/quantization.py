"""bitsandbytes loading of the frozen LLM (`model.llm.quantization`): NF4 4-bit (QLoRA) or LLM.int8 8-bit.

Only the decoder layers' linear weights are quantized. `embed_tokens` and `lm_head` stay in `model.llm.dtype`:
`attach_token_rows` splits each into frozen base rows and trainable signal-token rows, which a packed quantized
matrix cannot be cut into, and they are a small share of a 7B model (2 x 32000 x 4096 of 6.7 B weights).

peft's `prepare_model_for_kbit_training` is not used. What it does and why it does not fit here:
  * it upcasts every bf16/fp16 parameter that is not 4-bit (embeddings, LM head, norms) to float32, for fp16
    training stability: the vocabulary matrices would double to 1 GB on Vicuna-7B, and DeepSpeed's bf16 mode casts
    them back to bf16 anyway (`deepspeed.initialize` casts floating parameters only, so the packed uint8 / int8
    weights and their float32 block scales, which are not parameters, are left intact);
  * it freezes every parameter, which `load_llm` already does (the token rows are unfrozen after it);
  * it makes the embedding output require grad for reentrant gradient checkpointing; this project checkpoints
    non-reentrantly, which needs no such hook.

    bnb_config = quantization_config(cfg.llm)          # None when model.llm.quantization is "none"
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config, device_map=quantized_device_map())
    check_vocabulary_unquantized(model)                # before attach_token_rows
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import BitsAndBytesConfig

from nextgpt.config import LLMConfig

NOT_QUANTIZED = ["lm_head"]
"""Linear layers bitsandbytes must leave in float (the embedding table is not a linear layer and never converted)."""


def quantization_config(cfg: LLMConfig) -> BitsAndBytesConfig | None:
    """The transformers `BitsAndBytesConfig` for `model.llm.quantization`, or None for "none".

    4-bit: NF4 (the levels of a normal distribution, best for normally distributed weights), double-quantized block
    scales (about 0.4 bit per weight saved), computing in `model.llm.dtype`. 8-bit: LLM.int8 with its default outlier
    threshold (6.0: input columns above it run in float16).
    """
    if cfg.quantization == "none":
        return None
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, cfg.dtype),
            llm_int8_skip_modules=NOT_QUANTIZED,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)


def quantized_device_map() -> dict[str, str]:
    """Where a quantized LLM loads: bitsandbytes quantizes while loading, on the device the weights go to.

    On CUDA that is this process's GPU (`LOCAL_RANK` under a launcher), so that every data-parallel rank quantizes
    onto its own GPU instead of all onto GPU 0 (transformers' default); without CUDA, the CPU.
    """
    if torch.cuda.is_available():
        return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}
    return {"": "cpu"}


def quantized_linear_types() -> tuple[type[nn.Module], ...]:
    """bitsandbytes' quantized linear classes (4-bit and 8-bit)."""
    import bitsandbytes as bnb

    return (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def is_quantized(model: nn.Module) -> bool:
    """Whether any linear layer of the model (peft-wrapped or not) holds bitsandbytes-quantized weights."""
    if not any(p.dtype in (torch.uint8, torch.int8) for p in model.parameters()):
        return False  # no packed weights: skip importing bitsandbytes
    types = quantized_linear_types()
    return any(isinstance(module, types) for module in model.modules())


def check_vocabulary_unquantized(model: nn.Module) -> None:
    """Refuse a model whose input embedding or LM head was quantized (token rows need float matrices).

    Raises:
        ValueError: naming the module; the fix is to keep it in `NOT_QUANTIZED`.
    """
    types = quantized_linear_types()
    for name, module in (("embed_tokens", model.get_input_embeddings()), ("lm_head", model.get_output_embeddings())):
        if isinstance(module, types):
            raise ValueError(
                f"the LLM's {name} was loaded quantized ({type(module).__name__}); token rows need it in float: keep "
                f"it in nextgpt.llm.quantization.NOT_QUANTIZED"
            )


def quantized_weight_bytes(model: nn.Module) -> int:
    """Bytes per weight that the quantized linear layers hold: packed weights plus their scales.

    Left out: each layer's fixed-size lookup tables (16 NF4 levels, 256 levels of the 8-bit absmax code), about
    1 kB per layer whatever its size (0.2 MB for Vicuna-7B's 224 linears).
    """
    types = quantized_linear_types()
    total = 0
    for module in model.modules():
        if isinstance(module, types):
            weight = module.weight
            tensors = [weight.data, *_scales(weight)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _scales(weight: torch.Tensor) -> list[torch.Tensor]:
    """A quantized weight's scales: 4-bit absmax per 64-weight block (8-bit with a float32 scale per 256 blocks and
    an offset when double-quantized, else float32); 8-bit `SCB`, one float32 per output row."""
    scales = getattr(weight, "SCB", None)
    if scales is not None:
        return [scales]
    state = getattr(weight, "quant_state", None)
    if state is None:
        return []
    if getattr(state, "nested", False):
        return [state.absmax, state.state2.absmax, state.offset]
    return [state.absmax]
