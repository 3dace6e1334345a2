"""Run several benchmark tasks on one checkpoint and write the eval card: the library side of `evaluate.py --tasks`.

Every protocol, benchmark file and metric model is checked before the model loads, so a missing file costs seconds,
not a model load. Rank and world size come from the caller (flags, or the RANK / WORLD_SIZE variables a launcher
sets); each rank generates its share of every task, and rank 0 scores a task once all its samples are written.

    card = evaluate_suite(["coco_t2i", "switching"], Path("runs/stage_3/final"), Path("runs/eval"))
    card["tasks"]["coco_t2i"]["scores"]        # {"FID": ..., "CLIP": ...}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nextgpt.eval.benchmark import load_benchmark
from nextgpt.eval.metric_models import check_metric_model
from nextgpt.eval.protocol import TASK_NAMES, EvalProtocol, load_protocol

logger = logging.getLogger(__name__)


def rank_from_env() -> tuple[int, int]:
    """(rank, world size) from the RANK and WORLD_SIZE variables torchrun and DeepSpeed set; (0, 1) without them."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names with "all" expanded (every task, in the card's order); duplicates dropped."""
    expanded = [t for name in names for t in (TASK_NAMES if name == "all" else (name,))]
    return list(dict.fromkeys(expanded))


def split_overrides(overrides: Sequence[str], tasks: Sequence[str]) -> dict[str, list[str]]:
    """`coco_t2i.media_dir=/data/coco` -> {"coco_t2i": ["media_dir=/data/coco"]}; a bare `key=value` goes to every task.

    Raises:
        ValueError: an override naming a task that is not evaluated.
    """
    per_task: dict[str, list[str]] = {t: [] for t in tasks}
    for text in overrides:
        head, _, rest = text.partition(".")
        if head in TASK_NAMES:
            if head not in per_task:
                raise ValueError(f"override {text!r} names task {head}, which is not in --tasks")
            per_task[head].append(rest)
        else:
            for task in tasks:
                per_task[task].append(text)
    return per_task


def check_protocol_files(protocol: EvalProtocol) -> None:
    """Every file the task will read exists (benchmark file and media, metric models), before any model loads.

    Raises:
        FileNotFoundError: one line naming the first missing file and where it comes from.
        ValueError: a malformed benchmark file.
    """
    if protocol.task == "switching":
        return
    load_benchmark(protocol.annotation_path, protocol.media_dir, protocol.num_samples)
    paths = protocol.metric_models
    if protocol.task in ("text_to_image", "text_to_video"):
        check_metric_model(paths.inception, "inception")
        check_metric_model(paths.clip, "clip")
    elif protocol.task == "text_to_audio":
        check_metric_model(paths.audio_classifier, "audio_classifier")


def evaluate_suite(
    tasks: Sequence[str],
    checkpoint_dir: Path,
    output_dir: Path,
    protocol_dir: Path | None = None,
    protocol_overrides: Sequence[str] = (),
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    overrides: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Evaluate `tasks` on a stage-3 (or merged) checkpoint; write the eval card under `output_dir` on rank 0.

    Args:
        tasks: task names (or "all").
        checkpoint_dir: the checkpoint folder.
        output_dir: per-task sample folders and the card go here (re-runs resume from it).
        protocol_dir: folder of the protocol YAMLs (None: the shipped configs/eval/).
        protocol_overrides: `[task.]key=value` changes of protocol fields (paths; other changes show in the card).
        rank: this process's rank.
        world_size: number of ranks.
        device: where the model runs.
        overrides: checkpoint config overrides.

    Returns:
        The card on rank 0 when every task is scored, else None.

    Raises:
        ConfigError, FileNotFoundError, ValueError: a bad protocol, a missing file or a bad checkpoint.
    """
    from nextgpt.eval.card import build_card, write_card
    from nextgpt.eval.tasks import run_task
    from nextgpt.inference.pipeline import NextGPTPipeline

    names = expand_tasks(tasks)
    per_task = split_overrides(protocol_overrides, names)
    # 1. Protocols and every file they name, before the model loads.
    protocols = {name: load_protocol(name, protocol_dir, per_task[name]) for name in names}
    for protocol in protocols.values():
        check_protocol_files(protocol)
    # 2. The model; decoders load when a task first renders with them.
    start = time.perf_counter()
    pipeline = NextGPTPipeline.from_pretrained(Path(checkpoint_dir), device=device, overrides=overrides)
    # 3. Each task: this rank's samples, then (rank 0) the scores.
    results = []
    for name, protocol in protocols.items():
        task_start = time.perf_counter()
        result = run_task(name, protocol, pipeline, Path(output_dir) / name, rank, world_size)
        if result is not None:
            logger.info("%s: %s (%.1f s)", name, result.scores, time.perf_counter() - task_start)
            results.append(result)
    if rank != 0 or len(results) < len(protocols):
        return None
    # 4. The card.
    card = build_card(
        results, Path(checkpoint_dir), {"seconds": round(time.perf_counter() - start, 1), "world_size": world_size}
    )
    write_card(card, results, Path(output_dir))
    return card
