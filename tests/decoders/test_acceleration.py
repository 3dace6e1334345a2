"""Decoder speed switches: same numbers with channels-last / fused q/k/v / compile, schedulers only on request."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.models.attention_processor import Attention

from nextgpt.config import DecoderConfig
from nextgpt.constants import Modality
from nextgpt.decoders import Decoder, compute_denoising_loss, load_decoder, prepare_image_target
from nextgpt.decoders.acceleration import (
    FusedSelfOrCrossAttnProcessor,
    build_scheduler,
    convert_to_channels_last,
    is_compiled,
    optimize_unet,
    unet_step_ms,
)

CHANNELS_LAST = torch.channels_last
TINY_DIMS: dict[Modality, int] = {Modality.IMAGE: 32, Modality.VIDEO: 24, Modality.AUDIO: 16}
"""Conditioning widths of the tiny decoders (tests/decoders/conftest.py)."""


def _load(cfgs: dict[Modality, DecoderConfig], modality: Modality, **switches: Any) -> Decoder:
    """A decoder of its own (tests mutate it), loaded through `load_decoder` with the given config switches."""
    return load_decoder(modality, dataclasses.replace(cfgs[modality], **switches), expected_dim=TINY_DIMS[modality])


def _unet_inputs(decoder: Decoder) -> dict[str, Any]:
    """Fixed UNet inputs (CFG-sized batch of 2) in the decoder's latent layout."""
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {"timestep": torch.tensor([10, 700])}
    if decoder.modality is Modality.AUDIO:
        inputs["sample"] = torch.randn(2, 4, 8, 8, generator=generator)
        inputs["encoder_hidden_states"] = None
        inputs["class_labels"] = torch.randn(2, TINY_DIMS[Modality.AUDIO], generator=generator)
    else:
        latent_shape = (2, 4, 8, 8) if decoder.modality is Modality.IMAGE else (2, 4, 3, 8, 8)
        inputs["sample"] = torch.randn(latent_shape, generator=generator)
        inputs["encoder_hidden_states"] = torch.randn(2, 77, TINY_DIMS[decoder.modality], generator=generator)
    return inputs


def _generate(decoder: Decoder, **options: Any) -> np.ndarray:
    conditioning = torch.randn((2, *decoder.conditioning_shape), generator=torch.Generator().manual_seed(1))
    return np.stack(decoder.generate(conditioning, seed=4, **options))


@pytest.mark.numerics
@pytest.mark.parametrize("switch", ["channels_last", "fuse_qkv"])
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.VIDEO, Modality.AUDIO])
def test_unet_switches_keep_outputs(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig], modality: Modality, switch: str
) -> None:
    plain = _load(tiny_decoder_cfgs, modality)
    fast = _load(tiny_decoder_cfgs, modality, **{switch: True})
    inputs = _unet_inputs(plain)
    with torch.no_grad():
        expected = plain.pipeline.unet(**inputs).sample
        got = fast.pipeline.unet(**inputs).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    plain_media, fast_media = _generate(plain), _generate(fast)
    if modality is Modality.AUDIO:
        np.testing.assert_allclose(fast_media, plain_media, rtol=0, atol=1e-5)
    else:  # uint8: a float difference of ~1e-6 may flip one rounding
        assert np.abs(fast_media.astype(int) - plain_media.astype(int)).max() <= 1


def test_fuse_qkv_fuses_every_attention_block(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    for modality in Modality.IMAGE, Modality.VIDEO, Modality.AUDIO:
        unet = _load(tiny_decoder_cfgs, modality, fuse_qkv=True).pipeline.unet
        attentions = [m for m in unet.modules() if isinstance(m, Attention)]
        assert attentions
        for attention in attentions:
            assert isinstance(attention.processor, FusedSelfOrCrossAttnProcessor)
            fused = attention.to_kv if attention.is_cross_attention else attention.to_qkv
            assert not fused.weight.requires_grad  # frozen like the weights it copies
        assert any(a.is_cross_attention for a in attentions)  # incl. AudioLDM's context-free cross-attention


@pytest.mark.numerics
def test_channels_last_on_3d_unet_keeps_outputs_and_5d_kernels(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig],
) -> None:
    plain = _load(tiny_decoder_cfgs, Modality.VIDEO)
    unet = _load(tiny_decoder_cfgs, Modality.VIDEO).pipeline.unet
    assert convert_to_channels_last(unet) > 0
    kernels_4d = [p for p in unet.parameters() if p.dim() == 4 and p.shape[-2:] != (1, 1)]
    kernels_5d = [p for p in unet.parameters() if p.dim() == 5]
    assert kernels_4d and kernels_5d
    assert all(p.is_contiguous(memory_format=CHANNELS_LAST) for p in kernels_4d)
    assert all(p.is_contiguous() for p in kernels_5d)  # channels_last is undefined for 5-D tensors
    inputs = _unet_inputs(plain)
    with torch.no_grad():
        torch.testing.assert_close(unet(**inputs).sample, plain.pipeline.unet(**inputs).sample, rtol=0, atol=1e-5)


def test_3d_unet_gets_channels_last_only_with_compile(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    eager = _load(tiny_decoder_cfgs, Modality.VIDEO, channels_last=True).pipeline
    assert not eager.unet.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)  # measured slower eagerly
    assert eager.vae.decoder.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)
    unet = _load(tiny_decoder_cfgs, Modality.VIDEO).pipeline.unet
    optimize_unet(unet, channels_last=True, fuse_qkv=False, compile=True)  # compiles lazily: nothing runs here
    assert unet.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert is_compiled(unet)


