"""Stage-1 and stage-3 training steps: the naive path next to ours, on the same samples and step count.

A step is `forward` -> `loss.backward()` -> AdamW step on the trainable parameters (the DeepSpeed wrapper of
`train.py` is left out here; `bench/loop_check.py` measures the whole loop). Batches are collated before timing, as
a data loader's workers would; the host-to-device copy of each batch is timed (ours from pinned memory, as train.py's
loader pins its batches; naive from pageable memory, as a plain DataLoader hands them over).

- naive: what a plain HF + peft script does: raw media through ImageBind-Huge every step, one padded row per sample
  (padded to the batch's longest, the system prompt recomputed in every sample), HF LLaMA with sdpa and its padding
  mask (+ peft LoRA and gradient checkpointing in stage 3), torch AdamW as it comes (`naive_forward`).
- naive_no_cudnn (GPU only): the naive path with cuDNN's attention kernels off, the stricter baseline.
- ours: exactly what `train.py` builds from the shipped stage YAML (`configs/stage_N.yaml` through `load_config`, the
  training model builder, the run's collator and optimizer), with only paths and the feature cache set: no speed
  switch is turned on here.

    result = run_stage1(shapes, tokenizer_dir, "cuda", micro_batch=32, steps=8, warmup=3, profile=True, work=work)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.components import FULL, Shapes, build_nextgpt, count_llm_parameters, write_vicuna_shaped_llm
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

logger = logging.getLogger(__name__)

STAGE1_GROUPS = ("input_projector", "token_rows")
STAGE3_GROUPS = ("lora", "input_projector", "output_projectors", "token_rows")
REPO = Path(__file__).resolve().parents[1]


def naive_forward(model, batch):
    """The step of a plain HF + peft script: splice media into padded rows, one HF call with the padding mask (the
    model's own sdpa kernels), CE on the text, L2 on the signal spans' conditioning."""
    from nextgpt.llm.splice import splice_media
    from nextgpt.losses import compute_caption_l2_loss, compute_lm_loss
    from nextgpt.signals import find_signal_spans

    media_tokens = model.encode_media(batch)
    spliced = splice_media(batch.input_ids, batch.attention_mask, batch.labels, model.embed_tokens, media_tokens)
    out = model.llm(
        inputs_embeds=spliced.inputs_embeds,
        attention_mask=spliced.attention_mask,
        output_hidden_states=True,
        use_cache=False,
    )
    scan = find_signal_spans(spliced.token_ids, model.signal_ids)
    signal_embeds = model.project_signals(out.hidden_states[-1], spliced.token_ids, scan)
    loss = compute_lm_loss(out.logits, spliced.labels)
    for modality, target in batch.caption_embeds.items():
        loss = loss + compute_caption_l2_loss(signal_embeds[modality], target.to(signal_embeds[modality].dtype))
    return loss, 0


def ours_forward(model, batch):
    out = model(batch)
    return out.loss, out.num_prefix_tokens


def naive_optimizer(model) -> torch.optim.Optimizer:
    """torch AdamW as it comes (multi-tensor kernel)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


NAIVE_CUDNN_ATTENTION = True
"""The naive paths run with PyTorch's default sdpa kernels (cuDNN allowed); `--no-cudnn-attention` turns it off."""


def use_naive_attention_kernels() -> None:
    """PyTorch's default sdpa kernels (cuDNN allowed unless `--no-cudnn-attention`)."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(NAIVE_CUDNN_ATTENTION)


def _step(forward, model, optimizer, batch, device: str) -> tuple[torch.Tensor, int]:
    loss, num_prefix = forward(model, batch.to(device, non_blocking=True))  # asynchronous for pinned batches only
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, num_prefix


def measure_naive_without_cudnn(model, batches, groups, device: str, warmup: int, shapes: Shapes):
    """The naive path again with cuDNN's attention kernels switched off (PyTorch's flash / memory-efficient ones):
    the stricter baseline, so a speed-up is not just the kernel choice. None on CPU (no cuDNN attention there)."""
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return measure_steps(naive_forward, model, naive_optimizer(model), batches, groups, device, warmup, shapes)
    finally:
        use_naive_attention_kernels()


def _sample_lengths(items: list[dict[str, Any]]) -> list[int]:
    """LLM rows of each sample after splicing (one row per media item: the linear input projector)."""
    return [len(item["input_ids"]) for item in items]


def measure_steps(
    forward,
    model,
    optimizer: torch.optim.Optimizer,
    batches: list,
    groups: list[list[dict[str, Any]]],
    device: str,
    warmup: int,
    shapes: Shapes,
    step_gc: bool = False,
) -> dict[str, Any]:
    """Run `warmup` untimed steps, then time the rest; tokens, samples, padding, peak memory and MFU.

    Args:
        forward: `naive_forward` or `ours_forward`.
        model: the NextGPT of that path.
        optimizer: the path's optimizer.
        batches: collated `NextGPTBatch`es, one per step.
        groups: the items of each batch (for lengths).
        device: where the model lives.
        warmup: untimed steps first.
        shapes: sizes (for the FLOP count).
        step_gc: collect garbage as the training loop does (`nextgpt.training.step_gc.StepGC`: only at step ends), for
            ours; False leaves Python's collector as a plain script has it (the naive paths). Either way the timed
            steps' collector pauses are reported as `gc_ms`.

    Returns:
        samples/s, sample tokens/s, computed tokens/s, MFU (datasheet and measured peak), padding share, peak GiB,
        the last loss, the collector's pauses in the timed steps.
    """
    from nextgpt.training.step_gc import StepGC
    from nextgpt.utils.step_timer import CollectorPauses

    reset_peak()
    pauses = CollectorPauses()
    with StepGC() if step_gc else contextlib.nullcontext() as collector:
        for step, batch in enumerate(batches[:warmup], start=1):
            _step(forward, model, optimizer, batch, device)
            if collector is not None:
                collector.end_step(step)
        sync()
        gc.callbacks.append(pauses)
        start = time.perf_counter()
        computed: list[int] = []
        rows = 0
        loss = None
        for step, (batch, items) in enumerate(zip(batches[warmup:], groups[warmup:], strict=True), start=warmup + 1):
            loss, num_prefix = _step(forward, model, optimizer, batch, device)
            computed += [n - num_prefix for n in _sample_lengths(items)]
            rows += batch.input_ids.numel()
            if collector is not None:
                collector.end_step(step)
        sync()
        elapsed = time.perf_counter() - start
        gc.callbacks.remove(pauses)
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
        "model_tflops": flops / elapsed / 1e12,
        "padding_share": 1 - sum(computed) / max(rows, 1),  # row columns that hold no computed token
        "samples_per_step": samples / len(timed),
        "rows_per_step": sum(int(b.input_ids.shape[0]) for b in batches[warmup:]) / len(timed),
        "row_length_mean": float(np.mean([b.input_ids.shape[1] for b in batches[warmup:]])),
        "peak_gib": peak_gib(),
        "final_loss": None if loss is None else float(loss.detach()),
        "gc_ms": pauses.seconds * 1e3,
        "gc_full_collections": pauses.full,
    }


def _pools(shapes: Shapes, num: int, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random image tensors (3 x S x S, as the image transform outputs them) and unit feature vectors, on CPU."""
    gen = torch.Generator().manual_seed(0)
    side = shapes.encoder.image_size
    pixels = [torch.randn(3, side, side, generator=gen) for _ in range(num)]
    features = [torch.nn.functional.normalize(torch.randn(shapes.encoder.out_embed_dim, generator=gen), dim=0)]
    features = features * num
    return pixels, features


