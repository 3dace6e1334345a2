"""Load the LLM backbone (Vicuna / any local HF LLaMA folder) frozen, with trainable signal-token rows.

Every original weight is frozen; the rows of the tokens the tokenizer added (the signal tokens) are the
only trainable LLM parameters until LoRA is applied (`nextgpt.llm.lora`). A merged export written by
`save_merged_llm` records its base vocabulary size in config.json (`nextgpt_num_base_tokens`), so it
reloads with the same rows trainable and nothing added twice.

    tokenizer = load_tokenizer(cfg.llm.model_path, cfg.signal_tokens)
    llm = load_llm(cfg.llm, tokenizer)          # 2 x 36 x 4096 trainable values on Vicuna-7B
    save_merged_llm(apply_lora(llm, cfg.lora), tokenizer, Path("exports/nextgpt-llm"))
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from nextgpt.config import LLMConfig
from nextgpt.llm.lora import merge_lora
from nextgpt.llm.quantization import (
    check_vocabulary_unquantized,
    is_quantized,
    quantization_config,
    quantized_device_map,
)
from nextgpt.llm.token_rows import (
    NUM_BASE_TOKENS_KEY,
    attach_token_rows,
    fold_token_rows,
    get_num_base_tokens,
    load_token_rows_state_dict,
    token_rows_state_dict,
)
from nextgpt.llm.varlen import VARLEN_ATTENTION, register_varlen_attention

logger = logging.getLogger(__name__)

__all__ = [
    "NUM_BASE_TOKENS_KEY",
    "fold_token_rows",
    "get_num_base_tokens",
    "load_llm",
    "load_token_rows_state_dict",
    "save_merged_llm",
    "token_rows_state_dict",
]

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_llm_dir(model_path: Path | None) -> Path:
    if model_path is None:
        raise ValueError("model.llm.model_path is not set; point it at a local HF LLaMA/Vicuna folder")
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise FileNotFoundError(
            f"LLM folder not found: {model_path}; set model.llm.model_path to a local HF LLaMA/Vicuna folder"
        )
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {model_path}; model.llm.model_path must be an HF model folder")
    if not any((model_path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"no weights in {model_path} (expected one of {', '.join(WEIGHT_FILES)}); "
            "model.llm.model_path must point at a complete download"
        )
    return model_path


def _resolve_num_base_tokens(model: PreTrainedModel, num_tokens: int, model_path: Path) -> int:
    """Rows of the original vocabulary: the exported field if present, else the checkpoint's row count."""
    num_rows = model.get_input_embeddings().weight.shape[0]
    recorded = getattr(model.config, NUM_BASE_TOKENS_KEY, None)
    if num_rows > num_tokens:
        raise ValueError(
            f"{model_path} has {num_rows} embedding rows but the tokenizer has only {num_tokens} tokens; "
            "use the model.signal_tokens the folder was exported with"
        )
    if recorded is None and num_rows == num_tokens:
        raise ValueError(
            f"{model_path} already has a row for every tokenizer token ({num_tokens}) but its config.json lacks "
            f"{NUM_BASE_TOKENS_KEY}; export merged folders with nextgpt.llm.backbone.save_merged_llm"
        )
    return int(recorded) if recorded is not None else num_rows


def _enable_checkpointing(model: PreTrainedModel) -> None:
    # Non-reentrant checkpointing needs no input that requires grad; newer transformers renamed the method.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def configure_attention_kernels(cfg: LLMConfig) -> None:
    """Allow or forbid the cuDNN sdpa kernels (`model.llm.cudnn_attention`); a no-op without CUDA.

    The switch is process-wide in PyTorch, so it is set where the LLM is loaded, before its first forward.
    """
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_attention)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a LLaMA-family causal LM (peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            "model.llm.compile_layers and train.prefix_reuse need a LLaMA-family model (model.layers), "
            f"got {type(base).__name__}"
        )
    return layers


def compile_decoder_layers(model: nn.Module) -> int:
    """`torch.compile` the decoder layers' forward, with dynamic sequence lengths (`model.llm.compile_layers`).

    One compiled function (the layer class's `forward`) serves every layer: the layer is an argument, its weights are
    graph inputs. The forward is compiled rather than the module call so that transformers' output-capturing hooks
    (which read a ContextVar that torch.compile cannot trace) run eagerly around it instead of breaking the graph.
    Compiling happens lazily at the first forward, so LoRA modules injected later are covered. What it buys: far fewer
    kernel launches per step (the host no longer waits on Python for every RMSNorm, rotary and LoRA op) and fused
    elementwise work.

    Returns:
        The number of layers compiled.
    """
    layers = decoder_layers(model)
    compiled = torch.compile(type(layers[0]).forward, dynamic=True)
    for layer in layers:
        # instance attribute: shadows the class's forward
        layer.forward = functools.partial(_call_without_inner_capture, compiled, layer)
    return len(layers)


_CAPTURE_DROPPED = "_nextgpt_capture_hooks_dropped"
"""Layer `__dict__` key set once the capture hooks inside the layer were found and dropped."""


