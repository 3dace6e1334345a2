"""The LLM tokenizer: loading it with the signal tokens, and the only functions that turn text into ids.

Text from users and datasets goes through `encode_text` (never BOS, never control ids: a literal "</s>" or
"<image_00>" inside the text stays plain text). Media placeholders (`<image>`, `<video>`, `<audio>`) are
the only markup recognised, by `encode_with_placeholders`, which maps them to `SENTINEL_IDS`.

Chunks and the sentencepiece dummy prefix: a text chunk at the start of a sequence gets the dummy prefix
"▁" (as `tokenizer(text)` does); a chunk that continues text gets none (`encode_chunk(..., "text")`); a
chunk after a control id (EOS, signal token, media sentinel) gets whatever the tokenizer itself does after
a special token — no prefix for `legacy: false` tokenizers (Vicuna v1.5), a prefix for legacy ones.

    tokenizer = load_tokenizer(Path("checkpoints/tiny/llm"), SignalTokenConfig())
    ids = encode_with_placeholders(tokenizer, "<image>\nWhat is shown?")  # [-200, ...]
    signal_ids = signal_token_ids(tokenizer, SignalTokenConfig())         # {Modality.IMAGE: [512, ...], ...}
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from nextgpt.config import SignalTokenConfig
from nextgpt.constants import MODALITIES, PLACEHOLDERS, SENTINEL_IDS, Modality, signal_token_strings
from nextgpt.llm.templates import ChatTemplate, get_template

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
"""A folder holding either file can serve the tokenizer (Vicuna ships `tokenizer.model`)."""

_ANCHORS = ("\ue000", "\ue001", "\U000f0000")
"""Private-use characters: absent from real vocabularies, so no piece can merge across them (see `encode_chunk`)."""

_PLACEHOLDER_PATTERN = re.compile("|".join(re.escape(PLACEHOLDERS[m]) for m in MODALITIES))
_MODALITY_OF_PLACEHOLDER = {PLACEHOLDERS[m]: m for m in MODALITIES}

ChunkContext = Literal["start", "text", "special"]


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int | None:
    """Id of `token` in the vocabulary (added tokens included), or None when absent."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return token_id


def _signal_cfg_counts(signal_cfg: SignalTokenConfig) -> dict[Modality, int]:
    return {
        Modality.IMAGE: signal_cfg.num_image,
        Modality.VIDEO: signal_cfg.num_video,
        Modality.AUDIO: signal_cfg.num_audio,
    }


def all_signal_token_strings(signal_cfg: SignalTokenConfig) -> list[str]:
    """Return every signal-token string in vocabulary order: image, then video, then audio.

    Args:
        signal_cfg: counts per modality and style (`model.signal_tokens`).

    Returns:
        E.g. `<image_00>` … `<image_03>`, `<video_00>` … `<video_23>`, `<audio_00>` … `<audio_07>`.
    """
    return [s for m, n in _signal_cfg_counts(signal_cfg).items() for s in signal_token_strings(m, n, signal_cfg.style)]


