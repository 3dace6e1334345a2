"""The frozen-decoder contract shared by the image, video and audio wrappers, and `load_decoder`.

A `Decoder` owns one diffusers pipeline loaded from a local folder, knows the conditioning shape its
text encoder produces, checks projector outputs against it, and drives the pipeline with `prompt_embeds`.

    decoder = load_decoder(Modality.IMAGE, cfg.model.decoders.image, expected_dim=768, device="cuda")
    images = decoder.generate(prompt_embeds, seed=0)  # list of uint8 (H, W, 3)
    decoder.offload()                                  # back to CPU, CUDA cache freed
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from torch import Tensor

from nextgpt.config import DecoderConfig
from nextgpt.constants import Modality
from nextgpt.decoders.acceleration import apply_decoder_speedups
from nextgpt.decoders.cancel import raise_if_cancelled, step_callback_kwargs
from nextgpt.decoders.inputs import check_pipeline_dir, format_shape

logger = logging.getLogger(__name__)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class Decoder(ABC):
    """One frozen diffusers pipeline driven by conditioning embeddings instead of a text prompt.

    Subclasses set `modality` and `pipeline_class` and implement the modality-specific parts: the conditioning
    shape, caption encoding, size options (`resolve_sizes`), output conversion (`collect_media`), VAE latents and
    the UNet call; `generate` runs the same steps for every modality.

    Args:
        pipeline: a loaded pipeline of `pipeline_class`.
        cfg: defaults for `generate` (steps, guidance, sizes); None uses `DecoderConfig()`.
        show_progress: the pipeline's per-step progress bar, named "<modality> decoder": True, False, or None to show
            it only when stderr is a terminal (a real ZeroScope call otherwise prints nothing for a minute).
    """

    modality: ClassVar[Modality]
    pipeline_class: ClassVar[type[DiffusionPipeline]]

    def __init__(
        self, pipeline: DiffusionPipeline, cfg: DecoderConfig | None = None, show_progress: bool | None = False
    ):
        self.pipeline = pipeline
        self.cfg = cfg if cfg is not None else DecoderConfig()
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        # tqdm reads disable=None as "only on a terminal".
        disable = None if show_progress is None else not show_progress
        pipeline.set_progress_bar_config(disable=disable, desc=f"{self.modality.value} decoder", unit="step")

    @classmethod
    def from_pretrained(
        cls, cfg: DecoderConfig, device: str | torch.device | None = None, show_progress: bool | None = False
    ) -> Decoder:
        """Load the pipeline folder `cfg.pipeline_path` (local files only) in `cfg.dtype`.

        Args:
            cfg: the decoder's config section.
            device: where to place the pipeline; None leaves it on CPU where it was loaded.
            show_progress: the per-step progress bar (see the class).

        Returns:
            The decoder, frozen and in eval mode.

        Raises:
            FileNotFoundError: see `check_pipeline_dir`.
            ValueError: the folder holds another pipeline class.
        """
        pipeline_path = check_pipeline_dir(cls.modality, cfg.pipeline_path, cls.pipeline_class.__name__)
        pipeline = cls.pipeline_class.from_pretrained(
            pipeline_path, dtype=TORCH_DTYPES[cfg.dtype], local_files_only=True, **cls.extra_load_kwargs(pipeline_path)
        )
        logger.info("loaded %s decoder from %s (%s)", cls.modality.value, pipeline_path, cfg.dtype)
        decoder = cls(pipeline, cfg, show_progress=show_progress)
        return decoder if device is None else decoder.to(device)

    @classmethod
    def extra_load_kwargs(cls, pipeline_path: Path) -> dict[str, Any]:
        """Component overrides for the pipeline's `from_pretrained`.

        Args:
            pipeline_path: the checked pipeline folder.

        Returns:
            Keyword arguments (none by default).
        """
        return {}

    @property
    @abstractmethod
    def conditioning_shape(self) -> tuple[int, ...]:
        """Per-item shape of `prompt_embeds`, read from the text encoder: (77, 768), (77, 1024) or (512,)."""

    @property
    def conditioning_dim(self) -> int:
        """Conditioning width (what `model.output_projectors.<m>.out_dim` must equal)."""
        return self.conditioning_shape[-1]

    @property
    def device(self) -> torch.device:
        """Device of the pipeline's modules."""
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the conditioning is cast to (the text encoder's, as in the pipelines)."""
        return self.pipeline.text_encoder.dtype

    def to(self, device: str | torch.device) -> Decoder:
        """Move every pipeline module to `device`.

        Args:
            device: target device.

        Returns:
            self.
        """
        self.pipeline.to(device)
        return self

    def offload(self) -> Decoder:
        """Move the pipeline to CPU and release cached CUDA memory (low-memory mode).

        Returns:
            self.
        """
        # Parking float16 weights on CPU is intended here; diffusers would warn that they cannot run there.
        self.pipeline.to("cpu", silence_dtype_warnings=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self

    def check_conditioning(self, embeds: Tensor) -> None:
        """Check that `embeds` is a batch of this decoder's conditioning.

        Args:
            embeds: (B, *conditioning_shape).

        Raises:
            ValueError: wrong shape, naming the config key that sets it.
        """
        expected = self.conditioning_shape
        got = tuple(embeds.shape)
        if len(got) == len(expected) + 1 and got[1:] == expected and got[0] > 0:
            return
        keys = []
        if len(got) != len(expected) + 1 or got[1:-1] != expected[:-1]:
            keys.append(f"model.output_projectors.{self.modality.value}.num_queries")
        if len(got) < 2 or got[-1] != expected[-1]:
            keys.append(f"model.output_projectors.{self.modality.value}.out_dim")
        raise ValueError(
            f"{self.modality.value} decoder expects prompt_embeds {format_shape(('B', *expected))}, "
            f"got {format_shape(got)}; check {' and '.join(keys) or 'the batch size'}"
        )

    def prepare_conditioning(self, embeds: Tensor) -> Tensor:
        """Check `embeds` and move it to the pipeline's device and dtype (differentiable).

        Args:
            embeds: (B, *conditioning_shape) from an output projector or `encode_captions`.

        Returns:
            The conditioning exactly as the UNet receives it.
        """
        self.check_conditioning(embeds)
        return embeds.to(device=self.device, dtype=self.dtype)

    @abstractmethod
    def encode_captions(self, texts: list[str]) -> Tensor:
        """Embed captions with the decoder's own text encoder, exactly as the pipeline does for `prompt`.

        Args:
            texts: N captions.

        Returns:
            (N, *conditioning_shape), the training targets of the output projector.
        """

    def generate(
        self,
        prompt_embeds: Tensor,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = 0,
        cancel: threading.Event | None = None,
        **sizes: Any,
    ) -> list[np.ndarray]:
        """Generate one media item per conditioning row (classifier-free guidance against the empty prompt).

        Args:
            prompt_embeds: (B, *conditioning_shape) from the output projector or `encode_captions`.
            num_inference_steps: default `cfg.num_inference_steps`.
            guidance_scale: default `cfg.guidance_scale`; <= 1 disables guidance.
            seed: seeds the initial latents (CPU generator); None draws fresh noise.
            cancel: checked after every denoising step; when set, the call stops with `GenerationCancelled`.
            **sizes: the modality's size options, documented on its `resolve_sizes` (image: `height`, `width`;
                video: also `num_frames`; audio: `audio_seconds`); unset ones come from the config.

        Returns:
            B arrays: uint8 (H, W, 3) images, uint8 (F, H, W, 3) clips or float32 (T,) waveforms.

        Raises:
            ValueError: wrong conditioning shape, fewer than one step, or a bad size.
            TypeError: a size option this modality does not have.
            GenerationCancelled: `cancel` was set.
        """
        steps, guidance = self.resolve_sampling(num_inference_steps, guidance_scale)
        pipeline_sizes = self.resolve_sizes(**sizes)
        raise_if_cancelled(cancel)
        output = self.pipeline(
            prompt_embeds=self.prepare_conditioning(prompt_embeds.detach()),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=self.make_generator(seed),
            output_type="np",
            **pipeline_sizes,
            **step_callback_kwargs(self.pipeline, cancel),
        )
        return self.collect_media(output)

    @abstractmethod
    def resolve_sizes(self, **sizes: Any) -> dict[str, Any]:
        """Fill unset size options from the config and check them.

        Args:
            **sizes: the modality's size options (see the subclass).

        Returns:
            The pipeline's size arguments.

        Raises:
            ValueError: a size the pipeline cannot produce.
        """

    @abstractmethod
    def collect_media(self, output: Any) -> list[np.ndarray]:
        """Turn the pipeline output (`output_type="np"`) into one array per generated item.

        Args:
            output: what the pipeline returned.

        Returns:
            B arrays in the layout `generate` documents.
        """

    @abstractmethod
    def encode_latents(self, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """VAE-encode target media into UNet latents, times the VAE scaling factor.

        Args:
            target: the media tensor `compute_denoising_loss` documents.
            generator: draws the posterior sample.

        Returns:
            Latents in the UNet's layout.
        """

    @abstractmethod
    def predict_noise(self, noisy_latents: Tensor, timesteps: Tensor, conditioning: Tensor) -> Tensor:
        """Run the frozen UNet (gradients still flow into `conditioning`).

        Args:
            noisy_latents: latents noised at `timesteps`.
            timesteps: (B,) integer train timesteps.
            conditioning: output of `prepare_conditioning`.

        Returns:
            The UNet's prediction (noise, velocity or sample per the scheduler), shaped like the latents.
        """

    def encode_vae_latents(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample the VAE posterior of a media batch and scale it by the VAE scaling factor, as the UNet expects.

        Args:
            media: (N, C, H, W) pixels or mel spectrograms, already checked by the caller.
            generator: draws the posterior sample.

        Returns:
            (N, C_latent, H / f, W / f) in the VAE's dtype.
        """
        vae = self.pipeline.vae
        posterior = vae.encode(media.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * vae.config.scaling_factor

    def build_noise_scheduler(self) -> DDPMScheduler:
        """A DDPM scheduler with the pipeline scheduler's training schedule (betas, prediction type).

        Training adds noise at integer train timesteps; the pipeline's own scheduler (DDIM, Euler, ...)
        may index sigmas by inference steps instead, so the loss uses this one.

        Returns:
            A fresh scheduler built from the pipeline scheduler's config.
        """
        return DDPMScheduler.from_config(self.pipeline.scheduler.config)

    def make_generator(self, seed: int | None) -> torch.Generator | None:
        """A CPU generator for the initial latents, so a seed gives the same noise on every device.

        Args:
            seed: the seed; None for fresh randomness.

        Returns:
            The seeded generator, or None.
        """
        return None if seed is None else torch.Generator("cpu").manual_seed(seed)

    def resolve_sampling(self, num_inference_steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
        """Fill unset sampling options from the config.

        Args:
            num_inference_steps: requested steps, or None for `cfg.num_inference_steps`.
            guidance_scale: requested guidance, or None for `cfg.guidance_scale`.

        Returns:
            (steps, guidance).

        Raises:
            ValueError: fewer than one step.
        """
        steps = self.cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        if steps < 1:
            raise ValueError(
                f"{self.modality.value} decoder needs num_inference_steps >= 1, got {steps}; "
                f"set model.decoders.{self.modality.value}.num_inference_steps"
            )
        return steps, guidance


def load_decoder(
    modality: Modality,
    cfg: DecoderConfig,
    expected_dim: int,
    device: str | torch.device = "cpu",
    show_progress: bool | None = False,
) -> Decoder:
    """Load one modality's frozen decoder and check it against the output projector's width.

    Args:
        modality: which decoder (image: Stable Diffusion, video: ZeroScope, audio: AudioLDM).
        cfg: `model.decoders.<modality>`.
        expected_dim: `model.output_projectors.<modality>.out_dim`.
        device: where to place the pipeline.
        show_progress: the per-step progress bar: True, False, or None for "only on a terminal".

    Returns:
        The decoder, with the config's speed switches applied (`apply_decoder_speedups`).

    Raises:
        FileNotFoundError: the pipeline folder or its model_index.json is missing.
        ValueError: wrong pipeline class, `expected_dim` differs from the text encoder's width, or a scheduler
            that cannot drive this pipeline.
    """
    from nextgpt.decoders.audio import AudioDecoder
    from nextgpt.decoders.image import ImageDecoder
    from nextgpt.decoders.video import VideoDecoder

    modality = Modality(modality)
    decoder_classes: dict[Modality, type[Decoder]] = {
        Modality.IMAGE: ImageDecoder,
        Modality.VIDEO: VideoDecoder,
        Modality.AUDIO: AudioDecoder,
    }
    decoder = decoder_classes[modality].from_pretrained(cfg, show_progress=show_progress)
    if decoder.conditioning_dim != expected_dim:
        raise ValueError(
            f"{modality.value} decoder at {cfg.pipeline_path} is conditioned on width {decoder.conditioning_dim}, "
            f"but the output projector produces {expected_dim}; "
            f"set model.output_projectors.{modality.value}.out_dim={decoder.conditioning_dim}"
        )
    decoder.to(device)
    # After the move: the compile mode depends on the device, and fused layers are built where the weights are.
    apply_decoder_speedups(decoder.pipeline, cfg)
    return decoder
