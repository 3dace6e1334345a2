"""Synthetic training samples with realistic length mixes, in the dataset item format the `Collator` reads.

Samples are built with the project's Vicuna v1 template (`build_training_example`), so the system prompt, role tags,
media sentinels, signal spans and label masks are exactly what training sees; only the words are random token ids.

- Stage 1 (CC3M-like captioning): `USER: <image> ASSISTANT: caption</s>`, caption lengths `CAPTIONS`.
- Stage 3 (LLaVA / MosIT-like instructions): one input image, 1-3 rounds, total lengths `INSTRUCTIONS`; a quarter of
  the samples end with an image signal span (MosIT text->image) and carry its caption embedding (77 x 768).

    items = caption_items(tokenizer, signal_ids, num=256, pixels=pool, features=None, rng=np.random.default_rng(0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nextgpt.constants import IGNORE_INDEX, PLACEHOLDERS, Modality
from nextgpt.llm.conversation import Turn, build_training_example

FILLER = "red"
"""A word the tokenizer keeps as one piece: `n` copies give `n` tokens, later replaced by random ids."""


@dataclass(frozen=True)
class LengthMix:
    """A log-normal length distribution clipped to [low, high] (tokens)."""

    name: str
    median: float
    sigma: float
    low: int
    high: int

    def sample(self, rng: np.random.Generator, num: int) -> np.ndarray:
        """`num` integer lengths."""
        lengths = rng.lognormal(np.log(self.median), self.sigma, size=num)
        return np.clip(np.rint(lengths), self.low, self.high).astype(int)

    def describe(self) -> str:
        """One line for the report (with the mean measured on 100k draws)."""
        mean = float(self.sample(np.random.default_rng(0), 100_000).mean())
        return (
            f"{self.name}: log-normal, median {self.median:g}, sigma {self.sigma:g}, clipped to "
            f"[{self.low}, {self.high}], mean {mean:.0f} tokens"
        )


CAPTIONS = LengthMix("caption tokens (CC3M-like)", median=13.5, sigma=0.45, low=5, high=40)
INSTRUCTIONS = LengthMix("sample tokens (LLaVA/MosIT-like)", median=255, sigma=0.55, low=100, high=1000)
MOSIT_FRACTION = 0.25
"""Share of stage-3 samples whose last answer generates an image (signal span + caption embedding)."""


def _randomise(ids: list[int], labels: list[int], filler_id: int, vocab: int, rng: np.random.Generator):
    """Replace every filler token by a random base-vocabulary id (labels follow the ids)."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    labels_t = torch.tensor(labels, dtype=torch.long)
    is_filler = ids_t == filler_id
    random_ids = torch.from_numpy(rng.integers(3, vocab, size=int(is_filler.sum()))).long()
    ids_t[is_filler] = random_ids
    supervised = is_filler & (labels_t != IGNORE_INDEX)
    labels_t[supervised] = ids_t[supervised]
    return ids_t, labels_t


def _item(
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    turns: list[Turn],
    media: dict[str, Any],
    caption_embed: torch.Tensor | None,
    rng: np.random.Generator,
    index: int,
    dataset: str,
) -> dict[str, Any]:
    example = build_training_example(tokenizer, turns, signal_ids)
    filler_id = tokenizer.convert_tokens_to_ids("▁" + FILLER)
    vocab = len(tokenizer) - sum(len(v) for v in signal_ids.values())  # base rows: the signal tokens come last
    input_ids, labels = _randomise(example.input_ids, example.labels, filler_id, vocab, rng)
    first_signal = signal_ids[Modality.IMAGE][0]
    span_starts = (input_ids == first_signal).nonzero().flatten().tolist()
    item: dict[str, Any] = {
        "input_ids": input_ids,
        "labels": labels,
        "media": {},
        "media_features": {},
        "caption_embeds": {},
        "denoise_targets": {},
        "signal_span_starts": {Modality.IMAGE: span_starts} if span_starts else {},
        "length": len(input_ids),
        "dataset": dataset,
        "index": index,
        "tokenization_mismatch": False,
    }
    item.update(media)
    if caption_embed is not None and span_starts:
        item["caption_embeds"] = {Modality.IMAGE: [caption_embed]}
    return item


