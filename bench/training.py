"""Stage-1 and stage-3 training steps: the naive path next to ours, on the same model, samples and step count.

A step is `model(batch)` -> `loss.backward()` -> AdamW step on the trainable parameters (torch AdamW: the default
multi-tensor kernel in naive, the fused one in ours; the DeepSpeed wrapper of `train.py` is left out). Batches are
collated before timing, as a data loader's workers would; the host-to-device copy of each batch is timed.

- naive: raw media through ImageBind-Huge every step, one padded row per sample (padded to the batch's longest), the
  system prompt recomputed in every sample, HF LLaMA sdpa (+ peft LoRA and gradient checkpointing in stage 3, as
  configs/stage_3.yaml ships).
- naive_no_cudnn (GPU only): the naive path with cuDNN's attention kernels off, the stricter baseline.
- ours_eager (stage 1): ours with masked sdpa and eager layers, to show what varlen + compiled layers add.
- ours: fused AdamW (`train.fused_optimizer`), cached ImageBind features (`data.feature_cache_dir`), packed rows
  (`data.packing`, `model.llm.max_length`), per-sample attention over the packed rows
  (`model.llm.attn_implementation=varlen`), compiled decoder layers on CUDA (`model.llm.compile_layers`); in stage 1
  the shared prefix served from its KV cache (`train.prefix_reuse`), in stage 3 no gradient checkpointing
  (`model.llm.gradient_checkpointing=false`).

    result = run_stage1(model, shapes, "cuda", micro_batch=32, steps=8)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from bench.components import Shapes, count_llm_parameters, model_config
from bench.timing import (
    free_memory,
    memory_cap,
    peak_flops,
    peak_gib,
    profile_top_kernels,
    reset_peak,
    sync,
    training_flops,
)
from bench.workloads import caption_items, chunk, instruction_items
from nextgpt.constants import Modality
from nextgpt.data.collate import Collator
from nextgpt.llm.backbone import compile_decoder_layers, uncompile_decoder_layers

logger = logging.getLogger(__name__)

STAGE1_GROUPS = ("input_projector", "token_rows")
STAGE3_GROUPS = ("lora", "input_projector", "output_projectors", "token_rows")


def set_checkpointing(model, enabled: bool) -> None:
    """Switch `model.llm.gradient_checkpointing` on the built model (HF module and the model's config)."""
    from nextgpt.llm.backbone import _enable_checkpointing

    hf_model = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    if enabled:
        _enable_checkpointing(hf_model)
    else:
        hf_model.gradient_checkpointing_disable()
    model.cfg.llm.gradient_checkpointing = enabled


def set_attention(model, implementation: str) -> None:
    """Switch `model.llm.attn_implementation` on the built model (HF config and the model's config)."""
    from nextgpt.llm.varlen import VARLEN_ATTENTION, register_varlen_attention

    hf_name = implementation
    if implementation == "varlen":
        register_varlen_attention()
        hf_name = VARLEN_ATTENTION
    hf_model = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    hf_model.config._attn_implementation = hf_name
    model.cfg.llm.attn_implementation = implementation


def set_compiled(model, enabled: bool) -> None:
    """Compile the decoder layers (`model.llm.compile_layers`) or return them to eager."""
    if enabled:
        compile_decoder_layers(model.llm)
    else:
        uncompile_decoder_layers(model.llm)
    model.cfg.llm.compile_layers = enabled


def _optimizer(model, fused: bool = False) -> torch.optim.Optimizer:
    """Naive: torch AdamW as it comes (multi-tensor); ours: the fused kernel (`train.fused_optimizer`)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=fused or None)


NAIVE_CUDNN_ATTENTION = True
"""The naive paths run with PyTorch's default sdpa kernels (cuDNN allowed); `--no-cudnn-attention` turns it off."""


def use_attention_kernels(model, naive: bool) -> None:
    """Naive: PyTorch's default sdpa kernels; ours: what `model.llm.cudnn_attention` says (the project default)."""
    from nextgpt.llm.backbone import configure_attention_kernels

    if not torch.cuda.is_available():
        return
    if naive:
        torch.backends.cuda.enable_cudnn_sdp(NAIVE_CUDNN_ATTENTION)
    else:
        configure_attention_kernels(model.cfg.llm)


def _step(model, optimizer, batch, device: str):
    out = model(batch.to(device))
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def measure_naive_without_cudnn(model, batches, groups, device: str, warmup: int, shapes: Shapes):
    """The naive path again with cuDNN's attention kernels switched off (PyTorch's flash / memory-efficient ones):
    the stricter baseline, so a speed-up is not just the kernel choice. None on CPU (no cuDNN attention there)."""
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return measure_steps(model, batches, groups, device, warmup, shapes)
    finally:
        use_attention_kernels(model, naive=True)


def _sample_lengths(items: list[dict[str, Any]]) -> list[int]:
    """LLM rows of each sample after splicing (one row per media item: the linear input projector)."""
    return [len(item["input_ids"]) for item in items]


def measure_steps(
    model,
    batches: list,
    groups: list[list[dict[str, Any]]],
    device: str,
    warmup: int,
    shapes: Shapes,
    fused: bool = False,
) -> dict[str, Any]:
    """Run `warmup` untimed steps, then time the rest; tokens, samples, padding, peak memory and MFU.

    Args:
        model: the NextGPT in its path's configuration.
        batches: collated `NextGPTBatch`es, one per step.
        groups: the items of each batch (for lengths).
        device: where the model lives.
        warmup: untimed steps first.
        shapes: sizes (for the FLOP count).
        fused: the fused AdamW kernel (ours) instead of torch's default one.

    Returns:
        samples/s, sample tokens/s, computed tokens/s, MFU, padding share, peak GiB, the last loss.
    """
    optimizer = _optimizer(model, fused)
    reset_peak()
    for batch in batches[:warmup]:
        _step(model, optimizer, batch, device)
    sync()
    start = time.perf_counter()
    computed: list[int] = []
    rows = 0
    loss = None
    for batch, items in zip(batches[warmup:], groups[warmup:], strict=True):
        out = _step(model, optimizer, batch, device)
        computed += [n - out.num_prefix_tokens for n in _sample_lengths(items)]
        rows += batch.input_ids.numel()
        loss = out.loss
    sync()
    elapsed = time.perf_counter() - start
    timed = groups[warmup:]
    samples = sum(len(g) for g in timed)
    sample_tokens = sum(sum(_sample_lengths(g)) for g in timed)
    params = count_llm_parameters(shapes)
    flops = training_flops(
        params["non_embedding"], shapes.llm["num_hidden_layers"], shapes.llm["hidden_size"], computed
    )
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "steps": len(timed),
        "step_ms": elapsed / len(timed) * 1e3,
        "samples_per_s": samples / elapsed,
        "tokens_per_s": sample_tokens / elapsed,
        "computed_tokens_per_s": sum(computed) / elapsed,
        "mfu": flops / elapsed / peak_flops(device_name),
        "padding_share": 1 - sample_tokens / max(rows, 1),
        "samples_per_step": samples / len(timed),
        "rows_per_step": sum(int(b.input_ids.shape[0]) for b in batches[warmup:]) / len(timed),
        "row_length_mean": float(np.mean([b.input_ids.shape[1] for b in batches[warmup:]])),
        "peak_gib": peak_gib(),
        "final_loss": None if loss is None else float(loss.detach()),
    }


