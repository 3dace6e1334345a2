"""COCO caption metrics: pycocoevalcap's corpus scores against values computed here from the metric definitions."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from nextgpt.eval.caption_scores import java_available, score_captions

CANDIDATES = {
    "1": ["a red circle on the left"],
    "2": ["a blue square at the top"],
    "3": ["a green triangle moving up"],
}
REFERENCES = {
    "1": ["a red circle on the left", "a red disc on the left side"],
    "2": ["a blue square on the right", "a small blue square at the top"],
    "3": ["a yellow triangle moving down", "a green triangle going up"],
}


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _cider_d(candidates: dict[str, list[str]], references: dict[str, list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as the COCO server computes it): tf-idf n-gram vectors (idf over the references
    of the corpus), candidate counts clipped by the reference's, Gaussian length penalty, mean over n = 1..4, x10."""
    num_images = len(references)
    doc_freq = Counter()
    for refs in references.values():
        doc_freq.update({g for r in refs for n in range(1, 5) for g in _ngrams(r.split(), n)})

    def vector(words: list[str], n: int) -> dict:
        return {g: c * (math.log(num_images) - math.log(max(1.0, doc_freq[g]))) for g, c in _ngrams(words, n).items()}

    scores = []
    for key, (candidate,) in candidates.items():
        cand = candidate.split()
        per_ref = []
        for ref in references[key]:
            ref_words = ref.split()
            penalty = math.exp(-((len(cand) - len(ref_words)) ** 2) / (2 * sigma**2))
            total = 0.0
            for n in range(1, 5):
                vc, vr = vector(cand, n), vector(ref_words, n)
                norm_c = math.sqrt(sum(v * v for v in vc.values()))
                norm_r = math.sqrt(sum(v * v for v in vr.values()))
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vc.items())
                total += (dot / (norm_c * norm_r) if norm_c and norm_r else dot) * penalty
            per_ref.append(total / 4)
        scores.append(10.0 * sum(per_ref) / len(per_ref))
    return sum(scores) / len(scores)


@pytest.fixture()
def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A PATH without java: the pure-Python scorers only (the Java start-up costs seconds per call)."""
    monkeypatch.setenv("PATH", str(tmp_path))


def test_cider_matches_the_definition_on_hand_made_captions(no_java):
    scores = score_captions(CANDIDATES, REFERENCES)
    assert scores.values["CIDEr"] == pytest.approx(_cider_d(CANDIDATES, REFERENCES), rel=1e-9)
    assert scores.values["CIDEr"] > 0


def test_identical_captions_score_bleu_one_and_rouge_by_hand(no_java):
    same = {"1": ["a red circle on the left"], "2": ["a blue square at the top of it"]}
    assert score_captions(same, same).values["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    # LCS("a red circle on the left", "a blue circle on the right") = "a circle on the": P = R = 4/6, so F = 4/6.
    rouge = score_captions({"1": ["a red circle on the left"]}, {"1": ["a blue circle on the right"]})
    assert rouge.values["ROUGE-L"] == pytest.approx(4 / 6, abs=1e-9)


@pytest.mark.slow  # two Java programs start (PTB tokenizer, METEOR with its paraphrase table): tens of seconds
def test_with_java_the_ptb_tokenizer_and_meteor_run():
    assert java_available(), "caption metrics need Java: run `make java`"
    scores = score_captions({"1": ["A red circle, on the left."]}, {"1": ["a red circle on the left"]})
    assert scores.unavailable == {} and scores.tokenizer == "ptb"
    assert scores.values["METEOR"] > 0.95  # an exact match once PTB lower-cases and drops punctuation
    assert scores.values["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_without_java_meteor_is_reported_unavailable(no_java):
    scores = score_captions(CANDIDATES, REFERENCES)
    assert "METEOR" not in scores.values and "Java" in scores.unavailable["METEOR"]
    assert scores.tokenizer == "simple"
    assert scores.values["CIDEr"] == pytest.approx(_cider_d(CANDIDATES, REFERENCES), rel=1e-9)


def test_mismatched_ids_are_refused(no_java):
    with pytest.raises(ValueError, match="same non-empty ids"):
        score_captions({"1": ["a"]}, {"2": ["a"]})
