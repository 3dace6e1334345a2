"""COCO caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr-D) through pycocoevalcap, the implementation papers report.

Captions and references are tokenised by pycocoevalcap's PTB tokenizer and scored corpus-wide, as the COCO caption
server does. The PTB tokenizer and METEOR run on Java (`java` on PATH; `make java` installs Debian's
default-jre-headless); without Java, METEOR is reported as unavailable with the reason, and the tokenizer falls back
to lower-casing and stripping punctuation (the scores then say so in "tokenizer").

    scores = score_captions({"1": ["a red circle on the left"]}, {"1": ["a red circle on the left", "a red disc"]})
    scores.values["CIDEr"], scores.unavailable   # 2.43, {}
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass
class CaptionScores:
    """Corpus scores: `values` metric -> score (x100 as papers print them is left to the card), `unavailable`
    metric -> one-line reason, `tokenizer` which tokenizer ran."""

    values: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "ptb"


def java_available() -> bool:
    """Whether a `java` executable is on PATH (pycocoevalcap's PTB tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


@functools.cache
def _meteor():
    """One METEOR scorer per process: its Java side loads a 60 MB paraphrase table at start, so it is kept."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _simple_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: [" ".join(_PUNCTUATION.sub(" ", c.lower()).split()) for c in v] for k, v in captions.items()}


def _ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def score_captions(candidates: dict[str, list[str]], references: dict[str, list[str]]) -> CaptionScores:
    """BLEU-4, METEOR, ROUGE-L and CIDEr-D of one candidate per id against its references.

    Args:
        candidates: id -> [generated caption] (exactly one).
        references: id -> reference captions (one or more); the same ids as `candidates`.

    Returns:
        The corpus scores (fractions: CIDEr 1.567 is the 156.7 of papers).

    Raises:
        ValueError: ids differ, an id has not exactly one candidate, or no reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(candidates) != set(references) or not candidates:
        raise ValueError(
            f"candidates and references need the same non-empty ids, got {len(candidates)} and "
            f"{len(references)} ids ({len(set(candidates) ^ set(references))} not shared)"
        )
    bad = [k for k in candidates if len(candidates[k]) != 1 or not references[k]]
    if bad:
        raise ValueError(f"each id needs one candidate and at least one reference; not so for {bad[:3]}")
    has_java = java_available()
    tokenize = _ptb_tokenize if has_java else _simple_tokenize
    cands, refs = tokenize(candidates), tokenize(references)
    values = {"BLEU-4": Bleu(4).compute_score(refs, cands)[0][3]}
    unavailable = {}
    if has_java:
        values["METEOR"] = _meteor().compute_score(refs, cands)[0]
    else:
        unavailable["METEOR"] = "needs Java (pycocoevalcap runs meteor-1.5.jar); install default-jre-headless"
        logger.warning("METEOR unavailable: %s", unavailable["METEOR"])
    values["ROUGE-L"] = Rouge().compute_score(refs, cands)[0]
    values["CIDEr"] = Cider().compute_score(refs, cands)[0]
    return CaptionScores({k: float(v) for k, v in values.items()}, unavailable, "ptb" if has_java else "simple")