def load_tokenizer(
    model_path: Path, signal_cfg: SignalTokenConfig, template: ChatTemplate | str = "vicuna_v1"
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local LLaMA/Vicuna folder and add the template's and the signal tokens.

    Padding is on the right and, as in Vicuna v1, the pad token is the unk token when the folder names
    none. The template's extra tokens (legacy `<Img>`, `</Img>`) come first, then the signal tokens in the order
    image, video, audio — the ids both original codebases gave them. Everything is added as special tokens, so text
    can never produce these ids (`encode_text`). Tokens the folder already holds (a merged export) are not added
    again.

    Args:
        model_path: the LLM folder (`model.llm.model_path`).
        signal_cfg: how many signal tokens per modality and their style (`model.signal_tokens`).
        template: the chat template (`model.llm.template`) or its name.

    Returns:
        The tokenizer, with `len(tokenizer)` covering the added tokens.

    Raises:
        FileNotFoundError: the folder or its tokenizer files are missing.
    """
    model_path = Path(model_path)
    if not model_path.is_dir():
        raise FileNotFoundError(
            f"LLM folder not found: {model_path}; set model.llm.model_path to a local HF LLaMA/Vicuna folder"
        )
    if not any((model_path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer.model or tokenizer.json in {model_path}; model.llm.model_path must point at a folder "
            "that holds the tokenizer files (as a Vicuna download does)"
        )
    if isinstance(template, str):
        template = get_template(template)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    wanted = [*template.extra_tokens, *all_signal_token_strings(signal_cfg)]
    missing = [s for s in wanted if _token_id(tokenizer, s) is None]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        logger.info("added %d tokens to the tokenizer (now %d tokens)", len(missing), len(tokenizer))
    return tokenizer


def signal_token_ids(tokenizer: PreTrainedTokenizerBase, signal_cfg: SignalTokenConfig) -> dict[Modality, list[int]]:
    """Return each modality's signal span: the ids a reply emits to ask for one output, in order.

    This is the one place span ids come from (training targets, the model's span search and inference all use it).
    Without `span_separator` a span is the n signal ids; with it (the NEW code's spans) the separator's ids sit between
    neighbouring signal ids, 2n-1 tokens for a one-token separator.

    Args:
        tokenizer: a tokenizer from `load_tokenizer`.
        signal_cfg: counts, style and separator (`model.signal_tokens`).

    Returns:
        {Modality.IMAGE: [span ids], Modality.VIDEO: [...], Modality.AUDIO: [...]}.

    Raises:
        ValueError: a signal token is missing from the tokenizer.
    """
    separator = span_separator_ids(tokenizer, signal_cfg)
    ids: dict[Modality, list[int]] = {}
    for modality, count in _signal_cfg_counts(signal_cfg).items():
        found = {s: _token_id(tokenizer, s) for s in signal_token_strings(modality, count, signal_cfg.style)}
        absent = [s for s, token_id in found.items() if token_id is None]
        if absent:
            raise ValueError(
                f"tokenizer lacks signal tokens {absent[:3]} (of {len(absent)} missing); "
                "load it with nextgpt.llm.tokenizer.load_tokenizer using the same model.signal_tokens"
            )
        span: list[int] = []
        for index, token_id in enumerate(found.values()):
            if index:
                span.extend(separator)
            span.append(token_id)  # type: ignore[arg-type]
        ids[modality] = span
    return ids


def span_separator_ids(tokenizer: PreTrainedTokenizerBase, signal_cfg: SignalTokenConfig) -> list[int]:
    """The ids the tokenizer puts between two signal tokens for `signal_cfg.span_separator` (empty when None).

    Read from the tokenizer itself (the ids between the first two image signal tokens of `s0 + separator + s1`),
    so they are what that tokenizer gave the NEW code's "<image_00> <image_01>" (`▁`, 29871, for Vicuna).

    Raises:
        ValueError: the tokenizer produces no ids for the separator.
    """
    if signal_cfg.span_separator is None:
        return []
    first, second = signal_token_strings(Modality.IMAGE, 2, signal_cfg.style)
    ids = tokenizer.encode(first + signal_cfg.span_separator + second, add_special_tokens=False)
    if len(ids) < 3 or ids[0] != _token_id(tokenizer, first) or ids[-1] != _token_id(tokenizer, second):
        raise ValueError(
            f"model.signal_tokens.span_separator {signal_cfg.span_separator!r} gives no ids between two signal tokens "
            f"with this tokenizer ({ids}); set it to null"
        )
    return ids[1:-1]


def find_signal_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[Modality, list[int]]:
    """Return the signal-token ids a tokenizer holds, without a config (`<m_00>`, `<m_01>`, … while present).

    Args:
        tokenizer: any tokenizer; modalities without signal tokens map to an empty list.

    Returns:
        {modality: ids in order}.
    """
    found: dict[Modality, list[int]] = {}
    for modality in MODALITIES:
        ids: list[int] = []
        while (token_id := _token_id(tokenizer, signal_token_strings(modality, len(ids) + 1)[-1])) is not None:
            ids.append(token_id)
        found[modality] = ids
    return found


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode user or dataset text as plain text: no BOS/EOS, and no control ids.

    Special-token strings inside `text` ("</s>", "<s>", "<image_00>", …) are split into ordinary pieces,
    so text can never forge a control id. The result starts with the sentencepiece dummy prefix "▁", as
    `tokenizer(text)` does for text at the start of a sequence.

    Args:
        tokenizer: the LLM tokenizer.
        text: any text.

    Returns:
        Token ids.
    """
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def _encode_continuation(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode `text` as the continuation of preceding text: no dummy prefix, same pieces as inside a string.

    The text is encoded behind an anchor character that is not in the vocabulary; no piece can span it, so
    the ids after the anchor's ids are exactly the ids `text` gets in the middle of a longer string.
    """
    if not text:
        return []
    for anchor in _ANCHORS:
        if _token_id(tokenizer, anchor) is not None:
            continue
        anchor_ids = encode_text(tokenizer, anchor)
        ids = encode_text(tokenizer, anchor + text)
        if ids[: len(anchor_ids)] == anchor_ids:
            return ids[len(anchor_ids) :]
    raise ValueError(
        "cannot encode a text chunk without the sentencepiece dummy prefix: the tokenizer merges pieces across "
        f"every anchor character {[hex(ord(a)) for a in _ANCHORS]}; use a LLaMA-style sentencepiece tokenizer"
    )


def prefix_follows_special(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts the dummy prefix "▁" on text that follows a special token.

    Args:
        tokenizer: the LLM tokenizer.

    Returns:
        False for `legacy: false` LLaMA tokenizers (Vicuna v1.5: "</s>USER" → "US", …), True for legacy ones.
    """
    eos = tokenizer.eos_token
    probe = "USER"
    after_eos = tokenizer.encode(eos + probe, add_special_tokens=False, split_special_tokens=False)[1:]
    return after_eos == encode_text(tokenizer, probe)


def encode_chunk(tokenizer: PreTrainedTokenizerBase, text: str, follows: ChunkContext) -> list[int]:
    """Encode one text chunk of a longer sequence so that the chunks add up to whole-string tokenisation.

    Args:
        tokenizer: the LLM tokenizer.
        text: plain text (control-token strings stay plain text, as in `encode_text`).
        follows: what precedes the chunk: "start" (nothing or BOS: dummy prefix), "text" (no prefix) or
            "special" (a control id: the tokenizer's own rule, see `prefix_follows_special`).

    Returns:
        Token ids; empty for empty text.

    Raises:
        ValueError: a tokenizer whose pieces can span any character (not a sentencepiece-style vocabulary).
    """
    if not text:
        return []
    if follows == "start" or (follows == "special" and prefix_follows_special(tokenizer)):
        return encode_text(tokenizer, text)
    return _encode_continuation(tokenizer, text)


def split_placeholders(text: str) -> list[str | Modality]:
    """Split text at the media placeholders.

    Args:
        text: text that may contain `<image>`, `<video>`, `<audio>`.

    Returns:
        Alternating text pieces and Modality values, e.g. `"<image> hi"` → `["", Modality.IMAGE, " hi"]`.
    """
    parts: list[str | Modality] = []
    start = 0
    for match in _PLACEHOLDER_PATTERN.finditer(text):
        parts.extend([text[start : match.start()], _MODALITY_OF_PLACEHOLDER[match.group()]])
        start = match.end()
    parts.append(text[start:])
    return parts


def encode_with_placeholders(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Encode text whose `<image>`/`<video>`/`<audio>` placeholders become `SENTINEL_IDS`.

    The first chunk is encoded like `encode_text` (with the dummy prefix); chunks after a placeholder are
    encoded as text after a special token (`encode_chunk(..., "special")`). No BOS is added.

    Args:
        tokenizer: the LLM tokenizer.
        text: text with placeholders (the only markup recognised).

    Returns:
        Token ids with negative sentinels where the media go.
    """
    ids: list[int] = []
    follows: ChunkContext = "start"
    for part in split_placeholders(text):
        if isinstance(part, Modality):
            ids.append(SENTINEL_IDS[part])
            follows = "special"
        else:
            ids.extend(encode_chunk(tokenizer, part, follows))
    return ids
