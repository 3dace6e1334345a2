"""The loop check's dataset world: the bench's length mix (`bench/workloads.py`) as files in the official formats.

Two catalog datasets under one root, read by the project's own datasets exactly as real data is:

- `loop_captions` (x_to_text, CC3M-like): `input_image` + `USER: <image>` / caption of `CAPTIONS` tokens.
- `loop_instructions` (instruction, LLaVA/MosIT-like): one `input_image`, 1-3 rounds, `INSTRUCTIONS` tokens in all
  (template included); `MOSIT_FRACTION` of them end with an image placeholder plus `image_captions` and
  `image_caption_embeddings` (a random `.npy` of the decoder's shape, as preprocess_embeddings.py writes it).

The words are random single-token words of the tokenizer, so a conversation's token count is the bench's; images
are random 64x64 PNGs (the image transform resizes them). Every sample is drawn from its own seed, so a larger
world starts with the smaller one and a re-run keeps every file that exists.

    catalog = write_loop_world(root, tokenizer, signal_ids, num_captions=800, num_instructions=200, caption_shape=(77, 768))
    stats = token_length_stats(catalog, tokenizer, signal_ids, max_length=512)
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from bench.workloads import CAPTIONS, FILLER, INSTRUCTIONS, caption_turns, generates_image, instruction_turns
from nextgpt.constants import Modality
from nextgpt.llm.conversation import Turn

CAPTIONS_NAME = "loop_captions"
INSTRUCTIONS_NAME = "loop_instructions"
IMAGE_SIDE = 64
_FILLER_WORD = re.compile(rf"\b{FILLER}\b")
_CAPTION_WORDS = 12
"""Words of a generation target's caption (its embedding is what training reads)."""


