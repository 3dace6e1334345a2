"""Prompt templates: every draw is a finished sentence, and a record's draw depends on (seed, dataset, id) only."""

from __future__ import annotations

import itertools

import pytest

from nextgpt.constants import MODALITIES, Modality
from nextgpt.data.prepare.prompts import comprehension_prompt, generation_reply, generation_request, record_rng


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_template_fills_completely(modality: Modality):
    for key in range(200):
        rng = record_rng(0, "x", str(key))
        texts = [
            comprehension_prompt(rng, modality),
            generation_request(rng, modality, "a cat"),
            generation_reply(rng, modality),
        ]
        assert not any("{" in t or "}" in t or " a a" in t or " a i" in t for t in texts), texts
        assert "a cat" in texts[1]


def test_draws_are_fixed_by_seed_dataset_and_id():
    def draw(seed: int, dataset: str, key: str) -> str:
        return comprehension_prompt(record_rng(seed, dataset, key), Modality.IMAGE)

    assert draw(0, "cc3m", "001") == draw(0, "cc3m", "001")
    keys = [str(k) for k in range(50)]
    assert [draw(0, "cc3m", k) for k in keys] != [draw(1, "cc3m", k) for k in keys]
    assert len({draw(0, "cc3m", k) for k in keys}) > 10  # the templates are actually mixed
    pairs = itertools.product(range(2), ("cc3m", "webvid"))
    assert len({tuple(draw(s, d, k) for k in keys) for s, d in pairs}) == 4
