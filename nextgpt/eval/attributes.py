"""The synthetic world's attribute vocabulary, and scoring of free text against it.

Every caption or answer of the tiny world names attribute values with fixed words ("a red circle on the left", "a
beeping high tone", "It moves up."). A reply is scored per attribute: it is right when the only value word of that
attribute it contains is the expected one (no value word, or a wrong or an extra one, is wrong).

    expected = extract_attributes("a red circle on the left", Modality.IMAGE)  # {"colour": {"red"}, ...}
    score = score_attributes("a red square on the left", expected, Modality.IMAGE)  # {"colour": True, "shape": False, ...}
    chance_level(Modality.IMAGE)  # {"colour": 0.25, "shape": 0.333, "position": 0.25}
"""

from __future__ import annotations

import re

from nextgpt.constants import Modality
from nextgpt.tiny import data as world

ATTRIBUTE_WORDS: dict[Modality, dict[str, tuple[str, ...]]] = {
    Modality.IMAGE: {
        "colour": tuple(sorted(world.COLOURS)),
        "shape": tuple(world.SHAPES),
        "position": tuple(sorted(world.POSITIONS)),
    },
    Modality.VIDEO: {
        "colour": tuple(sorted(world.COLOURS)),
        "shape": tuple(world.SHAPES),
        "direction": tuple(sorted(world.DIRECTIONS)),
    },
    Modality.AUDIO: {"pitch": tuple(sorted(world.PITCHES)), "rhythm": tuple(world.RHYTHMS)},
}
"""Per modality: attribute name -> the words naming its values (position "left" is said "on the left")."""

_WORD = re.compile(r"[a-z]+")


def extract_attributes(text: str, modality: Modality) -> dict[str, set[str]]:
    """The value words of each of `modality`'s attributes that `text` contains.

    Args:
        text: a caption, answer or generated reply.
        modality: whose vocabulary to read it with (video "left" is a direction, image "left" a position).

    Returns:
        Attribute -> the set of its value words found (empty when the text names none).
    """
    words = set(_WORD.findall(text.lower()))
    return {name: {v for v in values if v in words} for name, values in ATTRIBUTE_WORDS[modality].items()}


def score_attributes(reply: str, expected: dict[str, set[str]], modality: Modality) -> dict[str, bool]:
    """Whether `reply` names exactly the expected value of every attribute that `expected` names.

    Args:
        reply: the generated text.
        expected: from `extract_attributes` of the reference text; attributes with no value are not scored.
        modality: the vocabulary to read `reply` with.

    Returns:
        Attribute -> right or wrong, for the scored attributes only.
    """
    found = extract_attributes(reply, modality)
    return {name: found[name] == values for name, values in expected.items() if values}


def chance_level(modality: Modality) -> dict[str, float]:
    """Accuracy of guessing one value uniformly at random, per attribute of `modality`."""
    return {name: 1.0 / len(values) for name, values in ATTRIBUTE_WORDS[modality].items()}
