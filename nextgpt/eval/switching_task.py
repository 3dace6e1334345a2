"""The `switching` task: per requested modality, is the signal span emitted when asked and not when not asked, and
how close is the projected span to the decoder's own text embedding of the gold caption.

It reuses the held-out metrics (`nextgpt.eval.switching`, `nextgpt.eval.alignment`) on the catalog entries the
protocol names; the caption embeddings are the decoders' text-encoder outputs cached by preprocess_embeddings.py.

    result = run_switching("switching", load_protocol("switching"), pipeline)
    result.scores["switch.image"], result.scores["cosine.audio"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nextgpt.constants import Modality
from nextgpt.data.catalog import load_catalog
from nextgpt.eval.alignment import evaluate_alignment
from nextgpt.eval.heldout import EvalDatasets
from nextgpt.eval.protocol import EvalProtocol
from nextgpt.eval.switching import evaluate_switching


def switching_datasets(protocol: EvalProtocol) -> EvalDatasets:
    """The protocol's catalog names as `EvalDatasets` (no question sets: every text request is an instruction)."""
    spec = protocol.switching
    return EvalDatasets(
        alignment={Modality(m): n for m, n in spec.alignment.items()},
        generation_requests={Modality(m): n for m, n in spec.generation_requests.items()},
        text_requests=tuple(spec.text_requests),
        questions={},
    )


def run_switching(name: str, protocol: EvalProtocol, pipeline: Any):
    """Switch accuracy per requested output (text = no span), and projected-span cosine / retrieval per modality."""
    from nextgpt.eval.tasks import TaskResult

    model, cfg = pipeline.model, pipeline.cfg
    catalog = load_catalog(Path(protocol.switching.catalog_path or cfg.data.catalog_path))
    datasets = switching_datasets(protocol)
    limit = protocol.num_samples or None
    switching = evaluate_switching(model, cfg, catalog, limit, datasets)
    alignment = evaluate_alignment(model, cfg, catalog, limit, datasets)
    scores: dict[str, float | None] = {"switch": switching["modality_switch_accuracy"]}
    scores.update({f"switch.{k}": v["accuracy"] for k, v in switching["per_output"].items()})
    scores.update({f"cosine.{k}": v["mean_cosine"] for k, v in alignment["per_modality"].items()})
    scores.update({f"retrieval.{k}": v["retrieval_accuracy"] for k, v in alignment["per_modality"].items()})
    num = sum(v["num_items"] for v in switching["per_output"].values())
    return TaskResult(name, protocol, scores, num_samples=num)
