"""Behaviour of the frozen ImageBind encoder: shapes, per-clip normalisation, clip averaging, input checks."""

from __future__ import annotations

import pytest
import torch

from nextgpt.constants import Modality
from nextgpt.encoders.imagebind import ImageBindEncoder


def _inputs(modality: Modality, batch: int = 2, num_clips: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    shapes = {
        Modality.IMAGE: (batch, 3, 224, 224),
        Modality.VIDEO: (batch, num_clips, 3, 2, 224, 224),
        Modality.AUDIO: (batch, num_clips, 1, 128, 204),
    }
    return torch.randn(shapes[modality], generator=gen)


@pytest.mark.numerics
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.VIDEO, Modality.AUDIO])
def test_one_vector_per_item_and_unit_clips(tiny_encoder: ImageBindEncoder, modality: Modality) -> None:
    x = _inputs(modality)
    out = tiny_encoder(modality, x)
    clips = tiny_encoder.encode_clips(modality, x)
    assert out.shape == (2, tiny_encoder.out_dim)
    assert clips.shape == (2, 1 if modality == Modality.IMAGE else 3, tiny_encoder.out_dim)
    torch.testing.assert_close(clips.norm(dim=-1), torch.ones(clips.shape[:2]))
    torch.testing.assert_close(out, clips.mean(dim=1))
    # Distinct clips average to a vector shorter than 1 (the official model does not re-normalise).
    if modality != Modality.IMAGE:
        assert (out.norm(dim=-1) < 1 - 1e-4).all()


def test_audio_skips_the_logit_scale(tiny_encoder: ImageBindEncoder) -> None:
    out = tiny_encoder(Modality.AUDIO, _inputs(Modality.AUDIO, num_clips=1))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert tiny_encoder.modality_postprocessors["audio"][1].log_logit_scale.exp().item() == pytest.approx(20.0)


@pytest.mark.numerics
def test_items_are_encoded_independently_of_the_batch(tiny_encoder: ImageBindEncoder) -> None:
    x = _inputs(Modality.VIDEO)
    torch.testing.assert_close(tiny_encoder(Modality.VIDEO, x)[1:], tiny_encoder(Modality.VIDEO, x[1:]))
    clip_order_swapped = x.flip(1)
    torch.testing.assert_close(tiny_encoder(Modality.VIDEO, clip_order_swapped), tiny_encoder(Modality.VIDEO, x))


@pytest.mark.numerics
def test_image_equals_a_two_frame_still_clip(tiny_encoder: ImageBindEncoder) -> None:
    image = _inputs(Modality.IMAGE)
    still = image[:, None, :, None].expand(-1, 1, -1, 2, -1, -1)  # (B, 3, S, S) -> (B, 1, 3, 2, S, S)
    torch.testing.assert_close(tiny_encoder(Modality.IMAGE, image), tiny_encoder(Modality.VIDEO, still))


def test_different_inputs_give_different_embeddings(tiny_encoder: ImageBindEncoder) -> None:
    out = tiny_encoder(Modality.IMAGE, _inputs(Modality.IMAGE))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_frozen_without_grad_and_stays_in_eval(tiny_encoder: ImageBindEncoder) -> None:
    tiny_encoder.train()
    assert not tiny_encoder.training and not any(m.training for m in tiny_encoder.modules())
    x = _inputs(Modality.AUDIO).requires_grad_(True)
    out = tiny_encoder(Modality.AUDIO, x)
    assert not out.requires_grad
    # Stochastic depth of the audio tower must stay off: two calls agree exactly.
    assert torch.equal(out, tiny_encoder(Modality.AUDIO, x))


@pytest.mark.parametrize(
    ("modality", "shape", "message"),
    [
        (Modality.IMAGE, (2, 3, 112, 112), r"image input must be \(B, 3, 224, 224\)"),
        (Modality.IMAGE, (3, 224, 224), r"image input must be .*got shape \(3, 224, 224\)"),
        (Modality.VIDEO, (2, 3, 2, 224, 224), r"video input must be \(B, num_clips\*num_crops, 3, 2, 224, 224\)"),
        (Modality.AUDIO, (2, 3, 1, 64, 204), r"audio input must be \(B, num_clips, 1, 128, 204\)"),
        (Modality.AUDIO, (2, 3, 128, 204), r"load_audio"),
    ],
)
def test_wrong_input_shapes_are_errors(
    tiny_encoder: ImageBindEncoder, modality: Modality, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_encoder(modality, torch.zeros(shape))


def test_unknown_modality_is_an_error(tiny_encoder: ImageBindEncoder) -> None:
    with pytest.raises(ValueError, match="image, video or audio"):
        tiny_encoder("depth", torch.zeros(1, 1, 224, 224))