def _media(pixels: list[torch.Tensor] | None, features: list[torch.Tensor] | None, index: int) -> dict[str, Any]:
    """Raw pixels (naive: the encoder runs every step) or a cached feature (ours) for the sample's one image."""
    if features is not None:
        return {"media_features": {Modality.IMAGE: [features[index % len(features)]]}}
    return {"media": {Modality.IMAGE: [pixels[index % len(pixels)]]}}


def caption_turns(length: int) -> list[Turn]:
    """One stage-1 conversation: `USER: <image> ASSISTANT:` and a caption of `length` filler words (tokens)."""
    return [Turn("user", PLACEHOLDERS[Modality.IMAGE]), Turn("assistant", " ".join([FILLER] * length))]


def caption_items(
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    num: int,
    pixels: list[torch.Tensor] | None,
    features: list[torch.Tensor] | None,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Stage-1 captioning samples: one image in, a caption of `CAPTIONS` length out."""
    lengths = CAPTIONS.sample(rng, num)
    items = []
    for index, length in enumerate(lengths):
        turns = caption_turns(int(length))
        items.append(_item(tokenizer, signal_ids, turns, _media(pixels, features, index), None, rng, index, "cc3m"))
    return items


def _instruction_turns(sizes: list[int], generates: bool) -> list[Turn]:
    """Rounds of `sizes` words each: a quarter asked by the user (the first with the image), the rest answered."""
    turns = []
    for r, size in enumerate(sizes):
        user = max(1, size // 4)
        prefix = PLACEHOLDERS[Modality.IMAGE] + "\n" if r == 0 else ""
        turns.append(Turn("user", prefix + " ".join([FILLER] * user)))
        answer = " ".join([FILLER] * max(1, size - user))
        if generates and r == len(sizes) - 1:
            answer += " " + PLACEHOLDERS[Modality.IMAGE]
        turns.append(Turn("assistant", answer))
    return turns


def instruction_turns(
    tokenizer, signal_ids: dict[Modality, list[int]], length: int, rng: np.random.Generator, template: str | None = None
) -> list[Turn]:
    """One stage-3 conversation of about `length` tokens (template included) in filler words: 1-3 rounds (user 25% /
    assistant 75% of the words, the first user turn with the image); with probability `MOSIT_FRACTION` the last
    answer ends with an image placeholder (a generation target)."""
    rounds = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    generates = bool(rng.random() < MOSIT_FRACTION)
    weights = rng.dirichlet(np.ones(rounds) * 4)
    # Template tokens (system prompt, role tags, EOS, signal span) are measured on a dry run, then subtracted.
    dry_run = _instruction_turns([1] * rounds, generates)
    overhead = len(build_training_example(tokenizer, dry_run, signal_ids, template).input_ids)
    words = max(2 * rounds, length - overhead + 2 * rounds)
    sizes = [max(2, int(w)) for w in np.floor(weights * words)]
    return _instruction_turns(sizes, generates)


def generates_image(turns: list[Turn]) -> bool:
    """Whether the conversation's last answer asks for an image (ends with the image placeholder)."""
    return turns[-1].text.endswith(PLACEHOLDERS[Modality.IMAGE])


def instruction_items(
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    num: int,
    pixels: list[torch.Tensor] | None,
    features: list[torch.Tensor] | None,
    caption_dim: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Stage-3 instruction samples: one image, 1-3 rounds (user 25% / assistant 75% of the words), `INSTRUCTIONS`
    total length (template included); `MOSIT_FRACTION` of them end with an image signal span and its caption
    embedding."""
    lengths = INSTRUCTIONS.sample(rng, num)
    items = []
    for index, length in enumerate(lengths):
        turns = instruction_turns(tokenizer, signal_ids, int(length), rng)
        embed = None
        if generates_image(turns):
            embed = torch.randn(77, caption_dim, generator=torch.Generator().manual_seed(index))
        media = _media(pixels, features, index)
        items.append(_item(tokenizer, signal_ids, turns, media, embed, rng, index, "instruction"))
    return items


def chunk(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Consecutive micro-batches of `size` samples (the last partial one dropped)."""
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]
