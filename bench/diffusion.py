"""UNet and UNet3D step time: plain diffusers fp16 (naive) next to the project's `optimize_unet` switches (ours).

One classifier-free-guidance step is one UNet call on a batch of 2 (conditional + unconditional): SD-1.5 at 512x512
(latents 4x64x64, context 77x768), ZeroScope at 576x320x24 (latents 4x24x40x72, context 77x1024).

    result = run_unet_section("unet", FULL, "cuda")   # {"naive": {"median_ms": ...}, "ours": {...}, "ratio": ...}
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from bench.components import Shapes, build_sd_unet, build_zeroscope_unet
from bench.timing import free_memory, peak_gib, reset_peak, sync, time_calls

logger = logging.getLogger(__name__)

OURS_SWITCHES = dict(channels_last=True, fuse_qkv=True, compile=True)
"""`model.decoders.<m>.{channels_last,fuse_qkv,compile}` of the "ours" configuration."""


def cfg_step_inputs(kind: str, shapes: Shapes, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random UNet inputs of one CFG step (batch 2)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    if kind == "unet":
        side = shapes.sd_unet["sample_size"]
        sample = torch.randn(2, 4, side, side, generator=gen)  # (2, 4, 64, 64)
        context = torch.randn(2, 77, shapes.sd_unet["cross_attention_dim"], generator=gen)  # (2, 77, 768)
    else:
        frames, height, width = shapes.latent_video
        sample = torch.randn(2, 4, frames, height, width, generator=gen)  # (2, 4, 24, 40, 72)
        context = torch.randn(2, 77, shapes.zeroscope_unet["cross_attention_dim"], generator=gen)  # (2, 77, 1024)
    return {
        "sample": sample.to(device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": context.to(device=device, dtype=dtype),
    }


def _step_fn(unet, inputs: dict[str, torch.Tensor], channels_last: bool):
    sample = inputs["sample"]
    if channels_last and sample.ndim == 4:
        sample = sample.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def step() -> torch.Tensor:
        return unet(sample, inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"]).sample

    return step


def run_unet_section(
    kind: str,
    shapes: Shapes,
    device: str,
    repeat: int = 10,
    compile_unet: bool = True,
    pipeline=None,
) -> dict[str, Any]:
    """Time one CFG step of the plain fp16 UNet, then of the same UNet after the "ours" decoder switches.

    Args:
        kind: "unet" (SD-1.5) or "unet3d" (ZeroScope).
        shapes: sizes.
        device: "cuda" (fp16) or "cpu" (fp32, smoke).
        repeat: timed calls per variant.
        compile_unet: the `compile` switch (off for the CPU smoke run).
        pipeline: a loaded pipeline on `device` whose UNet to use (its UNet and VAE are optimised in place through
            `apply_decoder_speedups`); None builds a bare UNet.

    Returns:
        {"naive": stats, "ours": stats | None, "ratio": naive/ours median, "switches": ..., "params": ...}.
    """
    from nextgpt.config import DecoderConfig
    from nextgpt.decoders.acceleration import apply_decoder_speedups, optimize_unet

    dtype = torch.float16 if device == "cuda" else torch.float32
    reset_peak()
    if pipeline is None:
        build = build_sd_unet if kind == "unet" else build_zeroscope_unet
        unet = build(shapes, device, dtype)
    else:
        unet = pipeline.unet
    inputs = cfg_step_inputs(kind, shapes, device, dtype)
    naive = time_calls(_step_fn(unet, inputs, channels_last=False), warmup=3, repeat=repeat)
    naive["peak_gib"] = peak_gib()
    logger.info("%s naive: %.2f ms per CFG step", kind, naive["median_ms"])
    switches = {**OURS_SWITCHES, "compile": compile_unet}
    if pipeline is None:
        optimize_unet(unet, **switches)
    else:
        apply_decoder_speedups(pipeline, DecoderConfig(**switches))
    start = time.perf_counter()
    step = _step_fn(unet, inputs, channels_last=switches["channels_last"])
    step()
    sync()
    first_call_s = time.perf_counter() - start
    ours = time_calls(step, warmup=2, repeat=repeat)
    ours["first_call_s"] = first_call_s
    ours["peak_gib"] = peak_gib()
    logger.info("%s ours: %.2f ms per CFG step (first call %.0f s)", kind, ours["median_ms"], first_call_s)
    params = sum(p.numel() for p in unet.parameters())
    del unet
    free_memory()
    return {
        "naive": naive,
        "ours": ours,
        "ratio": naive["median_ms"] / ours["median_ms"],
        "switches": switches,
        "params": params,
        "dtype": str(dtype).replace("torch.", ""),
    }
