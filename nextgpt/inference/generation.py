"""Generation core: conversation + input media → reply text + images / videos / audio.

Numbered steps, one helper each: build the prompt, splice media, decode text with `FastDecoder` (static KV cache, step
compiled per `generation.compile_decode`), find complete signal spans in the reply (malformed ones are reported, never
a crash), re-read their hidden states, project them, and call the decoders.

    result = generate_reply(model, [Turn("user", "<image>\nDraw this as a video")], {Modality.IMAGE: pixels},
                            cfg.generation, decoders)
    result.text, result.videos[0].shape  # "...", (F, H, W, 3)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nextgpt.config import GenerationConfig
from nextgpt.constants import Modality
from nextgpt.data.batch import NextGPTBatch
from nextgpt.decoders.cancel import raise_if_cancelled
from nextgpt.inference.fast_decode import FastDecoder
from nextgpt.llm.conversation import build_prompt
from nextgpt.llm.splice import SplicedInputs, splice_media
from nextgpt.model import NextGPT, as_prompt_embeds
from nextgpt.signals import SignalSpan, SpanScan, find_signal_spans

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """One reply.

    Attributes:
        text: the reply text with signal tokens removed.
        token_ids: the generated ids (signal tokens included).
        images: (H, W, 3) uint8 arrays.
        videos: (F, H, W, 3) uint8 arrays.
        audios: (T,) float32 arrays at the audio decoder's sample rate.
        problems: malformed or skipped signal spans, in words.
    """

    text: str
    token_ids: list[int]
    images: list[np.ndarray] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def outputs(self, modality: Modality) -> list[np.ndarray]:
        """The generated items of one modality."""
        return {Modality.IMAGE: self.images, Modality.VIDEO: self.videos, Modality.AUDIO: self.audios}[modality]


def _build_prompt_batch(model: NextGPT, turns: list, media: Mapping[Modality, torch.Tensor]) -> NextGPTBatch:
    prompt = build_prompt(model.tokenizer, turns, model.signal_ids, model.template)
    prompt_ids = torch.tensor([prompt.input_ids], device=model.device)  # (1, L)
    media_on_device = {m: t.to(model.device) for m, t in media.items()}
    sizes: dict[Modality, list[int]] = {}
    for modality, count in prompt.media_groups:
        sizes.setdefault(modality, []).append(count)
    grouped = any(count > 1 for _, count in prompt.media_groups)
    return NextGPTBatch(
        input_ids=prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        media=media_on_device,
        media_group_sizes=sizes if grouped else None,
    )


def reply_stop_ids(model: NextGPT, cfg: GenerationConfig) -> list[int]:
    """Ids that end this reply: the model's stop ids, or none when `cfg.ignore_eos`."""
    return [] if cfg.ignore_eos else stop_token_ids(model)


def stop_token_ids(model: NextGPT) -> list[int]:
    """Ids that end a reply: EOS, plus each template stop string that is one token (legacy `###`, id 835 for
    Vicuna, the legacy demo's only stop). A stop string of several tokens is cut from the text (`_reply_text`)."""
    ids = [model.tokenizer.eos_token_id]
    for stop in model.template.stop_strings:
        stop_ids = model.tokenizer.encode(stop, add_special_tokens=False)
        if len(stop_ids) == 1 and stop_ids[0] not in ids:
            ids.append(stop_ids[0])
    return ids


def _reply_text(model: NextGPT, reply_ids: torch.Tensor) -> str:
    """Reply text without special tokens, cut at the first template stop string (several-token stops included)."""
    text = model.tokenizer.decode(reply_ids, skip_special_tokens=True)
    for stop in model.template.stop_strings:
        text = text.split(stop, 1)[0]
    return text.strip()


def decode_text(
    model: NextGPT,
    inputs_embeds: torch.Tensor,
    cfg: GenerationConfig,
    streamer: Any | None,
    fast_decoder: FastDecoder | None,
    cancel: threading.Event | None,
) -> torch.Tensor:
    """Decode the reply after the (1, L, D) spliced prompt; returns only the new ids, (G,)."""
    if fast_decoder is None:
        # Built (and on CUDA compiled) for this call only; NextGPTPipeline and the evaluation keep one between calls.
        fast_decoder = FastDecoder(model.llm, inputs_embeds.shape[1] + cfg.max_new_tokens, compile=cfg.compile_decode)
    fast_decoder.reserve(inputs_embeds.shape[1] + cfg.max_new_tokens)
    torch.manual_seed(cfg.seed)  # sampling draws from the global RNG, as HF `generate` does
    return fast_decoder.generate(
        inputs_embeds,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        eos_token_ids=reply_stop_ids(model, cfg),
        streamer=streamer,
        cancel=cancel,
    )


def _reply_spans(reply_ids: torch.Tensor, offset: int, model: NextGPT, cfg: GenerationConfig) -> SpanScan:
    """Complete spans of the reply, shifted to full-sequence positions and capped per modality."""
    scan = find_signal_spans(reply_ids, model.signal_ids)
    shifted = SpanScan(problems=list(scan.problems))
    for modality, spans in scan.spans.items():
        kept = spans[: cfg.max_outputs_per_modality]
        if len(spans) > len(kept):
            shifted.problems.append(
                f"{len(spans)} {modality.value} spans in the reply; kept the first "
                f"{len(kept)} (generation.max_outputs_per_modality)"
            )
        shifted.spans[modality] = [SignalSpan(row=0, start=s.start + offset, length=s.length) for s in kept]
    return shifted


