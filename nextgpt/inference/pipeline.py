"""The inference API shared by `predict.py` and the Gradio demo: load a checkpoint, answer a conversation, save media.

Owns the loading (checkpoint or merged folder, dtype, device; decoders load when a reply first needs one, see
`nextgpt.inference.decoder_pool`) and one reply: conversation (`nextgpt.inference.requests.Message`) → text + files.

    pipeline = NextGPTPipeline.from_pretrained(Path("runs/stage_3/final"), device="cuda", dtype="float16")
    reply = pipeline.reply([Message("user", "Please generate an image of a cat.")], Path("outputs"), prefix="cat")
    reply.message.text, [s.path for s in reply.saved]  # "Sure, here it is.", [outputs/cat-image-0.png]
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nextgpt.config import Config, GenerationConfig
from nextgpt.constants import MODALITIES, SENTINEL_IDS, Modality
from nextgpt.decoders.base import TORCH_DTYPES
from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.inference.batch_decode import BatchDecoder, DecodeRow
from nextgpt.inference.decoder_pool import DecoderOptions, DecoderPool
from nextgpt.inference.fast_decode import FastDecoder, compiles_on
from nextgpt.inference.generation import GenerationResult, decode_text, finish_reply, splice_prompt, stop_token_ids
from nextgpt.inference.media_io import DEFAULT_VIDEO_FPS, SavedMedia, load_inputs, save_outputs
from nextgpt.inference.preflight import configured_decoders, inspect_checkpoint
from nextgpt.inference.requests import Message, build_turns, check_conversation
from nextgpt.llm.conversation import build_generation_prompt
from nextgpt.llm.splice import SplicedInputs
from nextgpt.model import NextGPT

__all__ = ["DecoderOptions", "DecoderPool", "GenerationCancelled", "NextGPTPipeline", "PreparedRequest", "Reply"]

logger = logging.getLogger(__name__)

DType = Literal["float32", "bfloat16", "float16"]


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


@dataclass
class PreparedRequest:
    """A request read and spliced, ready for text decoding (alone, or in a batch with others).

    Attributes:
        spliced: the (1, L, D) prompt embeddings and ids.
        generation: its sampling settings, `max_new_tokens` fitted to the context.
        decoder_kwargs: per-modality `Decoder.generate` overrides.
    """

    spliced: SplicedInputs
    generation: GenerationConfig
    decoder_kwargs: dict[Modality, dict[str, Any]]

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in LLM positions (each media item counts its projected tokens)."""
        return int(self.spliced.token_ids.shape[1])

    def decode_row(self, streamer: Any | None = None, cancel: threading.Event | None = None) -> DecodeRow:
        """This request as one row of `decode_batch`."""
        cfg = self.generation
        return DecodeRow(
            self.spliced.inputs_embeds,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_p,
            cfg.seed,
            streamer,
            cancel,
            ignore_eos=cfg.ignore_eos,
        )


