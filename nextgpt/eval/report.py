"""Evaluate checkpoints on the held-out split and write one JSON report with the metrics, chance levels and targets.

Each checkpoint is evaluated with the metrics of its stage (stage 1: captioning; stage 2: alignment; stage 3:
switching, alignment and captioning), optionally next to the same architecture with freshly initialised project
weights ("untrained"), so that the report shows what training changed.

    report = evaluate_checkpoints([Path("runs/tiny/stage_1/final"), Path("runs/tiny/stage_3/final")], baseline=True)
    write_report(report, Path("runs/tiny/eval.json"))
    [t for t in report["targets"] if not t["passed"]]
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from nextgpt.checkpoints import CONFIG_FILE, MERGED_MARKER, META_FILE, load_model_from_folder, resolve_folder_config
from nextgpt.config import Config
from nextgpt.data.catalog import load_catalog
from nextgpt.eval.alignment import evaluate_alignment
from nextgpt.eval.captioning import evaluate_captioning
from nextgpt.eval.heldout import EvalDatasets
from nextgpt.eval.switching import evaluate_switching
from nextgpt.eval.tools import evaluate_tools_metric
from nextgpt.model import NextGPT, build_nextgpt

logger = logging.getLogger(__name__)

MetricName = Literal["captioning", "alignment", "switching", "tools"]
METRIC_NAMES: tuple[MetricName, ...] = ("captioning", "alignment", "switching", "tools")
STAGE_METRICS: dict[int, tuple[MetricName, ...]] = {
    1: ("captioning",),
    2: ("alignment",),
    3: ("switching", "alignment", "captioning"),
}
"""What each stage trains for: stage 1 reads media, stage 2 writes conditioning, stage 3 follows instructions."""
RETRIEVAL_TARGET = 0.9
SWITCH_TARGET = 0.95
CAPTION_MARGIN = 0.2
"""Stage-1 attribute accuracy counts as clearly above chance when it beats chance by this many points."""
_EVALUATORS = {
    "captioning": evaluate_captioning,
    "alignment": evaluate_alignment,
    "switching": evaluate_switching,
    "tools": evaluate_tools_metric,
}


def evaluate_model(
    model: NextGPT,
    cfg: Config,
    catalog_path: Path,
    metrics: Sequence[MetricName],
    max_items: int | None = None,
    datasets: EvalDatasets | None = None,
) -> dict[str, Any]:
    """Run the named metrics on one model.

    Args:
        model: the model (eval mode is set by the metrics).
        cfg: its config.
        catalog_path: catalog with the held-out entries.
        metrics: any of "captioning", "alignment", "switching".
        max_items: records per held-out dataset (None: all).
        datasets: which catalog names to read (default: the synthetic world's).

    Returns:
        Metric name -> its result dict.

    Raises:
        ValueError: an unknown metric name, or a held-out dataset missing from the catalog.
    """
    unknown = [m for m in metrics if m not in _EVALUATORS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    catalog = load_catalog(catalog_path)
    return {name: _EVALUATORS[name](model, cfg, catalog, max_items, datasets) for name in metrics}


def _is_merged(folder: Path) -> bool:
    meta = Path(folder) / META_FILE
    return meta.is_file() and MERGED_MARKER in json.loads(meta.read_text())


def build_untrained_model(cfg: Config) -> NextGPT:
    """The checkpoint's architecture on its base LLM with freshly initialised project weights (seeded by cfg.seed)."""
    torch.manual_seed(cfg.seed)
    return build_nextgpt(cfg.model)


def evaluate_checkpoint(
    folder: Path,
    stage: int | None = None,
    catalog_path: Path | None = None,
    metrics: Sequence[MetricName] | None = None,
    max_items: int | None = None,
    baseline: bool = False,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    datasets: EvalDatasets | None = None,
) -> dict[str, Any]:
    """Load a checkpoint (or merged) folder and evaluate it; optionally the untrained model too.

    Args:
        folder: a training checkpoint folder (e.g. runs/tiny/stage_2/final) or a merged folder.
        stage: which stage's metrics to run (None: the folder's `train.stage`).
        catalog_path: held-out catalog (None: the folder's `data.catalog_path`).
        metrics: explicit metric names (None: those of the stage).
        max_items: records per held-out dataset.
        baseline: also evaluate `build_untrained_model` (training checkpoint folders only).
        device: where to run.
        overrides: config overrides applied to the folder's config.
        datasets: held-out catalog names per metric (None: the synthetic world's).

    Returns:
        {"checkpoint", "stage", "catalog", "metrics", "seconds"} plus "untrained" with `baseline`.

    Raises:
        FileNotFoundError: the folder has no config.yaml or weights.
        ValueError: `baseline` with a merged folder (its LLM already holds the trained LoRA), or bad metric names.
    """
    if not (Path(folder) / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_FILE}; pass a checkpoint folder (e.g. runs/tiny/stage_2/final) or a merged folder"
        )
    start = time.perf_counter()
    cfg = resolve_folder_config(folder, overrides)
    stage = stage or cfg.train.stage
    if stage not in STAGE_METRICS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}; pass --stage")
    # A tool-use run (its config names a tool library) is scored on tool use; other runs by their stage.
    names = tuple(metrics or (("tools",) if cfg.data.tool_library_path is not None else STAGE_METRICS[stage]))
    catalog_path = Path(catalog_path or cfg.data.catalog_path)
    if baseline and _is_merged(folder):
        raise ValueError(
            f"{folder} is a merged folder whose LLM holds trained LoRA weights; for an untrained baseline "
            "pass the stage's training checkpoint (e.g. runs/tiny/stage_3/final)"
        )
    report: dict[str, Any] = {"checkpoint": str(folder), "stage": stage, "catalog": str(catalog_path)}
    model, cfg = load_model_from_folder(folder, overrides)
    report["metrics"] = evaluate_model(model.to(device), cfg, catalog_path, names, max_items, datasets)
    if baseline:
        untrained = build_untrained_model(cfg).to(device)
        report["untrained"] = evaluate_model(untrained, cfg, catalog_path, names, max_items, datasets)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _latest_of_stage(runs: list[dict[str, Any]], stage: int, metric: str) -> dict[str, Any] | None:
    found = [r["metrics"][metric] for r in runs if r["stage"] == stage and metric in r["metrics"]]
    return found[-1] if found else None


