"""The inference API shared by `predict.py` and the Gradio demo: load a checkpoint, answer a conversation, save media.

Owns the loading (checkpoint or merged folder, dtype, device, decoders loaded eagerly or, in low-memory mode, on
demand and offloaded after use) and one reply: conversation (`nextgpt.inference.requests.Message`) → text + files.

    pipeline = NextGPTPipeline.from_pretrained(Path("runs/stage_3/final"), device="cuda", dtype="float16")
    reply = pipeline.reply([Message("user", "Please generate an image of a cat.")], Path("outputs"), prefix="cat")
    reply.message.text, [s.path for s in reply.saved]  # "Sure, here it is.", [outputs/cat-image-0.png]
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nextgpt.config import Config, GenerationConfig, ModelConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.base import TORCH_DTYPES, Decoder, load_decoder
from nextgpt.inference.fast_decode import FastDecoder
from nextgpt.inference.generation import GenerationResult, generate_reply
from nextgpt.inference.media_io import DEFAULT_VIDEO_FPS, SavedMedia, load_inputs, save_outputs
from nextgpt.inference.requests import Message, build_turns, check_conversation
from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16"]


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
            ValueError: a non-positive step count, frame count or length, negative guidance, or a size that is not
                a positive multiple of 8.
        """
        what = f"{modality.value} decoder option"
        for name in ("num_inference_steps", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{what} {name} must be >= 1, got {value}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"{what} guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.audio_seconds is not None and self.audio_seconds <= 0:
            raise ValueError(f"{what} audio_seconds must be > 0, got {self.audio_seconds}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise ValueError(f"{what} {name} must be a positive multiple of 8, got {value}")


@dataclass
class Reply:
    """One answered request.

    Attributes:
        message: the assistant message to append to the conversation (reply text + saved files).
        result: the raw generation result (token ids, arrays, problems).
        saved: the written files, with their shapes.
    """

    message: Message
    result: GenerationResult
    saved: list[SavedMedia]


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
    """

    def __init__(self, cfg: ModelConfig, device: torch.device, low_memory: bool = False):
        self.cfg = cfg
        self.device = device
        self.low_memory = low_memory
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
            self._loaded[modality] = load_decoder(modality, decoder_cfg, out_dim, device)
        return self._loaded[modality]

    def __getitem__(self, modality: Modality) -> Decoder | _VisitingDecoder:
        if modality not in self.available:
            raise KeyError(modality)
        decoder = self.load(modality)
        return _VisitingDecoder(decoder, self.device) if self.low_memory else decoder

    def load_all(self) -> None:
        """Load every configured decoder now (fail at start-up rather than at the first request)."""
        for modality in self.available:
            self.load(modality)

    @property
    def sample_rate(self) -> int | None:
        """The audio decoder's sample rate once it is loaded, else None."""
        audio = self._loaded.get(Modality.AUDIO)
        return None if audio is None else audio.sample_rate


def _dtype_overrides(dtype: DType | None) -> list[str]:
    if dtype is None:
        return []
    keys = ["model.llm.dtype", "model.encoder.dtype", *(f"model.decoders.{m.value}.dtype" for m in MODALITIES)]
    return [f"{key}={dtype}" for key in keys]


class NextGPTPipeline:
    """Any-to-any chat: conversation (text + files) → reply text + generated images, videos and sounds.

    Args:
        model: a loaded NextGPT on its device.
        cfg: the checkpoint's resolved config (generation and decoder defaults).
        decoders: the decoder pool.
        max_input_bytes: size limit for input files; None for no limit.
    """

    def __init__(self, model: NextGPT, cfg: Config, decoders: DecoderPool, max_input_bytes: int | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.decoders = decoders
        self.max_input_bytes = max_input_bytes
        self._fast_decoder: FastDecoder | None = None

    @classmethod
    def from_pretrained(
        cls,
        folder: Path,
        device: str | torch.device = "cpu",
        dtype: DType | None = None,
        low_memory: bool = False,
        overrides: Sequence[str] = (),
        max_input_bytes: int | None = None,
    ) -> NextGPTPipeline:
        """Load a stage-3 checkpoint folder or a merged folder, with the frozen components its config names.

        Args:
            folder: `runs/.../final` (config.yaml, trainable.safetensors, lora/) or a merged folder.
            device: where the model and the decoders run.
            dtype: weight dtype of the LLM, encoder, projectors and decoders; None keeps the config's.
            low_memory: load each decoder only when a reply needs it and offload it to CPU after.
            overrides: `key.sub=value` config overrides (e.g. moved checkpoint paths).
            max_input_bytes: size limit for input files; None for no limit.

        Returns:
            The pipeline, in eval mode; outside low-memory mode every configured decoder is already loaded.

        Raises:
            FileNotFoundError: the folder or a component it names is missing.
            ValueError: the components do not fit each other (see the loaders).
        """
        from nextgpt.training.merge import load_model_from_folder

        device = torch.device(device)
        model, cfg = load_model_from_folder(Path(folder), [*_dtype_overrides(dtype), *overrides])
        model.to(device)
        if dtype is not None:
            # The projectors are built in float32; the LLM and the encoder already loaded in `dtype`.
            model.input_projector.to(TORCH_DTYPES[dtype])
            model.output_projectors.to(TORCH_DTYPES[dtype])
        decoders = DecoderPool(cfg.model, device, low_memory=low_memory)
        if not low_memory:
            decoders.load_all()
        logger.info(
            "loaded %s on %s (decoders: %s%s)",
            folder,
            device,
            ", ".join(m.value for m in decoders.available) or "none",
            ", low-memory" if low_memory else "",
        )
        return cls(model, cfg, decoders, max_input_bytes)

    def generate(
        self,
        messages: Sequence[Message],
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
        streamer: Any | None = None,
    ) -> GenerationResult:
        """Answer the conversation's last user message.

        Args:
            messages: the conversation, ending with a user message.
            generation: text sampling settings; None uses the config's `generation`.
            decoder_options: per-modality overrides of the decoder settings.
            streamer: an HF streamer receiving the reply text as it is generated.

        Returns:
            The generation result (arrays, not files).

        Raises:
            FileNotFoundError: an input file is missing.
            ValueError: a bad conversation, input file or option (one line saying what to fix).
        """
        options = dict(decoder_options or {})
        for modality, option in options.items():
            option.check(modality)
        # 1. Conversation → prompt turns + input files in splice order.
        check_conversation(messages)
        turns, files = build_turns(messages)
        # 2. Files → encoder inputs (all checked before any is decoded).
        media = load_inputs(files, self.cfg.model.encoder, self.max_input_bytes)
        # 3. Reply text, signal spans and media.
        kwargs = {m: o.to_kwargs(m) for m, o in options.items()}
        generation = generation or self.cfg.generation
        fast_decoder = self.fast_decoder(generation.max_new_tokens) if generation.fast_decode else None
        return generate_reply(self.model, turns, media, generation, self.decoders, kwargs, streamer, fast_decoder)

    def fast_decoder(self, max_new_tokens: int) -> FastDecoder:
        """The pipeline's static-cache decoder (`generation.fast_decode`), built on first use and kept.

        Keeping it means one compilation and one CUDA-graph capture per loaded model; its cache starts at
        `model.llm.max_length + max_new_tokens` tokens and grows when a longer request comes.

        Args:
            max_new_tokens: the reply limit of the first fast request (sizes the cache).

        Returns:
            The kept FastDecoder (compiled on CUDA, eager on CPU).
        """
        if self._fast_decoder is None:
            max_cache_len = self.cfg.model.llm.max_length + max_new_tokens
            self._fast_decoder = FastDecoder(self.model.llm, max_cache_len)
            logger.info(
                "fast decoding: static KV cache of %d tokens, compiled step: %s",
                max_cache_len,
                self._fast_decoder.compile,
            )
        return self._fast_decoder

    def reply(
        self,
        messages: Sequence[Message],
        output_dir: Path,
        prefix: str = "reply",
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
        streamer: Any | None = None,
        fps: int = DEFAULT_VIDEO_FPS,
    ) -> Reply:
        """`generate`, then write the media to `output_dir` as `<prefix>-<modality>-<k>.png|mp4|wav`.

        Args:
            messages: the conversation, ending with a user message.
            output_dir: where generated files go.
            prefix: file name prefix.
            generation: text sampling settings; None uses the config's.
            decoder_options: per-modality decoder overrides.
            streamer: an HF streamer for the reply text.
            fps: frame rate of written videos.

        Returns:
            The reply: assistant message (text + files), generation result and saved files.

        Raises:
            FileNotFoundError: an input file is missing.
            ValueError: a bad conversation, input file or option.
        """
        result = self.generate(messages, generation, decoder_options, streamer)
        for problem in result.problems:
            logger.warning("reply: %s", problem)
        outputs = {m: result.outputs(m) for m in MODALITIES}
        saved = save_outputs(outputs, Path(output_dir), prefix, self.decoders.sample_rate, fps)
        media: dict[Modality, list[Path]] = {}
        for item in saved:
            media.setdefault(item.modality, []).append(item.path)
        return Reply(Message("assistant", result.text, media), result, saved)

    def generation_config(self, **changes: Any) -> GenerationConfig:
        """The config's generation settings with `changes` applied (None values are ignored).

        Raises:
            ValueError: an invalid value (e.g. top_p outside (0, 1], max_new_tokens below 1).
        """
        generation = dataclasses.replace(self.cfg.generation, **{k: v for k, v in changes.items() if v is not None})
        if generation.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {generation.max_new_tokens}")
        return generation