def _call_without_inner_capture(compiled, layer: nn.Module, *args, **kwargs):
    """The compiled layer forward, after dropping the output-capturing hooks transformers puts inside the layer.

    Transformers installs them once per model, lazily, at the first forward that asks for hidden states; until a call
    finds (and drops) them each call looks, afterwards none does.
    """
    if not layer.__dict__.get(_CAPTURE_DROPPED) and drop_inner_capture_hooks(layer):
        layer.__dict__[_CAPTURE_DROPPED] = True
    return compiled(layer, *args, **kwargs)


CAPTURE_HOOK_NAME = "output_capturing_hook"
"""The name of the forward hook transformers puts on modules whose outputs `output_attentions` and the like collect."""


def drop_inner_capture_hooks(layer: nn.Module) -> int:
    """Remove transformers' output-capturing forward hooks from the modules inside a decoder layer (its attention).

    Such a hook reads a ContextVar, which some PyTorch versions (2.11) cannot trace: inside a compiled layer forward
    it splits every layer into three graphs (three guard checks and three autograd nodes per layer each way, and no
    fusion across the attention), host work that a host-bound training step pays in full. The hooks on the layers
    themselves (the hidden states) stay and run eagerly around the compiled forward. What the dropped hooks collect,
    attention weights, no route here produces (varlen and sdpa return none).

    Returns:
        The number of hooks removed.
    """
    removed = 0
    for module in layer.modules():
        if module is layer:
            continue
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == CAPTURE_HOOK_NAME:
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
                removed += 1
    return removed


def uncompile_decoder_layers(model: nn.Module) -> None:
    """Return the decoder layers to their eager forward (undoes `compile_decoder_layers`) and drop what torch.compile
    cached for them, so a later compile starts afresh."""
    for layer in decoder_layers(model):
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop(_CAPTURE_DROPPED, None)
    torch._dynamo.reset()


def layers_compiled(model: nn.Module) -> bool:
    """Whether `compile_decoder_layers` was applied (every layer), for checks and tests."""
    return all(isinstance(layer.__dict__.get("forward"), functools.partial) for layer in decoder_layers(model))


def load_llm(cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Load the causal LM frozen, with the rows of the tokenizer's added tokens trainable.

    Args:
        cfg: `model.llm` (folder, dtype, quantization, gradient checkpointing).
        tokenizer: the tokenizer from `load_tokenizer` (with the signal tokens).

    Returns:
        The transformers model; `embed_tokens`/`lm_head` are `TokenRowsEmbedding`/`TokenRowsHead`, new rows
        start at the mean of the base rows, and only `new_rows` parameters require gradients. With
        `model.llm.quantization` the decoder layers' linears are bitsandbytes `Linear4bit` / `Linear8bitLt`, loaded
        on this process's GPU (or the CPU); the vocabulary matrices stay in `dtype`.

    Raises:
        ValueError: `model.llm.model_path` unset, or a tokenizer that does not fit the checkpoint.
        FileNotFoundError: the folder, its config.json or its weights are missing.
    """
    model_path = check_llm_dir(cfg.model_path)
    configure_attention_kernels(cfg)
    register_varlen_attention()
    if torch.cuda.is_available() and cfg.dtype == "float32":
        logger.warning(
            "training attention runs its flash varlen kernel in bfloat16/float16 only; with model.llm.dtype=float32 "
            "it takes the slow per-sample reference (set model.llm.dtype=bfloat16)"
        )
    bnb_config = quantization_config(cfg)
    quantized = {} if bnb_config is None else {"quantization_config": bnb_config, "device_map": quantized_device_map()}
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, cfg.dtype), attn_implementation=VARLEN_ATTENTION, **quantized
    )
    if bnb_config is not None:
        check_vocabulary_unquantized(model)
    num_base_tokens = _resolve_num_base_tokens(model, len(tokenizer), model_path)
    model.requires_grad_(False)
    attach_token_rows(model, num_base_tokens, len(tokenizer))
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    quant = "" if cfg.quantization == "none" else f", decoder linears in {cfg.quantization}"
    logger.info(
        "loaded LLM from %s (%s%s, %s): %d trainable parameters (token rows)",
        model_path,
        cfg.dtype,
        quant,
        "per-sample attention",
        num_trainable,
    )
    return model


def save_merged_llm(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write a standalone HF folder: LoRA merged (if any), token rows folded, tokenizer with signal tokens.

    The model is changed in place (merged and folded); reload the folder with `load_tokenizer` + `load_llm`.

    Args:
        model: a model from `load_llm`, optionally wrapped by `apply_lora`.
        tokenizer: its tokenizer.
        out_dir: folder to write.

    Returns:
        `out_dir`.

    Raises:
        ValueError: a quantized model (`model.llm.quantization` other than none).
    """
    if is_quantized(model):
        raise ValueError(
            "save_merged_llm needs the LLM loaded unquantized (merging LoRA into 4/8-bit weights would round the merged "
            "weights again); load it with model.llm.quantization=none (nextgpt.training.merge does)"
        )
    out_dir = Path(out_dir)
    hf_model = merge_lora(model) if hasattr(model, "merge_and_unload") else model
    fold_token_rows(hf_model)
    hf_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("saved merged LLM (%d base tokens) to %s", getattr(hf_model.config, NUM_BASE_TOKENS_KEY), out_dir)
    return out_dir