def check_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The acceptance targets met or missed by the evaluated runs (a target whose stage was not run is left out).

    Returns:
        [{"name", "value", "target", "passed"}], from the last run of each stage.
    """
    targets = []
    captioning = _latest_of_stage(runs, 1, "captioning")
    if captioning is not None and captioning["accuracy"] is not None:
        bar = captioning["chance"] + CAPTION_MARGIN
        targets.append(
            _target("stage-1 attribute accuracy", captioning["accuracy"], bar, f">= chance + {CAPTION_MARGIN}")
        )
    alignment = _latest_of_stage(runs, 2, "alignment")
    if alignment is not None:
        targets.append(_target("stage-2 retrieval accuracy", alignment["retrieval_accuracy"], RETRIEVAL_TARGET))
    switching = _latest_of_stage(runs, 3, "switching")
    if switching is not None and switching["modality_switch_accuracy"] is not None:
        targets.append(
            _target("stage-3 modality-switch accuracy", switching["modality_switch_accuracy"], SWITCH_TARGET)
        )
    return targets


def _target(name: str, value: float, bar: float, described: str | None = None) -> dict[str, Any]:
    return {"name": name, "value": value, "target": described or f">= {bar}", "threshold": bar, "passed": value >= bar}


def evaluate_checkpoints(
    folders: Sequence[Path],
    stages: Sequence[int | None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate several checkpoints (e.g. the three stages' final folders) into one report.

    Args:
        folders: checkpoint or merged folders.
        stages: per folder, the stage whose metrics to run (None entries: the folder's own stage).
        **kwargs: passed to `evaluate_checkpoint` (catalog_path, metrics, max_items, baseline, device, overrides).

    Returns:
        {"runs": [...], "targets": check_targets(runs)}.

    Raises:
        ValueError: `stages` given with a different length than `folders`.
    """
    stages = list(stages) if stages else [None] * len(folders)
    if len(stages) != len(folders):
        raise ValueError(f"got {len(folders)} checkpoint folders but {len(stages)} stages; give one stage per folder")
    runs = [evaluate_checkpoint(Path(f), s, **kwargs) for f, s in zip(folders, stages, strict=True)]
    return {"runs": runs, "targets": check_targets(runs)}


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report as indented JSON (parent folders created); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    logger.info("evaluation report written to %s", path)
    return path