def test_default_scheduler_is_left_alone(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    for modality in Modality.IMAGE, Modality.VIDEO, Modality.AUDIO:
        decoder = _load(tiny_decoder_cfgs, modality, scheduler="default")
        assert type(decoder.pipeline.scheduler) is DDIMScheduler


@pytest.mark.parametrize(
    ("name", "scheduler_class"),
    [
        ("dpm_solver", DPMSolverMultistepScheduler),
        ("unipc", UniPCMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
    ],
)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_named_scheduler_keeps_the_training_schedule(
    image_decoder: Decoder, name: str, scheduler_class: type, prediction_type: str
) -> None:
    source = DDIMScheduler.from_config(image_decoder.pipeline.scheduler.config, prediction_type=prediction_type)
    scheduler = build_scheduler(name, source.config)
    assert type(scheduler) is scheduler_class
    assert scheduler.config.prediction_type == prediction_type
    torch.testing.assert_close(scheduler.alphas_cumprod, source.alphas_cumprod)


@pytest.mark.parametrize("name", ["dpm_solver", "unipc", "euler"])
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.VIDEO, Modality.AUDIO])
def test_named_scheduler_generates_in_three_steps(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig], modality: Modality, name: str
) -> None:
    decoder = _load(tiny_decoder_cfgs, modality, scheduler=name, num_inference_steps=3)
    assert type(decoder.pipeline.scheduler) is type(build_scheduler(name, decoder.pipeline.scheduler.config))
    media = _generate(decoder)
    assert media.shape[0] == 2 and np.isfinite(media.astype(np.float64)).all()
    assert len(decoder.pipeline.scheduler.timesteps) == 3


def test_bad_scheduler_combinations_fail_in_one_line(image_decoder: Decoder) -> None:
    flow_config = DDIMScheduler.from_config(image_decoder.pipeline.scheduler.config).config
    flow_config = {**flow_config, "prediction_type": "flow_prediction"}
    with pytest.raises(
        ValueError, match=r"^scheduler 'euler' does not support prediction_type 'flow_prediction'[^\n]*$"
    ):
        build_scheduler("euler", flow_config)
    with pytest.raises(ValueError, match=r"^unknown scheduler 'ddpm'; set model\.decoders\.<m>\.scheduler"):
        build_scheduler("ddpm", dict(image_decoder.pipeline.scheduler.config))


def test_load_decoder_applies_and_logs_the_switches(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nextgpt.decoders.acceleration"):
        decoder = _load(
            tiny_decoder_cfgs,
            Modality.IMAGE,
            channels_last=True,
            fuse_qkv=True,
            compile=True,
            scheduler="unipc",
            num_inference_steps=3,
        )
    pipeline = decoder.pipeline
    assert pipeline.unet.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert pipeline.vae.encoder.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert pipeline.unet.mid_block.attentions[0].transformer_blocks[0].attn1.fused_projections
    assert is_compiled(pipeline.unet)
    assert type(pipeline.scheduler) is UniPCMultistepScheduler
    lines = [r.getMessage() for r in caplog.records if "scheduler" in r.getMessage()]
    assert lines == [
        "StableDiffusionPipeline: scheduler UniPCMultistepScheduler (replaces DDIMScheduler), 3 steps; "
        "channels_last=True fuse_qkv=True compile=True"
    ]
    plain = _load(tiny_decoder_cfgs, Modality.IMAGE)
    assert not plain.pipeline.unet.conv_in.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert not is_compiled(plain.pipeline.unet)


@pytest.mark.numerics
def test_compiled_unet_matches_plain(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    plain = _load(tiny_decoder_cfgs, Modality.IMAGE)
    compiled = _load(tiny_decoder_cfgs, Modality.IMAGE, compile=True)
    inputs = _unet_inputs(plain)
    with torch.no_grad():
        expected = plain.pipeline.unet(**inputs).sample
        got = compiled.pipeline.unet(**inputs).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.numerics
def test_denoising_loss_and_gradient_unchanged_with_every_switch(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig],
) -> None:
    switches = {"channels_last": True, "fuse_qkv": True, "compile": True, "scheduler": "dpm_solver"}
    plain = _load(tiny_decoder_cfgs, Modality.IMAGE)
    fast = _load(tiny_decoder_cfgs, Modality.IMAGE, **switches)
    target = prepare_image_target(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), 32)
    results = []
    for decoder in plain, fast:
        conditioning = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        loss = compute_denoising_loss(decoder, target, conditioning, 5.0, generator=torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss.detach(), conditioning.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-9)
    assert results[0][1].abs().sum() > 0


def test_unet_step_ms_times_a_step(image_decoder: Decoder) -> None:
    inputs = _unet_inputs(image_decoder)
    milliseconds = unet_step_ms(
        image_decoder.pipeline.unet, inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], 2, 1
    )
    assert 0.0 < milliseconds < 60_000.0
    with pytest.raises(ValueError, match=r"iters >= 1 and warmup >= 0, got iters=0, warmup=1"):
        unet_step_ms(image_decoder.pipeline.unet, inputs["sample"], 1, inputs["encoder_hidden_states"], 0, 1)