def dtype_overrides(dtype: DType | None) -> list[str]:
    """Config overrides that set every component's weight dtype (the `--dtype` flag)."""
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
        folder: the checkpoint folder it was loaded from (shown by the demo), if any.
    """

    def __init__(
        self,
        model: NextGPT,
        cfg: Config,
        decoders: DecoderPool,
        max_input_bytes: int | None = None,
        folder: Path | None = None,
    ):
        self.model = model.eval()
        self.cfg = cfg
        self.decoders = decoders
        self.max_input_bytes = max_input_bytes
        self.folder = folder
        self._fast_decoder: FastDecoder | None = None
        self._batch_decoder: BatchDecoder | None = None

    @classmethod
    def from_pretrained(
        cls,
        folder: Path,
        device: str | torch.device = "cpu",
        dtype: DType | None = None,
        low_memory: bool = False,
        overrides: Sequence[str] = (),
        max_input_bytes: int | None = None,
        show_progress: bool | None = False,
    ) -> NextGPTPipeline:
        """Load a stage-3 checkpoint folder or a merged folder, with the frozen components its config names.

        The folder is checked first without reading weights (`inspect_checkpoint`), then its manifest is verified
        (`load_model_from_folder`); decoders are only located here and load when a reply first needs one.

        Args:
            folder: `runs/.../final` (config.yaml, trainable.safetensors, lora/) or a merged folder.
            device: where the model and the decoders run.
            dtype: weight dtype of the LLM, encoder, projectors and decoders; None keeps the config's.
            low_memory: keep loaded decoders on the CPU and move each to the device only while it renders.
            overrides: `key.sub=value` config overrides (e.g. moved checkpoint paths).
            max_input_bytes: size limit for input files; None for no limit.
            show_progress: the decoders' per-step progress bars: True, False, or None for "only on a terminal".

        Returns:
            The pipeline, in eval mode, with no decoder loaded yet.

        Raises:
            FileNotFoundError: the folder or a component it names is missing.
            ValueError: not a checkpoint, a damaged file, or components that do not fit each other.
        """
        from nextgpt.checkpoints import load_model_from_folder

        device = torch.device(device)
        overrides = [*dtype_overrides(dtype), *overrides]
        cfg = inspect_checkpoint(Path(folder), overrides)
        model, cfg = load_model_from_folder(Path(folder), overrides, decoders=configured_decoders(cfg))
        model.to(device)
        if dtype is not None:
            # The projectors are built in float32; the LLM and the encoder already loaded in `dtype`.
            model.input_projector.to(TORCH_DTYPES[dtype])
            model.output_projectors.to(TORCH_DTYPES[dtype])
        decoders = DecoderPool(cfg.model, device, low_memory=low_memory, show_progress=show_progress)
        logger.info(
            "loaded %s on %s (decoders, loaded when first needed: %s%s)",
            folder,
            device,
            ", ".join(m.value for m in decoders.available) or "none",
            ", low-memory" if low_memory else "",
        )
        return cls(model, cfg, decoders, max_input_bytes, Path(folder))

    def fit_to_context(self, messages: Sequence[Message], generation: GenerationConfig) -> GenerationConfig:
        """Check that the conversation fits the LLM's context, and shorten the reply limit to what is left.

        Tokenising is fast; running the LLM over a prompt longer than its context is slow and gives garbage, so an
        over-long conversation is refused here, before any media is read.

        Args:
            messages: the conversation, ending with a user message.
            generation: the sampling settings.

        Returns:
            `generation`, with `max_new_tokens` lowered (and a warning) when the context leaves less room.

        Raises:
            ValueError: a bad conversation, or a prompt that fills the whole context.
        """
        check_conversation(messages)
        turns, _ = build_turns(messages)
        prompt_ids = build_generation_prompt(self.model.tokenizer, turns, self.model.signal_ids, self.model.template)
        num_media = sum(1 for i in prompt_ids if i in SENTINEL_IDS.values())
        prompt_len = len(prompt_ids) + num_media * (self.model.input_projector.num_tokens - 1)
        context = int(self.model.llm.config.max_position_embeddings)
        if prompt_len >= context:
            raise ValueError(
                f"the conversation is {prompt_len} tokens long, but the LLM reads at most {context}; "
                "shorten the prompt or start a new conversation"
            )
        room = context - prompt_len
        if generation.max_new_tokens > room:
            logger.warning(
                "reply limit lowered from %d to %d tokens: the conversation uses %d of the LLM's %d",
                generation.max_new_tokens,
                room,
                prompt_len,
                context,
            )
            generation = dataclasses.replace(generation, max_new_tokens=room)
        return generation

    def generate(
        self,
        messages: Sequence[Message],
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
        streamer: Any | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Answer the conversation's last user message.

        Args:
            messages: the conversation, ending with a user message.
            generation: text sampling settings; None uses the config's `generation`.
            decoder_options: per-modality overrides of the decoder settings.
            streamer: an HF streamer receiving the reply text as it is generated.
            cancel: set it (from another thread) to stop the reply at the next token or denoising step.

        Returns:
            The generation result (arrays, not files).

        Raises:
            FileNotFoundError: an input file is missing.
            ValueError: a bad conversation, input file or option (one line saying what to fix).
            GenerationCancelled: `cancel` was set.
        """
        prepared = self.prepare(messages, generation, decoder_options)
        fast_decoder = self.fast_decoder(prepared.generation)
        cfg = prepared.generation
        reply_ids = decode_text(self.model, prepared.spliced.inputs_embeds, cfg, streamer, fast_decoder, cancel)
        return self.finish(prepared, reply_ids, cancel)

    def prepare(
        self,
        messages: Sequence[Message],
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
    ) -> PreparedRequest:
        """Steps 1-2 of `generate`: check the request, read its files and splice the prompt (no decoding yet).

        Raises:
            FileNotFoundError: an input file is missing.
            ValueError: a bad conversation, input file or option (one line saying what to fix).
        """
        options = dict(decoder_options or {})
        for modality, option in options.items():
            option.check(modality)
        # 1. Conversation → prompt turns + input files in splice order; refuse what the context cannot hold.
        generation = self.fit_to_context(messages, generation or self.cfg.generation)
        turns, files = build_turns(messages)
        # 2. Files → encoder inputs (all checked before any is decoded) → spliced prompt embeddings.
        media = load_inputs(files, self.cfg.model.encoder, self.max_input_bytes)
        kwargs = {m: o.to_kwargs(m) for m, o in options.items()}
        return PreparedRequest(splice_prompt(self.model, turns, media), generation, kwargs)

    def finish(
        self,
        prepared: PreparedRequest,
        reply_ids: torch.Tensor,
        cancel: threading.Event | None = None,
        decoders: Mapping[Modality, Any] | None = None,
    ) -> GenerationResult:
        """Step 3 of `generate` for decoded ids: reply text, signal spans, rendered media.

        Args:
            prepared: from `prepare`.
            reply_ids: (G,) the ids decoded for it.
            cancel: stops the rendering between denoising steps.
            decoders: the decoders to render with; None uses the pipeline's pool (a server passes a queued view).
        """
        decoders = self.decoders if decoders is None else decoders
        return finish_reply(
            self.model, prepared.spliced, reply_ids, prepared.generation, decoders, prepared.decoder_kwargs, cancel
        )

    def generate_batch(
        self,
        requests: Sequence[Sequence[Message]],
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
    ) -> list[GenerationResult]:
        """Answer several conversations, their text decoded in one batch (`batch_decoder`), then each rendered.

        Greedy replies equal `generate`'s for each conversation alone (up to padded-attention rounding); seeded
        sampling draws the same tokens too, every row from its own RNG seeded with `generation.seed`.

        Raises:
            FileNotFoundError, ValueError: as `generate`, for the first bad request (nothing is decoded then).
        """
        return list(self.iter_batch(requests, generation, decoder_options))

    def iter_batch(
        self,
        requests: Sequence[Sequence[Message]],
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
    ) -> Iterator[GenerationResult]:
        """`generate_batch` one result at a time, in order: each reply's media is rendered when it is asked for, so a
        caller can write (and keep) every finished reply before the next one renders.

        Raises:
            FileNotFoundError, ValueError: as `generate`, for the first bad request (before anything is decoded).
        """
        prepared = [self.prepare(messages, generation, decoder_options) for messages in requests]
        if not prepared:
            return
        decoder = self.batch_decoder(len(prepared), prepared[0].generation)
        decoded = decoder.decode([p.decode_row() for p in prepared], stop_token_ids(self.model))
        for request, reply_ids in zip(prepared, decoded, strict=True):
            if isinstance(reply_ids, GenerationCancelled):
                raise reply_ids
            yield self.finish(request, reply_ids)

    def fast_decoder(self, generation: GenerationConfig) -> FastDecoder:
        """The pipeline's text decoder, built on first use and kept for every later request.

        Keeping it means one compilation and one CUDA-graph capture per loaded model; its cache starts at
        `model.llm.max_length + max_new_tokens` tokens and grows when a longer request comes. It is built again only
        when a request's `compile_decode` asks for the other kind of step.

        Args:
            generation: the request's settings (the first one's `max_new_tokens` sizes the cache).

        Returns:
            The kept FastDecoder (compiled on CUDA, eager on CPU, unless `generation.compile_decode` says otherwise).
        """
        kept = self._fast_decoder
        if kept is None or kept.compile != compiles_on(kept.device, generation.compile_decode):
            max_cache_len = self.cfg.model.llm.max_length + generation.max_new_tokens
            if kept is not None:
                max_cache_len = max(max_cache_len, kept.max_cache_len)
            self._fast_decoder = FastDecoder(self.model.llm, max_cache_len, compile=generation.compile_decode)
            logger.info(
                "text decoding: static KV cache of %d tokens, compiled step: %s",
                max_cache_len,
                self._fast_decoder.compile,
            )
        return self._fast_decoder

    def batch_decoder(self, rows: int, generation: GenerationConfig) -> BatchDecoder:
        """The pipeline's batched text decoder for `rows` prompts, kept for later batches of as many or fewer.

        Built again (and compiled again) only for a larger batch or the other kind of step (`compile_decode`); its
        cache starts at `model.llm.max_length + max_new_tokens` tokens per row and grows for longer batches.
        """
        kept = self._batch_decoder
        device = next(self.model.llm.parameters()).device
        if kept is None or kept.max_batch_size < rows or kept.compile != compiles_on(device, generation.compile_decode):
            max_cache_len = self.cfg.model.llm.max_length + generation.max_new_tokens
            if kept is not None:
                max_cache_len = max(max_cache_len, kept.max_cache_len)
            self._batch_decoder = None  # the old cache goes before the new one is allocated
            kept = BatchDecoder(self.model.llm, rows, max_cache_len, compile=generation.compile_decode)
            logger.info(
                "batched text decoding: %d rows x %d tokens, compiled step: %s", rows, max_cache_len, kept.compile
            )
            self._batch_decoder = kept
        return kept

    def reply(
        self,
        messages: Sequence[Message],
        output_dir: Path,
        prefix: str = "reply",
        generation: GenerationConfig | None = None,
        decoder_options: Mapping[Modality, DecoderOptions] | None = None,
        streamer: Any | None = None,
        fps: int = DEFAULT_VIDEO_FPS,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """`generate`, then write the media to `output_dir` as `<prefix>-<modality>-<k>.png|mp4|wav` (a name that is
        taken gets a numeric suffix: nothing is overwritten).

        Args:
            messages: the conversation, ending with a user message.
            output_dir: where generated files go.
            prefix: file name prefix.
            generation: text sampling settings; None uses the config's.
            decoder_options: per-modality decoder overrides.
            streamer: an HF streamer for the reply text.
            fps: frame rate of written videos.
            cancel: set it (from another thread) to stop the reply; nothing is written then.

        Returns:
            The reply: assistant message (text + files), generation result and saved files.

        Raises:
            FileNotFoundError: an input file is missing.
            ValueError: a bad conversation, input file or option.
            GenerationCancelled: `cancel` was set.
        """
        result = self.generate(messages, generation, decoder_options, streamer, cancel)
        return self.save(result, output_dir, prefix, fps)

    def save(self, result: GenerationResult, output_dir: Path, prefix: str, fps: int = DEFAULT_VIDEO_FPS) -> Reply:
        """Write a generation's media as `<prefix>-<modality>-<k>.png|mp4|wav` under `output_dir`; the Reply."""
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
            ConfigError: an invalid value (e.g. top_p outside (0, 1], max_new_tokens below 1, a NaN temperature).
        """
        return dataclasses.replace(self.cfg.generation, **{k: v for k, v in changes.items() if v is not None})
