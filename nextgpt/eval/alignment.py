"""Stage-2 metrics: how close the projected signal tokens come to the decoders' caption embeddings.

For each held-out caption -> media record the model is teacher-forced on the record as written ("Please generate an
image of a red circle on the left." -> "Sure, here it is. <image_00>...<image_03>"); the output projector turns the
signal span into conditioning, which is compared with the cached caption embedding of that record:
- mean cosine between the projected conditioning and its target (both flattened);
- retrieval accuracy: the target nearest to the projection (cosine), among the distinct held-out captions of that
  modality, is the record's own caption. Chance is one over the number of distinct captions.

    metrics = evaluate_alignment(model, cfg, catalog, max_items=32)
    metrics["per_modality"]["image"]["retrieval_accuracy"]   # 0.97
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F

from nextgpt.config import Config, DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.collate import Collator
from nextgpt.data.datasets import ConversationDataset, SkippedSample, expected_caption_shapes
from nextgpt.eval.heldout import EvalDatasets, catalog_entry, load_specs
from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)


def compute_retrieval(predicted: torch.Tensor, targets: torch.Tensor, captions: list[str]) -> dict[str, float | int]:
    """Mean cosine to the own target, and caption retrieval among the distinct captions.

    Args:
        predicted: (N, ...) projected conditioning, one per record.
        targets: (N, ...) the records' caption embeddings (same shape).
        captions: the N captions (records sharing a caption share its embedding).

    Returns:
        {"mean_cosine", "retrieval_accuracy", "chance", "num_items", "num_captions"}.

    Raises:
        ValueError: mismatched sizes or no items.
    """
    if predicted.shape != targets.shape or len(captions) != predicted.shape[0] or not captions:
        raise ValueError(
            f"retrieval needs one target and one caption per projection, got {tuple(predicted.shape)} projections, "
            f"{tuple(targets.shape)} targets and {len(captions)} captions"
        )
    pred_unit = F.normalize(predicted.flatten(1).float(), dim=-1)  # (N, ...) -> (N, F)
    target_unit = F.normalize(targets.flatten(1).float(), dim=-1)  # (N, ...) -> (N, F)
    own_cosine = (pred_unit * target_unit).sum(dim=-1)  # (N,)
    distinct = list(dict.fromkeys(captions))
    first_index = [captions.index(c) for c in distinct]
    similarity = pred_unit @ target_unit[first_index].T  # (N, F) x (F, C) -> (N, C)
    retrieved = similarity.argmax(dim=-1).tolist()
    correct = [distinct[r] == c for r, c in zip(retrieved, captions, strict=True)]
    return {
        "mean_cosine": float(own_cosine.mean()),
        "retrieval_accuracy": sum(correct) / len(correct),
        "chance": 1.0 / len(distinct),
        "num_items": len(captions),
        "num_captions": len(distinct),
    }


@torch.no_grad()
def project_heldout(
    model: NextGPT, cfg: Config, dataset: ConversationDataset, modality: Modality, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Teacher-forced projections of every signal span of `modality` in `dataset`, with targets and captions.

    Returns:
        (projections (N, Q, D) or (N, 1, D), caption embeddings of the same shape, the N captions), in span order.

    Raises:
        ValueError: a record whose spans and caption embeddings do not pair up, or one too long for max_length.
    """
    model.eval()
    collator = Collator(model.tokenizer.pad_token_id, cfg.model.llm.max_length, model.input_projector.num_tokens)
    items, captions = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if isinstance(item, SkippedSample):
            logger.warning("%s[%d] skipped from evaluation: %s", dataset.name, index, item.reason)
            continue
        items.append(item)
        captions += [t.caption for t in dataset.spec(index).targets if t.modality == modality]
    predicted, targets = [], []
    for start in range(0, len(items), batch_size):
        collated = collator(items[start : start + batch_size])
        if collated.batch is None or collated.num_skipped:
            raise ValueError(
                f"{dataset.name}: {collated.num_skipped} record(s) did not fit model.llm.max_length="
                f"{cfg.model.llm.max_length} ({'; '.join(collated.skip_reasons[:2])}); raise it or shorten them"
            )
        out = model(collated.batch.to(model.device))
        predicted.append(out.signal_embeds[modality].float().cpu())
        targets.append(collated.batch.caption_embeds[modality].float().reshape(predicted[-1].shape))
    return torch.cat(predicted), torch.cat(targets), captions


def evaluate_alignment(
    model: NextGPT,
    cfg: Config,
    catalog: dict[str, DatasetEntryConfig],
    max_items: int | None = None,
    datasets: EvalDatasets | None = None,
) -> dict[str, Any]:
    """Mean cosine and caption retrieval of the projected signal tokens, per output modality.

    Args:
        model: the model to evaluate.
        cfg: its config (output-projector widths give the expected embedding shapes).
        catalog: a catalog with the held-out caption -> media entries and their cached caption embeddings.
        max_items: records per modality (None: all).
        datasets: which catalog names to read (default: the synthetic world's).

    Returns:
        {"retrieval_accuracy", "mean_cosine", "chance" (averaged over modalities), "per_modality": {...}}.

    Raises:
        ValueError: a missing held-out dataset, or a caption embedding of the wrong shape
            (run preprocess_embeddings.py with the decoders of this config).
    """
    datasets = datasets or EvalDatasets()
    shapes = expected_caption_shapes(cfg.model.output_projectors)
    per_modality: dict[str, Any] = {}
    for modality, name in datasets.alignment.items():
        dataset = ConversationDataset(
            name,
            catalog_entry(catalog, name),
            load_specs(catalog, name, max_items),
            model.tokenizer,
            model.signal_ids,
            cfg.model.encoder,
            policy="error",
            caption_embed_shapes=shapes,
        )
        predicted, targets, captions = project_heldout(model, cfg, dataset, modality)
        per_modality[modality.value] = {**compute_retrieval(predicted, targets, captions), "dataset": name}
        logger.info("alignment %s: %s", modality.value, per_modality[modality.value])
    means = {
        key: sum(m[key] for m in per_modality.values()) / len(per_modality)
        for key in ("retrieval_accuracy", "mean_cosine", "chance")
    }
    return {**means, "per_modality": per_modality}
