"""Benchmark tasks under frozen protocols: generate every sample (sharded, resumable), then score the whole set.

Caption tasks (coco_caption, msrvtt_caption, audiocaps_caption) ask the protocol's prompt about each record's media
and score the replies with BLEU-4 / METEOR / ROUGE-L / CIDEr. Generation tasks (coco_t2i, msrvtt_t2v, audiocaps_t2a)
ask for the record's caption as an image, video or sound and score what the decoder rendered against the reference
media (FID + CLIP score, per-frame FID + CLIPSIM, FD / KL / IS). `switching` checks, per requested modality, that the
signal span is emitted when asked and not otherwise, and the cosine of the projected span to the decoder's own
embedding of the gold caption. Every reply is greedy; sample k seeds its diffusion noise with `protocol.seed + k`.

    pipeline = NextGPTPipeline.from_pretrained(Path("runs/stage_3/final"))
    result = run_task("coco_t2i", load_protocol("coco_t2i"), pipeline, Path("runs/eval/coco_t2i"))
    result.scores   # {"FID": 12.3, "CLIP": 30.1}   (None: another rank has not finished)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nextgpt.constants import Modality
from nextgpt.eval.benchmark import BenchmarkRecord, load_benchmark
from nextgpt.eval.caption_scores import score_captions
from nextgpt.eval.protocol import EvalProtocol
from nextgpt.eval.reference_media import load_reference, resample
from nextgpt.eval.sample_store import Sample, SampleStore, shard

logger = logging.getLogger(__name__)

CAPTION_SCALE = 100.0
"""Caption metrics are printed x100, as papers do (CIDEr 1.567 -> 156.7)."""


@dataclass
class TaskResult:
    """One task's outcome.

    Attributes:
        name: task name (e.g. "coco_t2i").
        protocol: the protocol it ran under.
        scores: metric -> value (None: not computable, see `notes`).
        notes: metric or topic -> one-line remark (METEOR unavailable, samples without media, ...).
        metric_models: {"kind", "path", "sha256"} of each metric model used.
        num_samples: samples scored.
        grid: (picture (H, W, 3) uint8, label) pairs for the card's grid image.
    """

    name: str
    protocol: EvalProtocol
    scores: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)
    metric_models: list[dict[str, str]] = field(default_factory=list)
    num_samples: int = 0
    grid: list[tuple[np.ndarray, str]] = field(default_factory=list)


def _messages(protocol: EvalProtocol, record: BenchmarkRecord) -> list[Any]:
    from nextgpt.inference.requests import Message

    modality = Modality(protocol.modality)
    if protocol.task == "caption":
        return [Message("user", protocol.prompt, {modality: [record.media_path]})]
    return [Message("user", protocol.prompt.format(caption=record.captions[0]))]


def _decoder_options(protocol: EvalProtocol) -> dict[Modality, Any]:
    from nextgpt.inference.decoder_pool import DecoderOptions

    if protocol.task == "caption":
        return {}
    g = protocol.generation
    options = DecoderOptions(g.num_inference_steps, g.guidance_scale, g.height, g.width, g.num_frames, g.audio_seconds)
    return {Modality(protocol.modality): options}


def generate_samples(
    protocol: EvalProtocol,
    records: list[BenchmarkRecord],
    pipeline: Any,
    store: SampleStore,
    rank: int,
    world_size: int,
) -> int:
    """Generate and store this rank's missing samples; returns how many were generated now."""
    modality = Modality(protocol.modality)
    options = _decoder_options(protocol)
    positions = {r.id: k for k, r in enumerate(records)}
    pending = store.pending(records, rank, world_size)
    logger.info(
        "%s: %d samples to generate on rank %d (%d done before)",
        protocol.benchmark,
        len(pending),
        rank,
        len(shard(records, rank, world_size)) - len(pending),
    )
    for record in tqdm(pending, desc=f"generate {protocol.benchmark}", unit="sample", disable=not pending):
        seed = protocol.seed + positions[record.id]
        generation = pipeline.generation_config(
            temperature=0.0, seed=seed, max_new_tokens=protocol.generation.max_new_tokens
        )
        result = pipeline.generate(_messages(protocol, record), generation, options)
        outputs = result.outputs(modality) if protocol.task != "caption" else []
        store.write(record.id, result.text, {modality.value: outputs[0]} if outputs else {})
    return len(pending)


def score_caption_task(protocol: EvalProtocol, records: list[BenchmarkRecord], samples: list[Sample]) -> TaskResult:
    """BLEU-4 / METEOR / ROUGE-L / CIDEr (x100) of the stored replies against the records' references."""
    candidates = {s.id: [s.text.strip() or "empty"] for s in samples}
    references = {r.id: list(r.captions) for r in records}
    scores = score_captions(candidates, references)
    values: dict[str, float | None] = {k: v * CAPTION_SCALE for k, v in scores.values.items()}
    values.update({k: None for k in scores.unavailable})
    notes = dict(scores.unavailable)
    if scores.tokenizer != "ptb":
        notes["tokenizer"] = "PTB tokenizer needs Java; lower-cased, punctuation-stripped words were scored instead"
    return TaskResult("", protocol, values, notes, num_samples=len(samples))


