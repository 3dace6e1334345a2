"""Stage-1 metric: attribute accuracy of the captions the model writes for held-out media.

Each held-out X -> caption record is asked as written (its media and question), the reply is decoded greedily, and each
attribute the reference caption names (colour / shape / position, colour / shape / direction, pitch / rhythm) is
scored by `score_attributes`. The chance level (one value guessed uniformly) is reported next to every accuracy.

    metrics = evaluate_captioning(model, cfg, catalog, max_items=32)
    metrics["accuracy"], metrics["chance"]   # 0.81, 0.29
"""

from __future__ import annotations

import logging
from typing import Any

from nextgpt.config import Config, DatasetEntryConfig
from nextgpt.eval.attributes import chance_level, extract_attributes, score_attributes
from nextgpt.eval.heldout import EvalDatasets, greedy_generation, load_input_media, load_specs
from nextgpt.inference.fast_decode import FastDecoder
from nextgpt.inference.generation import generate_reply
from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)

NUM_EXAMPLES = 3
"""Replies quoted in the report per modality, so a reader sees what the numbers mean."""


def summarise_scores(scores: list[dict[str, bool]], chance: dict[str, float]) -> dict[str, Any]:
    """Accuracy per attribute and over all scored attributes, with the matching chance levels.

    Args:
        scores: one `score_attributes` result per item.
        chance: chance level per attribute.

    Returns:
        {"accuracy", "chance", "num_scored", "per_attribute": {name: {"accuracy", "chance", "num_scored"}}};
        "accuracy" is None when nothing was scored.
    """
    per_attribute: dict[str, dict[str, Any]] = {}
    for name in chance:
        results = [s[name] for s in scores if name in s]
        if results:
            per_attribute[name] = {
                "accuracy": sum(results) / len(results),
                "chance": chance[name],
                "num_scored": len(results),
            }
    num_scored = sum(p["num_scored"] for p in per_attribute.values())
    if num_scored == 0:
        return {"accuracy": None, "chance": None, "num_scored": 0, "per_attribute": per_attribute}
    correct = sum(p["accuracy"] * p["num_scored"] for p in per_attribute.values())
    expected_by_chance = sum(p["chance"] * p["num_scored"] for p in per_attribute.values())
    return {
        "accuracy": correct / num_scored,
        "chance": expected_by_chance / num_scored,
        "num_scored": num_scored,
        "per_attribute": per_attribute,
    }


def evaluate_captioning(
    model: NextGPT,
    cfg: Config,
    catalog: dict[str, DatasetEntryConfig],
    max_items: int | None = None,
    datasets: EvalDatasets | None = None,
) -> dict[str, Any]:
    """Caption every held-out media item and score the attribute words of the replies.

    Args:
        model: the model to evaluate (any stage).
        cfg: its config (encoder preprocessing, generation settings; decoding is made greedy).
        catalog: a catalog with the held-out X -> caption entries.
        max_items: items per modality (None: all).
        datasets: which catalog names to read (default: the synthetic world's).

    Returns:
        Overall `summarise_scores` result plus "per_modality" (the same per modality, with example replies).

    Raises:
        ValueError: a held-out dataset is missing from the catalog.
    """
    datasets = datasets or EvalDatasets()
    generation = greedy_generation(cfg.generation)
    # One text decoder for every reply: one built per reply would compile its step again on CUDA.
    decoder = FastDecoder(model.llm, cfg.model.llm.max_length + generation.max_new_tokens, generation.compile_decode)
    all_scores: list[dict[str, bool]] = []
    all_chance: dict[str, float] = {}
    per_modality: dict[str, Any] = {}
    for modality, name in datasets.captioning.items():
        scores, examples = [], []
        for spec in load_specs(catalog, name, max_items):
            reference = spec.turns[-1].text
            media = load_input_media(spec.input_media, cfg.model.encoder)
            reply = generate_reply(model, spec.turns[:-1], media, generation, fast_decoder=decoder).text
            scores.append(score_attributes(reply, extract_attributes(reference, modality), modality))
            if len(examples) < NUM_EXAMPLES:
                examples.append({"reference": reference, "reply": reply})
        chance = chance_level(modality)
        per_modality[modality.value] = {**summarise_scores(scores, chance), "dataset": name, "examples": examples}
        # Attribute names repeat across modalities ("colour"), so the overall summary keys them by modality.
        all_scores += [{f"{modality.value}.{k}": v for k, v in s.items()} for s in scores]
        all_chance.update({f"{modality.value}.{k}": v for k, v in chance.items()})
        logger.info("captioning %s: accuracy %s", modality.value, per_modality[modality.value]["accuracy"])
    summary = summarise_scores(all_scores, all_chance)
    summary.pop("per_attribute")
    return {**summary, "per_modality": per_modality}
