"""Stage-3 metrics: modality switching (does the reply carry the requested output?) and text answers to questions.

- Modality switch: for each held-out request ("Please generate an image of ...", "Can you make a sound showing ..."),
  the greedy reply must hold exactly one complete signal span of the requested modality and no other signal token.
  For requests answered with text (text-only instructions, and questions about an input item), it must hold no
  signal token at all.
- Text replies: each question about an input item ("What colour is the shape?", "Which way does the shape move?") is
  asked after the record's earlier rounds (with their reference answers); the reply is right when it names the
  reference answer's attribute value and no other value of that attribute.

    metrics = evaluate_switching(model, cfg, catalog, max_items=32)
    metrics["modality_switch_accuracy"], metrics["text_reply_accuracy"]   # 0.99, 0.9
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nextgpt.config import Config, DatasetEntryConfig, GenerationConfig
from nextgpt.constants import MODALITIES, PLACEHOLDERS, Modality
from nextgpt.data.records import SampleSpec
from nextgpt.eval.attributes import extract_attributes, score_attributes
from nextgpt.eval.heldout import EvalDatasets, greedy_generation, load_input_media, load_specs
from nextgpt.inference.fast_decode import FastDecoder
from nextgpt.inference.generation import generate_reply
from nextgpt.llm.conversation import Turn
from nextgpt.model import NextGPT
from nextgpt.signals import find_signal_spans

logger = logging.getLogger(__name__)

TEXT = "text"
"""Key of the text-only requests in the per-output results."""
NUM_EXAMPLES = 3


def count_signal_spans(model: NextGPT, token_ids: list[int]) -> tuple[dict[Modality, int], bool]:
    """Complete signal spans per modality in generated ids, and whether any malformed signal token was found."""
    scan = find_signal_spans(torch.tensor(token_ids, dtype=torch.long), model.signal_ids)
    return {m: scan.count(m) for m in MODALITIES}, bool(scan.problems)


def is_switch_correct(counts: dict[Modality, int], malformed: bool, requested: Modality | None) -> bool:
    """Exactly one span of the requested modality and nothing else (`requested` None: no signal token at all)."""
    if malformed:
        return False
    return all(counts[m] == (1 if m == requested else 0) for m in MODALITIES)


@dataclass
class QuestionRound:
    """One user question of a record, ready to ask.

    Attributes:
        turns: the conversation up to and including the question (earlier answers are the references).
        media: the input files of those turns, in placeholder order.
        reference: the record's answer to the question.
    """

    turns: list[Turn]
    media: list[tuple[Modality, Path]]
    reference: str


def question_rounds(spec: SampleSpec) -> list[QuestionRound]:
    """Split a record into one question per round, each after the earlier rounds with their reference answers.

    Args:
        spec: a parsed record.

    Returns:
        One `QuestionRound` per user turn.
    """
    rounds = []
    num_media = 0
    for end in range(1, len(spec.turns), 2):
        question = spec.turns[end - 1].text
        num_media += sum(question.count(PLACEHOLDERS[m]) for m in MODALITIES)
        rounds.append(QuestionRound(spec.turns[:end], spec.input_media[:num_media], spec.turns[end].text))
    return rounds


def _switch_results(
    model: NextGPT,
    cfg: Config,
    specs: list[SampleSpec],
    requested: Modality | None,
    generation: GenerationConfig,
    decoder: FastDecoder,
) -> tuple[list[bool], list[dict[str, Any]]]:
    """Per request (the first round of each record): whether the reply switched to `requested`; a few examples."""
    correct, examples = [], []
    for spec in specs:
        first = question_rounds(spec)[0]
        media = load_input_media(first.media, cfg.model.encoder)
        result = generate_reply(model, first.turns, media, generation, fast_decoder=decoder)
        counts, malformed = count_signal_spans(model, result.token_ids)
        correct.append(is_switch_correct(counts, malformed, requested))
        if len(examples) < NUM_EXAMPLES:
            spans = {m.value: n for m, n in counts.items()}
            examples.append({"request": first.turns[-1].text, "reply": result.text, "spans": spans})
    return correct, examples


def _accuracy(results: list[bool]) -> dict[str, Any]:
    return {"accuracy": sum(results) / len(results) if results else None, "num_items": len(results)}


def _weighted_accuracy(parts: Iterable[dict[str, Any]]) -> float | None:
    """Accuracy over all items of several `_accuracy` results."""
    scored = [p for p in parts if p["num_items"]]
    count = sum(p["num_items"] for p in scored)
    return sum(p["accuracy"] * p["num_items"] for p in scored) / count if count else None


def _question_results(
    model: NextGPT,
    cfg: Config,
    specs: list[SampleSpec],
    modality: Modality,
    generation: GenerationConfig,
    decoder: FastDecoder,
) -> tuple[list[bool], list[bool], list[dict[str, str]]]:
    """Per question: text-reply correctness (questions naming an attribute only) and no-signal correctness."""
    answers, switches, examples = [], [], []
    for spec in specs:
        for question in question_rounds(spec):
            media = load_input_media(question.media, cfg.model.encoder)
            result = generate_reply(model, question.turns, media, generation, fast_decoder=decoder)
            counts, malformed = count_signal_spans(model, result.token_ids)
            switches.append(is_switch_correct(counts, malformed, None))
            expected = extract_attributes(question.reference, modality)
            scores = score_attributes(result.text, expected, modality)
            if scores:
                answers.append(all(scores.values()))
            if len(examples) < NUM_EXAMPLES:
                asked = question.turns[-1].text
                examples.append({"question": asked, "reference": question.reference, "reply": result.text})
    return answers, switches, examples


def evaluate_switching(
    model: NextGPT,
    cfg: Config,
    catalog: dict[str, DatasetEntryConfig],
    max_items: int | None = None,
    datasets: EvalDatasets | None = None,
) -> dict[str, Any]:
    """Modality-switch accuracy over media and text requests, and text-reply accuracy over questions.

    Args:
        model: the model to evaluate.
        cfg: its config (encoder preprocessing, generation settings; decoding is made greedy).
        catalog: a catalog with the held-out instruction entries.
        max_items: records per dataset (None: all).
        datasets: which catalog names to read (default: the synthetic world's).

    Returns:
        {"modality_switch_accuracy" (over every request), "text_reply_accuracy", "per_output": {image, video,
        audio, text: {"accuracy", "num_items"}}, "questions": {dataset: {...}}}. Chance of the switch is not a
        single number (a model that never emits signal tokens scores the text share); see "per_output".

    Raises:
        ValueError: a held-out dataset is missing from the catalog.
    """
    datasets = datasets or EvalDatasets()
    generation = greedy_generation(cfg.generation)
    # One text decoder for every reply: one built per reply would compile its step again on CUDA.
    decoder = FastDecoder(model.llm, cfg.model.llm.max_length + generation.max_new_tokens, generation.compile_decode)
    per_output: dict[str, Any] = {}
    for modality, name in datasets.generation_requests.items():
        specs = load_specs(catalog, name, max_items)
        correct, examples = _switch_results(model, cfg, specs, modality, generation, decoder)
        per_output[modality.value] = {**_accuracy(correct), "dataset": name, "examples": examples}
    text_switches: list[bool] = []
    for name in datasets.text_requests:
        text_switches += _switch_results(model, cfg, load_specs(catalog, name, max_items), None, generation, decoder)[0]
    answers: list[bool] = []
    questions: dict[str, Any] = {}
    for name, modality in datasets.questions.items():
        specs = load_specs(catalog, name, max_items)
        correct, switches, examples = _question_results(model, cfg, specs, modality, generation, decoder)
        answers += correct
        text_switches += switches
        questions[name] = {**_accuracy(correct), "examples": examples}
    per_output[TEXT] = _accuracy(text_switches)
    metrics = {
        "modality_switch_accuracy": _weighted_accuracy(per_output.values()),
        "text_reply_accuracy": _accuracy(answers)["accuracy"],
        "per_output": per_output,
        "questions": questions,
    }
    logger.info(
        "modality switch %s, text replies %s", metrics["modality_switch_accuracy"], metrics["text_reply_accuracy"]
    )
    return metrics