def fit_to_config(items: list[dict[str, Any]], stage: int) -> list[dict[str, Any]]:
    """The samples as the shipped config's `model.llm.max_length` admits them (cut after the last whole round that
    fits, or dropped), the same for both paths, so both compute the same tokens and the counts are exact."""
    from nextgpt.config import load_config

    max_length = load_config(REPO / "configs" / f"stage_{stage}.yaml").model.llm.max_length
    fitter = Collator(pad_id=0, max_length=max_length)
    fitted = [fitter.fit_item(item)[0] for item in items]
    return [item for item in fitted if item is not None]


def _collate(items: list[dict[str, Any]], micro_batch: int, collator: Collator):
    groups = chunk(items, micro_batch)
    return [collator(g).batch for g in groups], groups


def naive_collator(model) -> Collator:
    """One padded row per sample, nothing stripped."""
    return Collator(pad_id=0, max_length=4096, tokens_per_media=model.input_projector.num_tokens, packing=False)


def preset_overrides(path: Path) -> list[str]:
    """A preset YAML as `key.sub=value` overrides (how a user lays it over a stage config)."""
    import yaml

    def flatten(data: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            out += flatten(value, dotted + ".") if isinstance(value, dict) else [f"{dotted}={value}"]
        return out

    return flatten(yaml.safe_load(path.read_text()))


def ours_config(stage: int, llm_dir: Path, shapes: Shapes, work: Path, extra: list[str] = ()):
    """The shipped stage YAML with only paths set (plus tiny sizes and float32 for the CPU smoke run)."""
    from nextgpt.config import load_config, to_dict

    cache = work / "feature_cache"
    cache.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"model.llm.model_path={llm_dir}",
        f"data.feature_cache_dir={cache}",  # features are precomputed once: the encoder is not loaded
        "train.init_from=",
    ]
    if shapes is not FULL:
        for modality, section in to_dict(shapes.output_projectors).items():
            overrides += [f"model.output_projectors.{modality}.{k}={v}" for k, v in section.items()]
        overrides += [f"model.encoder.out_embed_dim={shapes.encoder.out_embed_dim}", "model.llm.dtype=float32"]
        overrides += ["train.precision=fp32", "model.llm.compile_layers=false"]  # a CPU check, not a measurement
    return load_config(REPO / "configs" / f"stage_{stage}.yaml", overrides=[*overrides, *extra])


