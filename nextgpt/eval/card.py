"""The eval card: one JSON and one Markdown table holding the protocol, checkpoint, code version and every number (the
paper's beside ours), and one grid image of sample outputs per task for people to look at.

    card = build_card(results, checkpoint_dir=Path("runs/stage_3/final"))
    write_card(card, results, Path("runs/eval"))     # eval_card.json, eval_card.md, grid_<task>.png
"""

from __future__ import annotations

import json
import logging
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nextgpt.config_loader import to_dict

logger = logging.getLogger(__name__)

THUMBNAIL = 96
_LABEL_LINES, _LABEL_WIDTH = 4, 22


def code_version(repo_dir: Path | None = None) -> str:
    """`git describe --always --dirty` of the code's repository, or "unknown" outside a git checkout."""
    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_dir), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def media_thumbnail(modality: str, array: np.ndarray | None) -> np.ndarray:
    """A (THUMBNAIL, THUMBNAIL, 3) uint8 picture of one medium: the image, a video's first / middle / last frames side
    by side, or an audio clip's log spectrogram; grey when there is nothing (the reply rendered no medium)."""
    if array is None or (modality == "audio" and len(array) < 1024):
        return np.full((THUMBNAIL, THUMBNAIL, 3), 128, np.uint8)
    if modality == "video":
        frames = [array[0], array[len(array) // 2], array[-1]]
        picture = np.concatenate(frames, axis=1)  # 3 x (H, W, 3) -> (H, 3W, 3)
    elif modality == "audio":
        frames = np.lib.stride_tricks.sliding_window_view(array[: len(array) // 256 * 256], 512)[::256]
        spectrum = np.log1p(np.abs(np.fft.rfft(frames * np.hanning(512), axis=-1))).T[::-1]  # (bins, frames)
        grey = (255 * spectrum / max(spectrum.max(), 1e-6)).astype(np.uint8)
        picture = np.stack([grey] * 3, axis=-1)
    else:
        picture = array
    return np.asarray(Image.fromarray(picture).resize((THUMBNAIL, THUMBNAIL)))


def grid_image(cells: list[tuple[np.ndarray, str]]) -> Image.Image:
    """Pictures in one row, each with its label wrapped underneath."""
    label_height = 12 * _LABEL_LINES * 2
    canvas = Image.new("RGB", (max(1, len(cells)) * (THUMBNAIL + 8), THUMBNAIL + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (picture, label) in enumerate(cells):
        x = index * (THUMBNAIL + 8)
        canvas.paste(Image.fromarray(picture), (x, 0))
        lines = [w for part in label.split("\n") for w in textwrap.wrap(part, _LABEL_WIDTH)[:_LABEL_LINES]]
        draw.multiline_text((x, THUMBNAIL + 2), "\n".join(lines), fill="black")
    return canvas


def build_card(results: list[Any], checkpoint_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card as a dict: checkpoint (+ its meta.json), code version, date, and per task protocol, scores, paper."""
    meta_path = Path(checkpoint_dir) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    tasks = {}
    for result in results:
        protocol = result.protocol
        tasks[result.name] = {
            "benchmark": protocol.benchmark,
            "split": protocol.split,
            "num_samples": result.num_samples,
            "scores": result.scores,
            "paper": protocol.paper,
            "paper_source": protocol.paper_source,
            "notes": result.notes,
            "metric_models": result.metric_models,
            "protocol": to_dict(protocol),
        }
    return {
        "checkpoint": str(checkpoint_dir),
        "checkpoint_meta": meta,
        "code_version": code_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(extra or {}),
        "tasks": tasks,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: a header with checkpoint and code version, one table row per task and metric."""
    lines = [
        "# Eval card",
        "",
        f"- checkpoint: `{card['checkpoint']}`",
        f"- code version: `{card['code_version']}`",
        f"- date: {card['date']}",
        "",
        "| task | benchmark (split) | samples | metric | ours | paper |",
        "|---|---|---|---|---|---|",
    ]
    for name, task in card["tasks"].items():
        metrics = list(task["scores"]) or ["(none)"]
        for metric in metrics:
            ours = _fmt(task["scores"].get(metric))
            paper = _fmt(task["paper"][metric]) if metric in task["paper"] else ""
            where = f"{task['benchmark']} ({task['split']})"
            lines.append(f"| {name} | {where} | {task['num_samples']} | {metric} | {ours} | {paper} |")
    notes = [f"- {name}: {topic}: {note}" for name, t in card["tasks"].items() for topic, note in t["notes"].items()]
    models = {(m["kind"], m["path"], m["sha256"]) for t in card["tasks"].values() for m in t["metric_models"]}
    if notes:
        lines += ["", "Notes:", *notes]
    if models:
        lines += ["", "Metric models:", *(f"- {k}: `{p}` sha256 `{h}`" for k, p, h in sorted(models))]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], results: list[Any], out_dir: Path) -> Path:
    """Write eval_card.json, eval_card.md and grid_<task>.png under `out_dir`; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        if result.grid:
            grid_path = out_dir / f"grid_{result.name}.png"
            grid_image(result.grid).save(grid_path)
            card["tasks"][result.name]["grid"] = grid_path.name
    json_path = out_dir / "eval_card.json"
    json_path.write_text(json.dumps(card, indent=2, default=str))
    (out_dir / "eval_card.md").write_text(card_markdown(card))
    logger.info("eval card written to %s and %s", json_path, out_dir / "eval_card.md")
    return json_path
