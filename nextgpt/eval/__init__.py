"""Held-out evaluation of the three stages on the synthetic world: captioning, alignment, modality switching.

report = evaluate_checkpoints([Path("runs/tiny/stage_1/final")], baseline=True)
report["runs"][0]["metrics"]["captioning"]["accuracy"], report["targets"]
"""

from nextgpt.eval.alignment import compute_retrieval, evaluate_alignment
from nextgpt.eval.attributes import ATTRIBUTE_WORDS, chance_level, extract_attributes, score_attributes
from nextgpt.eval.captioning import evaluate_captioning
from nextgpt.eval.heldout import EvalDatasets
from nextgpt.eval.report import (
    STAGE_METRICS,
    check_targets,
    evaluate_checkpoint,
    evaluate_checkpoints,
    evaluate_model,
    write_report,
)
from nextgpt.eval.switching import evaluate_switching, is_switch_correct

__all__ = [
    "ATTRIBUTE_WORDS",
    "STAGE_METRICS",
    "EvalDatasets",
    "chance_level",
    "check_targets",
    "compute_retrieval",
    "evaluate_alignment",
    "evaluate_captioning",
    "evaluate_checkpoint",
    "evaluate_checkpoints",
    "evaluate_model",
    "evaluate_switching",
    "extract_attributes",
    "is_switch_correct",
    "score_attributes",
    "write_report",
]