def build_ours(stage: int, llm_dir: Path, shapes: Shapes, work: Path, device: str, extra: list[str] = ()):
    """What `train.py` builds for the stage: the model (trainable groups, compiled layers as configured), collator and
    optimizer, cast to the training precision as DeepSpeed's bf16 mode does."""
    from nextgpt.training.data_setup import build_collator
    from nextgpt.training.engine import build_optimizer
    from nextgpt.training.loop import build_model_for_training

    cfg = ours_config(stage, llm_dir, shapes, work, extra)
    model = build_model_for_training(cfg)
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).train()
    return cfg, model, build_collator(cfg, model), build_optimizer(cfg.train, model)


def _switches(cfg) -> dict[str, Any]:
    """The speed-relevant values the shipped config resolved to (for the report)."""
    return {
        "data.packing": cfg.data.packing,
        "train.prefix_reuse": cfg.train.prefix_reuse,
        "train.fused_optimizer": cfg.train.fused_optimizer,
        "model.llm.compile_layers": cfg.model.llm.compile_layers,
        "model.llm.gradient_checkpointing": cfg.model.llm.gradient_checkpointing,
        "model.llm.max_length": cfg.model.llm.max_length,
    }


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


def _naive_results(model, items, micro_batch: int, device: str, warmup: int, shapes: Shapes) -> dict[str, Any]:
    """The naive path on `items`, with PyTorch's default attention kernels and without cuDNN's."""
    use_naive_attention_kernels()
    batches, groups = _collate(items, micro_batch, naive_collator(model))
    return {
        "naive": measure_steps(naive_forward, model, naive_optimizer(model), batches, groups, device, warmup, shapes),
        "naive_no_cudnn": measure_naive_without_cudnn(model, batches, groups, device, warmup, shapes),
    }