@torch.no_grad()
def splice_prompt(model: NextGPT, turns: list, media: Mapping[Modality, torch.Tensor]) -> SplicedInputs:
    """Step 1 of a reply: prompt + media → (1, L, D) spliced input embeddings (what text decoding continues)."""
    model.eval()
    batch = _build_prompt_batch(model, turns, media)
    return splice_media(batch.input_ids, batch.attention_mask, None, model.embed_tokens, model.encode_media(batch))


@torch.no_grad()
def finish_reply(
    model: NextGPT,
    spliced: SplicedInputs,
    reply_ids: torch.Tensor,
    cfg: GenerationConfig,
    decoders: Mapping[Modality, Any] | None = None,
    decoder_options: Mapping[Modality, dict[str, Any]] | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Steps 3-5 of a reply, after the text is decoded (alone or in a batch): text, signal spans, media.

    Kept apart from the decoding so that a server can decode many prompts in one batch and finish each reply on
    its own (`nextgpt.inference.batch_decode`); the result is the same as `generate_reply`'s for the same ids.

    Args:
        model: the model that decoded `reply_ids`.
        spliced: the prompt from `splice_prompt`.
        reply_ids: (G,) the decoded ids.
        cfg: the request's sampling settings (seed, max_outputs_per_modality).
        decoders: see `generate_reply`.
        decoder_options: see `generate_reply`.
        cancel: see `generate_reply`.

    Returns:
        GenerationResult.
    """
    result = GenerationResult(text=_reply_text(model, reply_ids), token_ids=reply_ids.tolist())
    # 3. Complete signal spans of the reply (malformed ones become problems).
    prompt_len = spliced.token_ids.shape[1]
    scan = _reply_spans(reply_ids, prompt_len, model, cfg)
    result.problems.extend(scan.problems)
    if not any(scan.spans.values()):
        return result
    # 4. One teacher-forced pass over prompt + reply gives the hidden state at every signal position, whatever
    #    decoding strategy produced the reply (the original lost them with the cache off).
    full_ids = torch.cat([spliced.token_ids, reply_ids[None]], dim=1)  # (1, L + G)
    full_embeds = torch.cat([spliced.inputs_embeds, model.embed_tokens(reply_ids[None])], dim=1)  # (1, L + G, D)
    hidden = model.llm(inputs_embeds=full_embeds, output_hidden_states=True, use_cache=False).hidden_states[-1]
    signal_embeds = model.project_signals(hidden, full_ids, scan)
    # 5. Render each span with its decoder.
    raise_if_cancelled(cancel)
    _render(result, signal_embeds, decoders, decoder_options or {}, cfg.seed, cancel)
    return result


@torch.no_grad()
def generate_reply(
    model: NextGPT,
    turns: list,
    media: Mapping[Modality, torch.Tensor],
    cfg: GenerationConfig,
    decoders: Mapping[Modality, Any] | None = None,
    decoder_options: Mapping[Modality, dict[str, Any]] | None = None,
    streamer: Any | None = None,
    fast_decoder: FastDecoder | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Generate one reply to a conversation, rendering every complete signal span with its decoder.

    Args:
        model: a built NextGPT (eval mode is set here).
        turns: the conversation (`nextgpt.llm.conversation.Turn`), ending with the user's turn.
        media: preprocessed input media per modality, (N, ...) in placeholder order.
        cfg: text sampling settings.
        decoders: decoders per modality (a lazy Mapping works: an item is looked up only when needed); None renders no
            media and reports the spans as skipped.
        decoder_options: per-modality keyword overrides for `Decoder.generate` (steps, guidance, size, frames, ...).
        streamer: an HF streamer (e.g. TextStreamer) receiving text as it is generated.
        fast_decoder: the text decoder to reuse (its cache grows if the request needs it); None builds one for this
            call, which on CUDA compiles its step again: keep one when replying more than once.
        cancel: checked before every decoded token and after every denoising step; when set, the reply is abandoned.

    Returns:
        GenerationResult.

    Raises:
        GenerationCancelled: `cancel` was set.
    """
    # 1. Prompt + media → spliced input embeddings.
    spliced = splice_prompt(model, turns, media)
    # 2. Decode the reply text (static KV cache; the step compiled per generation.compile_decode).
    reply_ids = decode_text(model, spliced.inputs_embeds, cfg, streamer, fast_decoder, cancel)
    # 3-5. Signal spans, their hidden states, the media.
    return finish_reply(model, spliced, reply_ids, cfg, decoders, decoder_options, cancel)


def _render(
    result: GenerationResult,
    signal_embeds: dict[Modality, torch.Tensor],
    decoders: Mapping[Modality, Any] | None,
    options: Mapping[Modality, dict[str, Any]],
    seed: int,
    cancel: threading.Event | None = None,
) -> None:
    for modality, embeds in signal_embeds.items():
        if decoders is None or modality not in decoders:
            result.problems.append(
                f"{embeds.shape[0]} {modality.value} span(s) not rendered: no {modality.value} decoder"
            )
            continue
        decoder = decoders[modality]
        for index in range(embeds.shape[0]):
            prompt_embeds = as_prompt_embeds(modality, embeds[index : index + 1])
            extra = {"cancel": cancel} if cancel is not None else {}
            outputs = decoder.generate(prompt_embeds, seed=seed + index, **extra, **options.get(modality, {}))
            result.outputs(modality).extend(outputs)
