"""Faster diffusion steps for the frozen decoders: channels-last, fused q/k/v, `torch.compile`, fewer-step solvers.

Every switch is off by default and set per decoder in `model.decoders.<m>` (`channels_last`, `fuse_qkv`,
`compile`, `scheduler`). `load_decoder` calls `apply_decoder_speedups`, so prediction, the demo, the denoising
loss and the benchmarks all run the same UNet. None of the UNet switches changes the numbers beyond float
rounding; a named scheduler changes the sampler (and wants fewer steps), so it is only ever installed on request.

    pipeline = apply_decoder_speedups(pipeline, cfg.model.decoders.image)  # in place; logs what it did once
    unet = optimize_unet(unet, channels_last=True, fuse_qkv=True, compile=False)
    ms = unet_step_ms(unet, latents, timestep, prompt_embeds, iters=20, warmup=3)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0
from torch import Tensor, nn

from nextgpt.config import DecoderConfig

logger = logging.getLogger(__name__)

SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "dpm_solver": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
"""The fewer-step solvers `DecoderConfig.scheduler` can name ("default" keeps the pipeline's own)."""
SUPPORTED_PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
"""Prediction types all three solvers implement without extra settings (flow matching needs flow sigmas)."""
CUDA_COMPILE_MODE = "default"
"""Inductor mode on GPU. Measured on one H100 (torch 2.11, fp16, with channels-last and fused q/k/v), per UNet step:
SD-1.5 shape at 512 px, batch 2: 51.9 ms plain -> 16.6 ms (3.1x), first call 83 s; ZeroScope shape at
576x320x24, batch 2: 215 ms -> 147 ms (1.46x), first call 159 s. "max-autotune-no-cudagraphs" adds minutes of
kernel benchmarking per shape on top; "reduce-overhead" adds CUDA graphs, whose outputs the next replay overwrites
and whose private memory pool would outlive `Decoder.offload`."""
_EAGER_AUTOGRAD_WARNED: list[bool] = []
"""Non-empty once `run_eagerly_under_autograd` has logged its warning (log it once per process)."""


def convert_to_channels_last(module: nn.Module) -> int:
    """Store every 4-D parameter and buffer (2-D conv kernels) of `module` in channels-last order, in place.

    `module.to(memory_format=torch.channels_last)` fails on UNet3D's 5-D temporal conv kernels; those stay
    as they are, so the same call serves 2-D and 3-D UNets and the VAE. Convolutions then pick the NHWC
    cuDNN kernels and hand channels-last activations to the next layer.

    Args:
        module: a UNet or VAE.

    Returns:
        How many tensors were converted.
    """
    num_converted = 0
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
                num_converted += 1
    return num_converted


class FusedSelfOrCrossAttnProcessor(FusedAttnProcessor2_0):
    """`FusedAttnProcessor2_0` that also serves cross-attention modules called without a context.

    Fusing gives self-attention modules `to_qkv` and cross-attention modules `to_kv`. AudioLDM's UNet has
    cross-attention modules but is called with `encoder_hidden_states=None` (its CLAP vector enters as
    `class_labels`), so they attend to the hidden states themselves, where diffusers' processor looks for the
    missing `to_qkv`. Here they attend through `to_q` + `to_kv` on the hidden states, as the unfused processor
    would, or fall back to the unfused processor where the module normalises its context differently.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unfused = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if encoder_hidden_states is None and not hasattr(attn, "to_qkv"):
            plain_self_attention = (
                hidden_states.ndim == 3
                and attn.group_norm is None
                and attn.spatial_norm is None
                and not attn.norm_cross
            )
            if not plain_self_attention:
                return self.unfused(attn, hidden_states, None, attention_mask, temb)
            encoder_hidden_states = hidden_states  # (B, N, C) attends to itself through the fused k/v projection
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def fuse_attention_projections(unet: nn.Module) -> bool:
    """Fuse q/k/v (self-attention) and k/v (cross-attention) projections of every attention block, in place.

    Uses the UNet's own `fuse_qkv_projections` (UNet2DCondition and UNet3DCondition have it in diffusers 0.42),
    then installs `FusedSelfOrCrossAttnProcessor` so context-free cross-attention (AudioLDM) keeps working.
    The fused layers copy the frozen weights and are frozen like them.

    Args:
        unet: a diffusers UNet.

    Returns:
        True when fused; False (with the reason logged) for a model that cannot be fused.
    """
    if not hasattr(unet, "fuse_qkv_projections"):
        logger.warning("fuse_qkv skipped: %s has no fuse_qkv_projections()", type(unet).__name__)
        return False
    try:
        unet.fuse_qkv_projections()
    except ValueError as error:  # added-KV attention (e.g. UnCLIP-style UNets) cannot be fused
        logger.warning("fuse_qkv skipped for %s: %s", type(unet).__name__, error)
        return False
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(FusedSelfOrCrossAttnProcessor())
            for fused_name in ("to_qkv", "to_kv"):
                if hasattr(module, fused_name):
                    getattr(module, fused_name).requires_grad_(module.to_q.weight.requires_grad)
    return True


def compile_unet(unet: nn.Module) -> nn.Module:
    """`torch.compile` the UNet's forward in place (the module keeps its class, config and attributes).

    One whole graph (`fullgraph=True`): the diffusers UNets trace without breaks, and a break would silently
    give back much of the gain. Static shapes: the sampler calls the UNet with one shape per request; each new
    shape pays the compile time again (Dynamo recompiles at most `torch._dynamo.config.recompile_limit` times,
    then runs eagerly).

    Args:
        unet: a diffusers UNet, already on its device (the mode is chosen from it).

    Returns:
        The same module.
    """
    on_cuda = next(unet.parameters()).device.type == "cuda"
    mode = CUDA_COMPILE_MODE if on_cuda else "default"
    # dynamic=False: every decoder's UNet enters through the same function, so without it the second UNet compiled
    # in a process is taken for a shape change and compiled with symbolic shapes (15x slower to compile on CPU).
    unet.compile(mode=mode, fullgraph=True, dynamic=False)
    return unet


def is_compiled(module: nn.Module) -> bool:
    """Whether `module` was compiled in place by `compile_unet` (`nn.Module.compile`)."""
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def run_eagerly_under_autograd(unet: nn.Module) -> Iterator[None]:
    """Run a compiled UNet eagerly while autograd records through it; no-op otherwise.

    Why: on CPU (torch 2.14) the Inductor-compiled tiny SD UNet returned the right outputs but wrong
    gradients w.r.t. `encoder_hidden_states` (relative error 1e-1 to 1e3, changing run to run), which is the
    only trainable path of the denoising loss. On an H100 (torch 2.11) the tiny UNets' compiled gradients did
    match (relative error 5e-5), but the CPU failure was silent, so training never trusts them. Sampling
    (no_grad) keeps the compiled graph.

    Args:
        unet: the decoder's UNet.

    Yields:
        Nothing; the body runs eagerly when `unet` is compiled and grad mode is on.
    """
    if not (is_compiled(unet) and torch.is_grad_enabled()):
        yield
        return
    if not _EAGER_AUTOGRAD_WARNED:
        logger.warning(
            "%s is compiled: the denoising loss runs it eagerly (compiled gradients were wrong)", type(unet).__name__
        )
        _EAGER_AUTOGRAD_WARNED.append(True)
    with torch.compiler.set_stance("force_eager"):
        yield


def optimize_unet(unet: nn.Module, *, channels_last: bool, fuse_qkv: bool, compile: bool) -> nn.Module:
    """Apply the numerically neutral UNet speedups in place: memory layout, fused projections, compilation.

    Args:
        unet: a frozen diffusers UNet (2-D or 3-D).
        channels_last: store 2-D conv kernels channels-last (`convert_to_channels_last`); a UNet with 3-D
            (temporal) convolutions gets it only together with `compile`.
        fuse_qkv: fuse attention projections (`fuse_attention_projections`).
        compile: `torch.compile` it last, so the compiled graph sees the layout and the fused layers.

    Returns:
        The same module, for chaining.
    """
    has_3d_convs = any(p.dim() == 5 for p in unet.parameters())
    if channels_last and has_3d_convs and not compile:
        # ZeroScope-shaped UNet3D, H100, fp16, one step: 215 ms plain, 225 ms channels-last; compiled with
        # channels-last + fused q/k/v it ran at 147 ms, so it stays on under compile.
        logger.info("channels_last skipped for %s without compile (measured slower eagerly)", type(unet).__name__)
    elif channels_last:
        convert_to_channels_last(unet)
    if fuse_qkv:
        fuse_attention_projections(unet)
    if compile:
        compile_unet(unet)
    return unet


def build_scheduler(name: str, scheduler_config: dict[str, Any]) -> SchedulerMixin:
    """Build the named sampler from a pipeline scheduler's config, keeping its training schedule.

    `from_config` carries over the betas, `num_train_timesteps`, `prediction_type`, `timestep_spacing` and
    `steps_offset`, so the solver integrates the same diffusion process the UNet was trained on.

    Args:
        name: "default" (the config's own class, rebuilt), "dpm_solver", "unipc" or "euler".
        scheduler_config: `pipeline.scheduler.config`.

    Returns:
        A fresh scheduler.

    Raises:
        ValueError: an unknown name, or a prediction type the solver does not implement.
    """
    if name == "default":
        from diffusers import schedulers

        return getattr(schedulers, scheduler_config["_class_name"]).from_config(scheduler_config)
    if name not in SCHEDULER_CLASSES:
        raise ValueError(
            f"unknown scheduler {name!r}; set model.decoders.<m>.scheduler to default, {', '.join(SCHEDULER_CLASSES)}"
        )
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in SUPPORTED_PREDICTION_TYPES:
        raise ValueError(
            f"scheduler {name!r} does not support prediction_type {prediction_type!r} of this pipeline "
            f"(supported: {', '.join(SUPPORTED_PREDICTION_TYPES)}); set model.decoders.<m>.scheduler=default"
        )
    return SCHEDULER_CLASSES[name].from_config(scheduler_config)


def apply_decoder_speedups(pipe: DiffusionPipeline, cfg: DecoderConfig) -> DiffusionPipeline:
    """Apply one decoder config's speed switches to a loaded pipeline, in place, and log them once.

    Call it after the pipeline is on its device. The UNet gets `optimize_unet`; the VAE gets channels-last too
    (its decode is a few large convolutions); the scheduler is swapped only for a named solver.

    Args:
        pipe: a loaded SD / ZeroScope / AudioLDM pipeline.
        cfg: its `model.decoders.<m>` section.

    Returns:
        The same pipeline.

    Raises:
        ValueError: see `build_scheduler`.
    """
    pipeline_scheduler = type(pipe.scheduler).__name__
    if cfg.scheduler != "default":
        pipe.scheduler = build_scheduler(cfg.scheduler, pipe.scheduler.config)
    optimize_unet(pipe.unet, channels_last=cfg.channels_last, fuse_qkv=cfg.fuse_qkv, compile=cfg.compile)
    if cfg.channels_last and isinstance(getattr(pipe, "vae", None), nn.Module):
        convert_to_channels_last(pipe.vae)
    origin = "the pipeline's own" if cfg.scheduler == "default" else f"replaces {pipeline_scheduler}"
    logger.info(
        "%s: scheduler %s (%s), %d steps; channels_last=%s fuse_qkv=%s compile=%s",
        type(pipe).__name__,
        type(pipe.scheduler).__name__,
        origin,
        cfg.num_inference_steps,
        cfg.channels_last,
        cfg.fuse_qkv,
        cfg.compile,
    )
    return pipe


@torch.no_grad()
def unet_step_ms(
    unet: nn.Module,
    sample: Tensor,
    timestep: Tensor | int,
    encoder_hidden_states: Tensor | None,
    iters: int = 20,
    warmup: int = 3,
    **unet_inputs: Any,
) -> float:
    """Mean wall time of one UNet forward in milliseconds, synchronised on CUDA (no_grad, as the pipelines run it).

    Args:
        unet: the (optionally optimised) UNet.
        sample: latents, e.g. (2, 4, 64, 64) for SD-1.5 at 512 px with guidance, or (2, 4, 24, 40, 72) for
            ZeroScope at 576x320x24.
        timestep: scalar or (B,) timestep.
        encoder_hidden_states: (B, 77, D) conditioning, or None (AudioLDM).
        iters: timed calls.
        warmup: untimed calls first; a compiled UNet compiles in the first one.
        **unet_inputs: other UNet arguments (AudioLDM: `class_labels`).

    Returns:
        Milliseconds per call.

    Raises:
        ValueError: iters < 1 or warmup < 0.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"unet_step_ms needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")

    def step() -> None:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False, **unet_inputs)

    for _ in range(warmup):
        step()
    if sample.device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - start) * 1000.0 / iters
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(sample.device)
    start_event.record()
    for _ in range(iters):
        step()
    end_event.record()
    torch.cuda.synchronize(sample.device)
    return start_event.elapsed_time(end_event) / iters
