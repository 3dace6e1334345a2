"""Frozen diffusion decoders (Stable Diffusion, ZeroScope, AudioLDM) driven by projected conditioning.

decoder = load_decoder(Modality.AUDIO, cfg.model.decoders.audio, expected_dim=512)
waves = decoder.generate(decoder.encode_captions(["a dog barks"]), seed=0)
"""

from nextgpt.decoders.audio import AudioDecoder
from nextgpt.decoders.base import Decoder, load_decoder
from nextgpt.decoders.denoising import (
    compute_denoising_loss,
    compute_log_mel,
    prepare_image_target,
    prepare_video_target,
)
from nextgpt.decoders.image import ImageDecoder
from nextgpt.decoders.video import VideoDecoder

__all__ = [
    "AudioDecoder",
    "Decoder",
    "ImageDecoder",
    "VideoDecoder",
    "compute_denoising_loss",
    "compute_log_mel",
    "load_decoder",
    "prepare_image_target",
    "prepare_video_target",
]