def _ours_results(
    stage: int,
    make_items,
    shapes: Shapes,
    work: Path,
    device: str,
    micro_batch: int,
    warmup: int,
    profile: bool,
    llm_dir: Path | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """Ours from the shipped stage YAML on `make_items(model)`; also returns the items and the LLM folder (written
    under `work` unless `llm_dir` names one of `shapes.llm`'s shape)."""
    llm_dir = write_vicuna_shaped_llm(llm_dir or work / f"llm-{shapes.name}", shapes.llm, device)
    cfg, model, collator, optimizer = build_ours(stage, llm_dir, shapes, work, device)
    items = fit_to_config(make_items(model), stage)
    batches, groups = _collate(items, micro_batch, collator)
    if device == "cuda":  # as train.py's data loader hands them over (pin_memory=True), copied without a wait
        batches = [batch.pin_memory() for batch in batches]
    out = {
        "ours_config": _switches(cfg),
        "ours": measure_steps(ours_forward, model, optimizer, batches, groups, device, warmup, shapes, step_gc=True),
    }
    if profile:
        step = lambda m=model, o=optimizer, b=batches[-1]: _step(ours_forward, m, o, b, device)  # noqa: E731
        out["profile_ours"] = profile_top_kernels(step)
        out["profile_ours_host"] = profile_top_kernels(step, rows=30, sort_by_host=True)
        out["profile_ours_host_inclusive"] = profile_top_kernels(step, rows=40, sort_by_host=True, inclusive=True)
    del model, optimizer, batches
    free_memory()
    return out, items, llm_dir


def _ours_items(stage: int, shapes: Shapes, num: int, features: list[torch.Tensor]):
    """`make_items` of the ours side: CC3M-like captions (stage 1) or LLaVA/MosIT-like instructions (stage 3) over
    precomputed features, the same `num` items for a given stage every time."""
    if stage == 1:
        return lambda m: caption_items(m.tokenizer, m.signal_ids, num, None, features, np.random.default_rng(0))
    caption_dim = shapes.output_projectors.image.out_dim
    return lambda m: instruction_items(
        m.tokenizer, m.signal_ids, num, None, features, caption_dim, np.random.default_rng(0)
    )


def run_ours(
    stage: int, shapes: Shapes, device: str, micro_batch: int, steps: int, warmup: int, work: Path, llm_dir: Path
) -> dict[str, Any]:
    """The `ours` measurement of `run_stage1` / `run_stage3` alone (no naive side, no profile), for
    bench/loop_check.py to set the real loop beside the isolated step in one process on one GPU.

    Args:
        llm_dir: the LLM folder to use (the loop's; written there if missing).

    Returns:
        `measure_steps`' result for the stage's shipped YAML.
    """
    _, features = _pools(shapes, micro_batch, device)
    make_items = _ours_items(stage, shapes, micro_batch * (steps + warmup), features)
    ours, _, _ = _ours_results(stage, make_items, shapes, work, device, micro_batch, warmup, False, llm_dir)
    return ours["ours"]


def run_stage1(
    shapes: Shapes, tokenizer, device: str, micro_batch: int, steps: int, warmup: int, profile: bool, work: Path
) -> dict[str, Any]:
    """Stage 1 (frozen LLM; input projector and signal-token rows train) on CC3M-like captions."""
    num = micro_batch * (steps + warmup)
    result: dict[str, Any] = {"micro_batch": micro_batch}
    model = build_nextgpt(shapes, tokenizer, device, lora=False, with_encoder=True, trainable=STAGE1_GROUPS)
    pixels, features = _pools(shapes, micro_batch, device)
    rng = np.random.default_rng
    naive_items = fit_to_config(caption_items(model.tokenizer, model.signal_ids, num, pixels, None, rng(0)), 1)
    result.update(_naive_results(model, naive_items, micro_batch, device, warmup, shapes))
    logger.info("stage 1 naive: %.1f samples/s", result["naive"]["samples_per_s"])
    result["precompute"] = precompute_rate(model, shapes, device, batch=256 if device == "cuda" else 8)
    del model
    free_memory()
    ours, _, _ = _ours_results(
        1, _ours_items(1, shapes, num, features), shapes, work, device, micro_batch, warmup, profile
    )
    result.update(ours)
    logger.info("stage 1 ours: %.1f samples/s", result["ours"]["samples_per_s"])
    train_rate = result["ours"]["samples_per_s"]
    image_rate = result["precompute"]["images_per_s"]
    # One epoch of N samples, one image each: precompute N features, then train N samples.
    result["ours_end_to_end_samples_per_s"] = 1.0 / (1.0 / train_rate + 1.0 / image_rate)
    result["ratio"] = train_rate / result["naive"]["samples_per_s"]
    result["ratio_end_to_end"] = result["ours_end_to_end_samples_per_s"] / result["naive"]["samples_per_s"]
    return result


def run_stage3(
    shapes: Shapes,
    tokenizer,
    device: str,
    micro_batch: int,
    steps: int,
    warmup: int,
    profile: bool,
    work: Path,
    cap_gib: float | None,
) -> dict[str, Any]:
    """Stage 3 (LoRA + projectors + signal rows train) on LLaVA/MosIT-like instructions; then ours with gradient
    checkpointing (`configs/presets/gpu_24gb.yaml`) under a `cap_gib` memory cap (a 24 GB GPU)."""
    num = micro_batch * (steps + warmup)
    caption_dim = shapes.output_projectors.image.out_dim
    rng = np.random.default_rng
    result: dict[str, Any] = {"micro_batch": micro_batch}
    # naive: raw media, padding, peft LoRA with gradient checkpointing
    model = build_nextgpt(
        shapes, tokenizer, device, lora=True, with_encoder=True, gradient_checkpointing=True, trainable=STAGE3_GROUPS
    )
    pixels, features = _pools(shapes, micro_batch, device)
    items = instruction_items(model.tokenizer, model.signal_ids, num, pixels, None, caption_dim, rng(0))
    result.update(_naive_results(model, fit_to_config(items, 3), micro_batch, device, warmup, shapes))
    result["naive"]["gradient_checkpointing"] = True
    logger.info("stage 3 naive: %.0f tokens/s", result["naive"]["tokens_per_s"])
    del model
    free_memory()
    ours, ours_items, llm_dir = _ours_results(
        3, _ours_items(3, shapes, num, features), shapes, work, device, micro_batch, warmup, profile
    )
    result.update(ours)
    logger.info("stage 3 ours: %.0f tokens/s", result["ours"]["tokens_per_s"])
    result["ratio"] = result["ours"]["tokens_per_s"] / result["naive"]["tokens_per_s"]
    result["ours_capped"] = _capped_stage3(llm_dir, shapes, work, device, ours_items, micro_batch, warmup, cap_gib)
    return result


def _capped_stage3(llm_dir, shapes, work, device, items, micro_batch, warmup, cap_gib) -> dict[str, Any]:
    """Stage 3 with the 24 GB preset (`configs/presets/gpu_24gb.yaml`) under a memory cap."""
    preset = preset_overrides(REPO / "configs" / "presets" / "gpu_24gb.yaml")
    cfg, model, collator, optimizer = build_ours(3, llm_dir, shapes, work, device, preset)
    batches, groups = _collate(items[: micro_batch * (warmup + 2)], micro_batch, collator)
    capped: dict[str, Any] = {"cap_gib": cap_gib, "preset": preset, **_switches(cfg)}
    free_memory()
    try:
        with memory_cap(cap_gib):
            capped.update(
                measure_steps(ours_forward, model, optimizer, batches, groups, device, warmup, shapes, step_gc=True)
            )
        capped["fits"] = True
    except torch.OutOfMemoryError as error:
        capped["fits"] = False
        capped["error"] = str(error).splitlines()[0]
        capped["peak_gib"] = peak_gib()
    del model, optimizer, batches
    free_memory()
    return capped