def _produced(protocol: EvalProtocol, records: list[BenchmarkRecord], samples: list[Sample]):
    """The (record, generated array) pairs whose reply rendered the requested medium."""
    key = protocol.modality
    return [(r, s.media[key]) for r, s in zip(records, samples, strict=True) if key in s.media]


def score_generation_task(
    protocol: EvalProtocol, records: list[BenchmarkRecord], samples: list[Sample], sample_rate: int | None
) -> TaskResult:
    """Image, video or audio scores of the rendered samples against their records' reference media."""
    from nextgpt.eval import media_scores
    from nextgpt.eval.metric_models import describe_metric_model, load_audio_classifier, load_clip, load_inception

    paths, modality = protocol.metric_models, Modality(protocol.modality)
    produced = _produced(protocol, records, samples)
    notes = {}
    if len(produced) < len(records):
        notes["produced"] = f"{len(produced)} of {len(records)} replies rendered a {modality.value}; scores use those"
    if len(produced) < 2:
        notes["scores"] = "fewer than 2 rendered samples: no distribution scores"
        return TaskResult("", protocol, {}, notes, num_samples=len(produced))
    refs = [
        load_reference(modality, r.media_path, len(a) if a.ndim == 4 else 16, paths.audio_sample_rate)
        for r, a in produced
    ]
    generated = [a for _, a in produced]
    captions = [r.captions[0] for r, _ in produced]
    if modality == Modality.AUDIO:
        models = [describe_metric_model(paths.audio_classifier, "audio_classifier")]
        classifier = load_audio_classifier(paths.audio_classifier, paths.audio_sample_rate, paths.audio_hop_size)
        generated = [resample(a, sample_rate or paths.audio_sample_rate, paths.audio_sample_rate) for a in generated]
        scores = media_scores.audio_scores(classifier, generated, refs)
    else:
        models = [describe_metric_model(paths.inception, "inception"), describe_metric_model(paths.clip, "clip")]
        inception, clip = load_inception(paths.inception), load_clip(paths.clip)
        if modality == Modality.IMAGE:
            scores = {
                "FID": media_scores.image_fid(inception, generated, refs),
                "CLIP": media_scores.clip_score(clip, generated, captions),
            }
        else:
            scores = media_scores.video_scores(inception, clip, generated, refs, captions)
    return TaskResult("", protocol, dict(scores), notes, models, num_samples=len(produced))


def _grid_cells(protocol: EvalProtocol, records: list[BenchmarkRecord], samples: list[Sample]):
    from nextgpt.eval.card import media_thumbnail

    cells = []
    for record, sample in list(zip(records, samples, strict=True))[: protocol.grid_size]:
        if protocol.task == "caption":
            picture = load_reference(Modality(protocol.modality), record.media_path, 4)
            cells.append((media_thumbnail(protocol.modality, picture), f"{sample.text}\n[ref] {record.captions[0]}"))
        else:
            array = sample.media.get(protocol.modality)
            cells.append((media_thumbnail(protocol.modality, array), f"{record.captions[0]}\n[reply] {sample.text}"))
    return cells


def run_task(
    name: str, protocol: EvalProtocol, pipeline: Any, task_dir: Path, rank: int = 0, world_size: int = 1
) -> TaskResult | None:
    """Generate this rank's samples into `task_dir/samples/`, then (rank 0, all samples there) score the task.

    Returns:
        The result, or None on ranks other than 0 and while other ranks' samples are missing.

    Raises:
        FileNotFoundError: a missing benchmark, media or metric-model file (one line naming it).
        ValueError: a bad benchmark file or rank.
    """
    if protocol.task == "switching":
        from nextgpt.eval.switching_task import run_switching

        return run_switching(name, protocol, pipeline) if rank == 0 else None
    records = load_benchmark(protocol.annotation_path, protocol.media_dir, protocol.num_samples)
    store = SampleStore(Path(task_dir) / "samples")
    generate_samples(protocol, records, pipeline, store, rank, world_size)
    missing = store.missing([r.id for r in records])
    if rank != 0 or missing:
        if missing:
            logger.info(
                "%s: %d samples from other ranks still missing; score once they are written", name, len(missing)
            )
        return None
    samples = store.read_all([r.id for r in records])
    if protocol.task == "caption":
        result = score_caption_task(protocol, records, samples)
    else:
        result = score_generation_task(protocol, records, samples, pipeline.decoders.sample_rate)
    result.name, result.grid = name, _grid_cells(protocol, records, samples)
    return result
