"""Helpers shared by the training tests (imported by test modules; pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def stage_overrides(tiny_root: Path, catalog: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides that point a tiny stage config at the session's checkpoints, world and an output folder."""
    from nextgpt.tiny.build import tiny_path_overrides

    return [*tiny_path_overrides(tiny_root), f"data.catalog_path={catalog}", f"train.output_dir={out_dir}", *extra]


def read_metrics(run_dir: Path) -> dict[int, float]:
    """Per-step loss from metrics.jsonl (the last record wins when a resumed run repeats a step)."""
    losses: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses
