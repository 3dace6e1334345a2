"""The evaluation's building blocks without a model: attribute scoring, retrieval, switch rules, rounds, targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextgpt.config import DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.records import parse_record
from nextgpt.eval.alignment import compute_retrieval
from nextgpt.eval.attributes import chance_level, extract_attributes, score_attributes
from nextgpt.eval.captioning import summarise_scores
from nextgpt.eval.report import CAPTION_MARGIN, RETRIEVAL_TARGET, SWITCH_TARGET, check_targets
from nextgpt.eval.switching import is_switch_correct, question_rounds

NO_SPANS = {Modality.IMAGE: 0, Modality.VIDEO: 0, Modality.AUDIO: 0}


def test_attributes_are_read_with_the_modality_vocabulary():
    assert extract_attributes("A red circle on the LEFT.", Modality.IMAGE) == {
        "colour": {"red"},
        "shape": {"circle"},
        "position": {"left"},
    }
    assert extract_attributes("a blue square moving left", Modality.VIDEO)["direction"] == {"left"}
    assert extract_attributes("a beeping high tone", Modality.AUDIO) == {"pitch": {"high"}, "rhythm": {"beeping"}}
    assert extract_attributes("redder squares", Modality.IMAGE)["colour"] == set()  # whole words only


def test_an_attribute_is_right_only_when_its_single_value_is_named():
    expected = extract_attributes("a red circle on the left", Modality.IMAGE)
    assert score_attributes("a red circle on the left", expected, Modality.IMAGE) == {
        "colour": True,
        "shape": True,
        "position": True,
    }
    wrong = score_attributes("a red or green triangle", expected, Modality.IMAGE)
    assert wrong == {"colour": False, "shape": False, "position": False}
    # Attributes the reference does not name are not scored.
    assert score_attributes("It moves up.", extract_attributes("It moves up.", Modality.VIDEO), Modality.VIDEO) == {
        "direction": True
    }


def test_chance_levels_follow_the_number_of_values():
    assert chance_level(Modality.IMAGE) == {"colour": 0.25, "shape": pytest.approx(1 / 3), "position": 0.25}
    assert chance_level(Modality.AUDIO) == {"pitch": 0.5, "rhythm": 0.5}


def test_summary_weights_chance_by_what_was_scored():
    scores = [{"pitch": True, "rhythm": False}, {"pitch": True, "rhythm": True}]
    summary = summarise_scores(scores, {"pitch": 0.5, "rhythm": 0.5})
    assert summary["accuracy"] == 0.75 and summary["chance"] == 0.5 and summary["num_scored"] == 4
    assert summary["per_attribute"]["rhythm"]["accuracy"] == 0.5
    assert summarise_scores([], {"pitch": 0.5})["accuracy"] is None


def test_retrieval_of_exact_projections_is_perfect_and_of_a_constant_one_is_not():
    generator = torch.Generator().manual_seed(0)
    distinct = torch.randn(4, 7, 5, generator=generator)
    captions = ["a", "b", "c", "d", "a", "b"]
    targets = distinct[[0, 1, 2, 3, 0, 1]]
    exact = compute_retrieval(targets.clone(), targets, captions)
    assert exact["retrieval_accuracy"] == 1.0 and exact["mean_cosine"] == pytest.approx(1.0)
    assert exact["num_captions"] == 4 and exact["chance"] == 0.25
    constant = compute_retrieval(targets.mean(0, keepdim=True).expand_as(targets), targets, captions)
    assert constant["retrieval_accuracy"] <= 2 / 6  # one caption wins every query
    with pytest.raises(ValueError, match="one target and one caption"):
        compute_retrieval(targets, targets[:3], captions)


def test_switch_needs_exactly_the_requested_span_and_nothing_else():
    image_only = {**NO_SPANS, Modality.IMAGE: 1}
    assert is_switch_correct(image_only, False, Modality.IMAGE)
    assert not is_switch_correct(image_only, False, Modality.VIDEO)
    assert not is_switch_correct(image_only, True, Modality.IMAGE)  # plus a malformed span
    assert not is_switch_correct({**image_only, Modality.AUDIO: 1}, False, Modality.IMAGE)
    assert not is_switch_correct({**NO_SPANS, Modality.IMAGE: 2}, False, Modality.IMAGE)
    assert is_switch_correct(NO_SPANS, False, None)
    assert not is_switch_correct(image_only, False, None)


def test_question_rounds_keep_earlier_answers_and_their_media(tmp_path: Path):
    record = {
        "input_image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Where is the shape?\n<image>"},
            {"from": "gpt", "value": "on the left"},
        ],
    }
    spec = parse_record(record, DatasetEntryConfig(annotation_path=tmp_path / "x.json", image_dir=tmp_path))
    rounds = question_rounds(spec)
    assert [len(r.turns) for r in rounds] == [1, 3]
    assert [[path.name for _, path in r.media] for r in rounds] == [["a.png"], ["a.png", "b.png"]]
    assert [r.reference for r in rounds] == ["red", "on the left"]
    assert rounds[1].turns[1].text == "red"


def _run(stage: int, metrics: dict) -> dict:
    return {"stage": stage, "metrics": metrics}


def test_targets_come_from_the_last_run_of_each_stage():
    runs = [
        _run(1, {"captioning": {"accuracy": 0.9, "chance": 0.3}}),
        _run(2, {"alignment": {"retrieval_accuracy": 0.5}}),
        _run(2, {"alignment": {"retrieval_accuracy": RETRIEVAL_TARGET}}),
        _run(3, {"switching": {"modality_switch_accuracy": SWITCH_TARGET - 0.01}}),
    ]
    targets = {t["name"]: t for t in check_targets(runs)}
    assert targets["stage-1 attribute accuracy"]["passed"]
    assert targets["stage-1 attribute accuracy"]["threshold"] == pytest.approx(0.3 + CAPTION_MARGIN)
    assert targets["stage-2 retrieval accuracy"]["passed"]
    assert not targets["stage-3 modality-switch accuracy"]["passed"]
    assert check_targets([_run(3, {"alignment": {"retrieval_accuracy": 1.0}})]) == []
