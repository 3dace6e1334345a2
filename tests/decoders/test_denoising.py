"""The conditional denoising loss: finiteness, gradient paths, prediction types and Min-SNR weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from nextgpt.config import DecoderConfig
from nextgpt.constants import Modality
from nextgpt.decoders import (
    Decoder,
    ImageDecoder,
    VideoDecoder,
    compute_denoising_loss,
    compute_log_mel,
    load_decoder,
    prepare_image_target,
    prepare_video_target,
)


def _random_pixels(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def _target(modality: Modality) -> torch.Tensor:
    if modality is Modality.IMAGE:
        return prepare_image_target(_random_pixels(2, 40, 48, 3), 32)
    if modality is Modality.VIDEO:
        return prepare_video_target(_random_pixels(2, 3, 32, 32, 3), 32)
    return compute_log_mel(torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)), n_mel=16)


@pytest.mark.parametrize(
    ("modality", "fixture", "snr_gamma"),
    [
        (Modality.IMAGE, "image_decoder", 5.0),
        (Modality.VIDEO, "video_decoder", None),
        (Modality.AUDIO, "audio_decoder", None),
    ],
)
def test_loss_is_finite_and_trains_only_the_conditioning(
    request: pytest.FixtureRequest, modality: Modality, fixture: str, snr_gamma: float | None
) -> None:
    decoder: Decoder = request.getfixturevalue(fixture)
    conditioning = torch.randn(2, *decoder.conditioning_shape, requires_grad=True)
    loss = compute_denoising_loss(
        decoder, _target(modality), conditioning, snr_gamma, generator=torch.Generator().manual_seed(0)
    )
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert conditioning.grad is not None and conditioning.grad.abs().sum() > 0
    for component in decoder.pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            assert all(p.grad is None for p in component.parameters())


def test_generator_makes_the_loss_reproducible(image_decoder: ImageDecoder) -> None:
    target = _target(Modality.IMAGE)
    conditioning = torch.randn(2, 77, 32)
    losses = [
        compute_denoising_loss(image_decoder, target, conditioning, 5.0, generator=torch.Generator().manual_seed(seed))
        for seed in (1, 1, 2)
    ]
    assert losses[0].item() == losses[1].item()
    assert losses[0].item() != losses[2].item()


@pytest.fixture()
def fresh_image_decoder(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> ImageDecoder:
    """An image decoder of its own, so tests may swap its scheduler."""
    return load_decoder(Modality.IMAGE, tiny_decoder_cfgs[Modality.IMAGE], expected_dim=32)


def _manual_loss(
    decoder: ImageDecoder, target: torch.Tensor, conditioning: torch.Tensor, seed: int, snr_gamma: float | None
) -> torch.Tensor:
    """The loss written out from the formulas: x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0."""
    generator = torch.Generator().manual_seed(seed)
    vae, unet = decoder.pipeline.vae, decoder.pipeline.unet
    with torch.no_grad():
        clean = vae.encode(target).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    timesteps = torch.randint(0, 1000, (target.shape[0],), generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    alpha_bar = decoder.pipeline.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=conditioning).sample
    prediction_type = decoder.pipeline.scheduler.config.prediction_type
    expected = {
        "epsilon": noise,
        "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean,
        "sample": clean,
    }[prediction_type]
    per_sample = ((prediction - expected) ** 2).mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    clamped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    weights = {"epsilon": clamped / snr, "v_prediction": clamped / (snr + 1), "sample": clamped}[prediction_type]
    return (per_sample * weights).mean()


@pytest.mark.numerics
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_prediction_type_and_min_snr_match_the_formulas(
    fresh_image_decoder: ImageDecoder, prediction_type: str, snr_gamma: float | None
) -> None:
    pipeline = fresh_image_decoder.pipeline
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, prediction_type=prediction_type)
    target = prepare_image_target(_random_pixels(3, 32, 32, 3), 32)
    conditioning = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(4))
    loss = compute_denoising_loss(
        fresh_image_decoder, target, conditioning, snr_gamma, generator=torch.Generator().manual_seed(9)
    )
    expected = _manual_loss(fresh_image_decoder, target, conditioning, seed=9, snr_gamma=snr_gamma)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_prediction_types_give_different_losses(fresh_image_decoder: ImageDecoder) -> None:
    pipeline = fresh_image_decoder.pipeline
    target = prepare_image_target(_random_pixels(2, 32, 32, 3), 32)
    conditioning = torch.randn(2, 77, 32)
    losses = {}
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, prediction_type=prediction_type)
        losses[prediction_type] = compute_denoising_loss(
            fresh_image_decoder, target, conditioning, None, generator=torch.Generator().manual_seed(0)
        ).item()
    assert len(set(losses.values())) == 3


@pytest.mark.numerics
def test_huge_gamma_leaves_epsilon_loss_unweighted(image_decoder: ImageDecoder) -> None:
    target = _target(Modality.IMAGE)
    conditioning = torch.randn(2, 77, 32)
    plain = compute_denoising_loss(
        image_decoder, target, conditioning, None, generator=torch.Generator().manual_seed(3)
    )
    huge = compute_denoising_loss(image_decoder, target, conditioning, 1e12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, huge)


@pytest.mark.numerics
def test_video_latents_are_frames_through_the_image_vae(video_decoder: VideoDecoder) -> None:
    target = _target(Modality.VIDEO)  # (2, 3, 3, 32, 32)
    latents = video_decoder.encode_latents(target, generator=torch.Generator().manual_seed(0))
    vae = video_decoder.pipeline.vae
    frames = vae.encode(target.flatten(0, 1)).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    frames = frames * vae.config.scaling_factor  # (B*F, C, h, w), batch-major
    assert latents.shape == (2, 4, 3, 16, 16)
    for b in range(2):
        for f in range(3):
            torch.testing.assert_close(latents[b, :, f], frames[b * 3 + f])


@pytest.mark.numerics
def test_audio_loss_sees_normalised_conditioning(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    decoder = load_decoder(Modality.AUDIO, tiny_decoder_cfgs[Modality.AUDIO], expected_dim=16)
    target = _target(Modality.AUDIO)
    conditioning = torch.randn(2, 16)
    base = compute_denoising_loss(decoder, target, conditioning, None, generator=torch.Generator().manual_seed(0))
    scaled = compute_denoising_loss(
        decoder, target, 5.0 * conditioning, None, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(base, scaled)


def test_loss_input_errors(image_decoder: ImageDecoder, audio_decoder: Decoder) -> None:
    with pytest.raises(ValueError, match="got 2 targets for 3 rows"):
        compute_denoising_loss(image_decoder, _target(Modality.IMAGE), torch.randn(3, 77, 32), None)
    with pytest.raises(
        ValueError,
        match=r"image denoising target must be \(B, 3, H, W\), got \(2, 32, 32, 3\); build it with prepare_image_target",
    ):
        compute_denoising_loss(image_decoder, torch.zeros(2, 32, 32, 3), torch.randn(2, 77, 32), None)
    with pytest.raises(ValueError, match=r"got \(2, 1, 100, 64\); build it with compute_log_mel\(waveform, n_mel=16\)"):
        compute_denoising_loss(audio_decoder, torch.zeros(2, 1, 100, 64), torch.randn(2, 16), None)
    with pytest.raises(ValueError, match=r"image decoder expects prompt_embeds \(B, 77, 32\), got \(2, 77, 16\)"):
        compute_denoising_loss(image_decoder, _target(Modality.IMAGE), torch.randn(2, 77, 16), None)


def test_unknown_prediction_type_is_rejected(fresh_image_decoder: ImageDecoder) -> None:
    pipeline = fresh_image_decoder.pipeline
    pipeline.scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type epsilon, v_prediction or sample, got 'flow'"):
        compute_denoising_loss(fresh_image_decoder, _target(Modality.IMAGE), torch.randn(2, 77, 32), None)