def single_token_words(tokenizer) -> list[str]:
    """Plain words of the tokenizer's base vocabulary that it keeps as one piece after a space."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    words = [p[1:] for p in pieces if p.startswith("▁") and p[1:].isascii() and p[1:].isalpha()]
    words = [w for w in words if tokenizer.tokenize(w) == ["▁" + w]]
    if len(words) < 10:
        raise ValueError(f"the tokenizer has only {len(words)} single-token words; the world needs a word vocabulary")
    return words


def _fill(turns: list[Turn], words: list[str], rng: np.random.Generator) -> list[dict[str, str]]:
    """The turns as official `conversations`, every filler word replaced by a random single-token word."""
    conversations = []
    for turn in turns:
        text = _FILLER_WORD.sub(lambda _: words[int(rng.integers(len(words)))], turn.text)
        conversations.append({"from": "human" if turn.role == "user" else "gpt", "value": text})
    return conversations


def _write_png(path: Path, rng: np.random.Generator) -> None:
    if not path.is_file():
        pixels = rng.integers(0, 256, size=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    """Write only when the content changes (the files keep their stamps across re-runs)."""
    text = json.dumps(records, indent=1)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _caption_records(root: Path, num: int, words: list[str], seed: int) -> list[dict[str, Any]]:
    images = root / "captions" / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(num):
        rng = np.random.default_rng([seed, 1, index])
        length = int(CAPTIONS.sample(rng, 1)[0])
        name = f"c_{index:06d}.png"
        _write_png(images / name, rng)
        records.append({"input_image": name, "conversations": _fill(caption_turns(length), words, rng)})
    return records


def _instruction_records(
    root: Path,
    num: int,
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    words: list[str],
    caption_shape: tuple[int, ...],
    template: str | None,
    seed: int,
) -> list[dict[str, Any]]:
    from nextgpt.data.embeddings import save_caption_embedding

    images, embed = root / "instructions" / "images", root / "instructions" / "embed"
    images.mkdir(parents=True, exist_ok=True)
    embed.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(num):
        rng = np.random.default_rng([seed, 3, index])
        length = int(INSTRUCTIONS.sample(rng, 1)[0])
        turns = instruction_turns(tokenizer, signal_ids, length, rng, template)
        name = f"i_{index:06d}.png"
        _write_png(images / name, rng)
        record: dict[str, Any] = {"input_image": [name], "conversations": _fill(turns, words, rng)}
        if generates_image(turns):
            embedding = f"i_{index:06d}.npy"
            record["image_captions"] = [" ".join(rng.choice(words, size=_CAPTION_WORDS))]
            record["image_caption_embeddings"] = [embedding]
            if not (embed / embedding).is_file():
                save_caption_embedding(embed / embedding, rng.standard_normal(caption_shape).astype(np.float32))
        records.append(record)
    return records


def write_loop_world(
    root: Path,
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    num_captions: int,
    num_instructions: int,
    caption_shape: tuple[int, ...],
    template: str | None = None,
    seed: int = 0,
) -> Path:
    """Write (or complete) both datasets and their catalog under `root`.

    Args:
        root: output folder (created).
        tokenizer: the LLM's tokenizer with the signal tokens (`load_tokenizer`): word choice and template overhead.
        signal_ids: `signal_token_ids(tokenizer, cfg.model.signal_tokens)`.
        num_captions: stage-1 samples.
        num_instructions: stage-3 samples.
        caption_shape: the image caption embedding's shape (`expected_caption_shapes(...)[Modality.IMAGE]`).
        template: `model.llm.template` (None: the default).
        seed: the world's seed (sample i draws from (seed, stage, i)).

    Returns:
        The catalog, `<root>/datasets.yaml`.
    """
    root = Path(root)
    words = single_token_words(tokenizer)
    captions = _caption_records(root, num_captions, words, seed)
    instructions = _instruction_records(
        root, num_instructions, tokenizer, signal_ids, words, caption_shape, template, seed
    )
    _write_json(root / "captions" / "captions.json", captions)
    _write_json(root / "instructions" / "instructions.json", instructions)
    catalog = {
        "base_dir": ".",
        "datasets": {
            CAPTIONS_NAME: {
                "annotation_path": "captions/captions.json",
                "kind": "x_to_text",
                "image_dir": "captions/images",
            },
            INSTRUCTIONS_NAME: {
                "annotation_path": "instructions/instructions.json",
                "kind": "instruction",
                "image_dir": "instructions/images",
                "caption_embed_dir": "instructions/embed",
            },
        },
    }
    catalog_path = root / "datasets.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return catalog_path


def token_length_stats(
    catalog_path: Path,
    tokenizer,
    signal_ids: dict[Modality, list[int]],
    max_length: int,
    template: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Token counts of every sample as training tokenizes them (`parse_record` -> `build_training_example`).

    For stage 1 the count is the caption's (the assistant's words), as `CAPTIONS` defines it; for stage 3 the whole
    sample's, as `INSTRUCTIONS` does. `over_max_length`: samples longer than `model.llm.max_length` (the collator cuts
    them after a round that fits, or skips them).
    """
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.records import load_records, parse_record
    from nextgpt.llm.conversation import build_training_example

    stats: dict[str, dict[str, Any]] = {}
    for name, entry in load_catalog(catalog_path).items():
        measured, totals, targets = [], [], 0
        for record in load_records(entry.annotation_path):
            spec = parse_record(record, entry)
            total = len(build_training_example(tokenizer, spec.turns, signal_ids, template).input_ids)
            answer = len(tokenizer.tokenize(spec.turns[-1].text))
            measured.append(answer if name == CAPTIONS_NAME else total)
            totals.append(total)
            targets += len(spec.targets)
        mix = CAPTIONS if name == CAPTIONS_NAME else INSTRUCTIONS
        stats[name] = {
            "samples": len(totals),
            "measured": "caption tokens" if name == CAPTIONS_NAME else "sample tokens",
            "mix": mix.describe(),
            "mean": statistics.fmean(measured),
            "median": statistics.median(measured),
            "max": max(measured),
            "sample_tokens_mean": statistics.fmean(totals),
            "over_max_length": sum(t > max_length for t in totals),
            "max_length": max_length,
            "generation_targets": targets,
        }
    return stats
