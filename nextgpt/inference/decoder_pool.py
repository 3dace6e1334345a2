"""The decoders a pipeline may call, each loaded the first time a reply needs it, and per-request decoder options.

An image->text request never loads a decoder; a request for a video loads ZeroScope only. Loaded decoders stay on the
device for the next request; in low-memory mode they wait on the CPU and visit the device one at a time.

    pool = DecoderPool(cfg.model, torch.device("cuda"), show_progress=None)   # nothing loaded yet
    frames = pool[Modality.VIDEO].generate(prompt_embeds, num_frames=16)      # loads ZeroScope now
    pool.loaded                                                               # (Modality.VIDEO,)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nextgpt.config import ModelConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.base import Decoder, load_decoder

logger = logging.getLogger(__name__)


@dataclass
class DecoderOptions:
    """Per-request overrides of one decoder's sampling; None keeps `model.decoders.<modality>`.

    Attributes:
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance (<= 1 disables it).
        height: pixels, a multiple of 8 (image, video).
        width: pixels, a multiple of 8 (image, video).
        num_frames: frames per clip (video).
        audio_seconds: clip length (audio).
    """

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    audio_seconds: float | None = None

    def to_kwargs(self, modality: Modality) -> dict[str, Any]:
        """The set options that `modality`'s decoder takes, as `Decoder.generate` keyword arguments."""
        names = {"num_inference_steps", "guidance_scale"}
        names |= {Modality.IMAGE: {"height", "width"}, Modality.VIDEO: {"height", "width", "num_frames"}}.get(
            modality, {"audio_seconds"}
        )
        return {n: getattr(self, n) for n in sorted(names) if getattr(self, n) is not None}

    def check(self, modality: Modality) -> None:
        """Reject values the decoder would refuse only after the LLM ran.

        Raises:
            ValueError: a step or frame count below 1, a negative or non-finite guidance, a non-positive or
                non-finite length, or a size that is not a positive multiple of 8.
        """
        what = f"{modality.value} decoder option"
        for name in ("num_inference_steps", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{what} {name} must be >= 1, got {value}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"{what} guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.audio_seconds is not None and not (math.isfinite(self.audio_seconds) and self.audio_seconds > 0):
            raise ValueError(f"{what} audio_seconds must be a finite number > 0, got {self.audio_seconds}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise ValueError(f"{what} {name} must be a positive multiple of 8, got {value}")


class _VisitingDecoder:
    """A decoder parked on CPU that moves to the device for one `generate` call and is offloaded after.

    Its VAE decodes one latent at a time (diffusers' VAE slicing): a ZeroScope clip is decoded frame by frame
    instead of all 24 frames in one batch, which is what pushes a 7B LLM plus ZeroScope past 24 GB. The pixels are
    the same; only the peak memory changes.
    """

    def __init__(self, decoder: Decoder, device: torch.device):
        self.decoder = decoder
        self.device = device
        vae = getattr(decoder.pipeline, "vae", None)
        if vae is not None and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()

    def generate(self, prompt_embeds: torch.Tensor, **kwargs: Any) -> list:
        self.decoder.to(self.device)
        try:
            return self.decoder.generate(prompt_embeds, **kwargs)
        finally:
            self.decoder.offload()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)


class DecoderPool(Mapping):
    """The configured decoders by modality, each loaded on first use.

    In low-memory mode a decoder is kept on CPU and visits the device only while it renders, so only the LLM and
    at most one decoder hold device memory at a time.

    Args:
        cfg: `model` config (decoder folders and the output projector widths they must match).
        device: where decoders run.
        low_memory: park decoders on CPU between uses.
        show_progress: per-step progress bars named after the decoder: True, False, or None to show them only on a
            terminal (tqdm's own check).
    """

    def __init__(
        self, cfg: ModelConfig, device: torch.device, low_memory: bool = False, show_progress: bool | None = False
    ):
        self.cfg = cfg
        self.device = device
        self.low_memory = low_memory
        self.show_progress = show_progress
        self._loaded: dict[Modality, Decoder] = {}

    @property
    def available(self) -> tuple[Modality, ...]:
        """Modalities whose decoder folder is configured."""
        return tuple(m for m in MODALITIES if getattr(self.cfg.decoders, m.value).pipeline_path is not None)

    @property
    def loaded(self) -> tuple[Modality, ...]:
        """Modalities whose decoder has been loaded so far."""
        return tuple(m for m in MODALITIES if m in self._loaded)

    def __contains__(self, modality: object) -> bool:
        return modality in self.available

    def __iter__(self) -> Iterator[Modality]:
        return iter(self.available)

    def __len__(self) -> int:
        return len(self.available)

    def load(self, modality: Modality) -> Decoder:
        """Load (once) and return `modality`'s decoder, on CPU in low-memory mode, else on the device."""
        if modality not in self._loaded:
            decoder_cfg = getattr(self.cfg.decoders, modality.value)
            out_dim = getattr(self.cfg.output_projectors, modality.value).out_dim
            device = torch.device("cpu") if self.low_memory else self.device
            logger.info("loading the %s decoder from %s", modality.value, decoder_cfg.pipeline_path)
            self._loaded[modality] = load_decoder(modality, decoder_cfg, out_dim, device, self.show_progress)
        return self._loaded[modality]

    def __getitem__(self, modality: Modality) -> Decoder | _VisitingDecoder:
        if modality not in self.available:
            raise KeyError(modality)
        decoder = self.load(modality)
        return _VisitingDecoder(decoder, self.device) if self.low_memory else decoder

    def load_all(self) -> None:
        """Load every configured decoder now (a server that prefers a slow start to a slow first reply)."""
        for modality in self.available:
            self.load(modality)

    @property
    def sample_rate(self) -> int | None:
        """The audio decoder's sample rate once it is loaded, else None."""
        audio = self._loaded.get(Modality.AUDIO)
        return None if audio is None else audio.sample_rate