def _pools(shapes: Shapes, num: int, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random image tensors (3 x S x S, as the image transform outputs them) and unit feature vectors, on CPU."""
    gen = torch.Generator().manual_seed(0)
    side = shapes.encoder.image_size
    pixels = [torch.randn(3, side, side, generator=gen) for _ in range(num)]
    features = [torch.nn.functional.normalize(torch.randn(shapes.encoder.out_embed_dim, generator=gen), dim=0)]
    features = features * num
    return pixels, features


def _collate(items: list[dict[str, Any]], micro_batch: int, max_length: int, packing: bool):
    collator = Collator(pad_id=0, max_length=max_length, tokens_per_media=1, packing=packing)
    groups = chunk(items, micro_batch)
    return [collator(g).batch for g in groups], groups


def precompute_rate(model, shapes: Shapes, device: str, batch: int, repeat: int = 3) -> dict[str, float]:
    """Feature-cache precompute throughput: ImageBind on `batch` images per call, in the encoder's dtype."""
    pixels = torch.randn(batch, 3, shapes.encoder.image_size, shapes.encoder.image_size, device=device)
    with torch.no_grad():
        model.encoder(Modality.IMAGE, pixels)
        sync()
        start = time.perf_counter()
        for _ in range(repeat):
            model.encoder(Modality.IMAGE, pixels)
        sync()
    elapsed = (time.perf_counter() - start) / repeat
    return {"batch": batch, "images_per_s": batch / elapsed}


def run_stage1(
    model, shapes: Shapes, device: str, micro_batch: int, steps: int, warmup: int, pack_length: int, profile: bool
) -> dict[str, Any]:
    """Stage 1 (frozen LLM; input projector and signal-token rows train) on CC3M-like captions."""
    from nextgpt.llm.tokenizer import signal_token_ids  # noqa: F401  (model.signal_ids already holds them)
    from nextgpt.training.stages import apply_trainable_groups

    apply_trainable_groups(model, STAGE1_GROUPS)
    set_checkpointing(model, False)
    num = micro_batch * (steps + warmup)
    pixels, features = _pools(shapes, micro_batch, device)
    naive_items = caption_items(model.tokenizer, model.signal_ids, num, pixels, None, np.random.default_rng(0))
    ours_items = caption_items(model.tokenizer, model.signal_ids, num, None, features, np.random.default_rng(0))
    result: dict[str, Any] = {"micro_batch": micro_batch, "pack_length": pack_length}
    # naive
    model.prefix_reuse = False
    use_attention_kernels(model, naive=True)
    batches, groups = _collate(naive_items, micro_batch, 2048, packing=False)
    result["naive"] = measure_steps(model, batches, groups, device, warmup, shapes)
    logger.info("stage 1 naive: %.1f samples/s", result["naive"]["samples_per_s"])
    result["naive_no_cudnn"] = measure_naive_without_cudnn(model, batches, groups, device, warmup, shapes)
    # ours: no encoder in memory, features, packing, prefix reuse; first with eager layers and masked sdpa ...
    encoder, model.encoder = model.encoder, None
    model.prefix_reuse = True
    use_attention_kernels(model, naive=False)
    batches, groups = _collate(ours_items, micro_batch, pack_length, packing=True)
    free_memory()
    result["ours_eager"] = measure_steps(model, batches, groups, device, warmup, shapes, fused=True)
    # ... then with varlen attention (the prefix joined per sample) and compiled layers on CUDA
    set_attention(model, "varlen")
    set_compiled(model, device == "cuda")
    result["ours"] = measure_steps(model, batches, groups, device, warmup, shapes, fused=True)
    result["ours"]["compile_layers"] = device == "cuda"
    logger.info("stage 1 ours: %.1f samples/s", result["ours"]["samples_per_s"])
    if profile:
        optimizer = _optimizer(model, fused=True)
        result["profile_ours"] = profile_top_kernels(lambda: _step(model, optimizer, batches[-1], device))
    set_compiled(model, False)
    set_attention(model, "sdpa")
    model.prefix_reuse = False
    model.encoder = encoder
    result["precompute"] = precompute_rate(model, shapes, device, batch=256 if device == "cuda" else 8)
    train_rate = result["ours"]["samples_per_s"]
    image_rate = result["precompute"]["images_per_s"]
    # One epoch of N samples, one image each: precompute N features, then train N samples.
    result["ours_end_to_end_samples_per_s"] = 1.0 / (1.0 / train_rate + 1.0 / image_rate)
    result["ratio"] = train_rate / result["naive"]["samples_per_s"]
    result["ratio_end_to_end"] = result["ours_end_to_end_samples_per_s"] / result["naive"]["samples_per_s"]
    free_memory()
    return result


def to_stage3(model, shapes: Shapes) -> None:
    """Wrap the LLM with peft LoRA (`shapes.lora`) and set the stage-3 trainable groups, in place."""
    from nextgpt.llm.lora import apply_lora
    from nextgpt.training.stages import apply_trainable_groups

    model.llm = apply_lora(model.llm, model_config(shapes, lora=True).lora)
    model.cfg.lora = model_config(shapes, lora=True).lora
    dtype = next(model.input_projector.parameters()).dtype
    model.llm.to(dtype)
    apply_trainable_groups(model, STAGE3_GROUPS)


def run_stage3(
    model,
    shapes: Shapes,
    device: str,
    micro_batch: int,
    steps: int,
    warmup: int,
    pack_length: int,
    profile: bool,
    cap_gib: float | None,
) -> dict[str, Any]:
    """Stage 3 (LoRA + projectors + signal rows train) on LLaVA/MosIT-like instructions; then ours with gradient
    checkpointing under a `cap_gib` memory cap (a 24 GB GPU)."""
    num = micro_batch * (steps + warmup)
    pixels, features = _pools(shapes, micro_batch, device)
    caption_dim = shapes.output_projectors.image.out_dim
    rng = np.random.default_rng
    naive_items = instruction_items(model.tokenizer, model.signal_ids, num, pixels, None, caption_dim, rng(0))
    ours_items = instruction_items(model.tokenizer, model.signal_ids, num, None, features, caption_dim, rng(0))
    result: dict[str, Any] = {"micro_batch": micro_batch, "pack_length": pack_length}
    model.prefix_reuse = False
    # naive: raw media, padding, gradient checkpointing (configs/stage_3.yaml)
    set_checkpointing(model, True)
    use_attention_kernels(model, naive=True)
    batches, groups = _collate(naive_items, micro_batch, 2048, packing=False)
    result["naive"] = measure_steps(model, batches, groups, device, warmup, shapes)
    result["naive"]["gradient_checkpointing"] = True
    logger.info("stage 3 naive: %.0f tokens/s", result["naive"]["tokens_per_s"])
    result["naive_no_cudnn"] = measure_naive_without_cudnn(model, batches, groups, device, warmup, shapes)
    # ours: features, packing with per-sample (varlen) attention
    encoder, model.encoder = model.encoder, None
    set_attention(model, "varlen")
    use_attention_kernels(model, naive=False)
    batches, groups = _collate(ours_items, micro_batch, pack_length, packing=True)
    # first with gradient checkpointing on a 24 GB budget (eager layers: compiled ones are measured next) ...
    set_checkpointing(model, True)
    free_memory()
    capped: dict[str, Any] = {"cap_gib": cap_gib, "gradient_checkpointing": True}
    try:
        with memory_cap(cap_gib):
            capped.update(
                measure_steps(model, batches[: warmup + 2], groups[: warmup + 2], device, warmup, shapes, fused=True)
            )
        capped["fits"] = True
    except torch.OutOfMemoryError as error:
        capped["fits"] = False
        capped["error"] = str(error).splitlines()[0]
        capped["peak_gib"] = peak_gib()
    # ... then at full speed: no checkpointing, compiled decoder layers
    set_checkpointing(model, False)
    if device == "cuda":
        set_compiled(model, True)
    free_memory()
    result["ours"] = measure_steps(model, batches, groups, device, warmup, shapes, fused=True)
    result["ours"]["gradient_checkpointing"] = False
    result["ours"]["compile_layers"] = device == "cuda"
    logger.info("stage 3 ours: %.0f tokens/s", result["ours"]["tokens_per_s"])
    if profile:
        optimizer = _optimizer(model, fused=True)
        result["profile_ours"] = profile_top_kernels(lambda: _step(model, optimizer, batches[-1], device))
    result["ratio"] = result["ours"]["tokens_per_s"] / result["naive"]["tokens_per_s"]
    result["ours_capped"] = capped
    set_compiled(model, False)
    model.encoder = encoder
    free_memory()
    return result
