"""Prompt templates for the converted pair datasets, drawn per record from a seeded generator.

Stage 1 asks for a caption of the input media (`*_comprehension`); stage 2 asks for media matching a caption and
answers with the output placeholder (`*_generation`). Like the original builders, each record draws one template at
random; unlike them, the draw comes from a generator seeded by (seed, dataset, record id), so a rerun, a `--limit` or a
skipped neighbour never changes another record's prompt.

    rng = record_rng(0, "cc3m", "001312382")
    comprehension_prompt(rng, Modality.IMAGE)                    # "Tell me in a few words what the image contains."
    generation_request(rng, Modality.IMAGE, "a dog on a beach")  # "Can you render me an image based on this ...: a dog ..."
"""

from __future__ import annotations

import random

from nextgpt.constants import Modality

DEFAULT_SEED = 0

COMPREHENSION_TEMPLATES = (
    "Describe the {noun} in one sentence.",
    "Write a short caption for the {noun}.",
    "Summarize what the {noun} contains.",
    "Briefly explain the content of this {noun}.",
    "Give a one-line description of the {noun}.",
    "What can be perceived in this {noun}?",
    "Caption this {noun}.",
    "Provide a concise description of the {noun}.",
    "What is going on in the {noun}?",
    "Tell me in a few words what the {noun} contains.",
    "How would you describe this {noun}?",
    "Offer a brief account of the {noun}.",
    "Sum up the {noun} in a sentence.",
    "What does the {noun} depict?",
    "Put the content of this {noun} into words.",
    "Write a caption that fits the {noun}.",
    "Explain briefly what this {noun} presents.",
    "What is the subject of this {noun}?",
    "Give me a quick description of the {noun}.",
    "Characterize the {noun} in a short sentence.",
    "What would be a good caption for this {noun}?",
    "Report what you notice in the {noun}.",
    "Describe the main content of this {noun}.",
    "In one line, what is this {noun} about?",
)
"""Stage-1 questions; `{noun}` is the modality's noun. The answer is the caption."""

COMPREHENSION_NOUNS = {Modality.IMAGE: "image", Modality.VIDEO: "video", Modality.AUDIO: "audio clip"}

REQUEST_TEMPLATES = (
    "Please {verb} {a_noun} of {caption}",
    "Could you {verb} {a_noun} of {caption}?",
    "I would like {a_noun} of {caption}.",
    "Can you {verb} me {a_noun} based on this description: {caption}",
    "{Verb} {a_noun} matching the following: {caption}",
    "I need {a_noun} of {caption}.",
    "{Verb} {a_noun}: {caption}",
)
"""Stage-2 requests; the caption always ends up in the text, as in the original `*_generation` files."""

REQUEST_VERBS = ("generate", "create", "produce", "make", "compose", "render", "synthesize", "craft")

REQUEST_NOUNS = {
    Modality.IMAGE: ("image", "picture", "photo", "illustration"),
    Modality.VIDEO: ("video", "clip", "short video", "video clip"),
    Modality.AUDIO: ("audio clip", "sound", "recording", "piece of audio"),
}

REPLY_TEMPLATES = (
    "Here is the {noun}.",
    "Sure, here it is.",
    "Done.",
    "Of course.",
    "Here you go.",
    "This is what I made.",
    "Certainly, take a look.",
    "Okay, here is my attempt.",
)
"""Stage-2 answers; the output placeholder follows them."""


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def record_rng(seed: int, dataset: str, key: str) -> random.Random:
    """A generator for one record, fixed by (seed, dataset, record id) alone."""
    return random.Random(f"{seed}/{dataset}/{key}")


def comprehension_prompt(rng: random.Random, modality: Modality) -> str:
    """A stage-1 question about the input media (without the placeholder)."""
    return rng.choice(COMPREHENSION_TEMPLATES).format(noun=COMPREHENSION_NOUNS[modality])


def generation_request(rng: random.Random, modality: Modality, caption: str) -> str:
    """A stage-2 request holding the caption."""
    verb = rng.choice(REQUEST_VERBS)
    template = rng.choice(REQUEST_TEMPLATES)
    noun = rng.choice(REQUEST_NOUNS[modality])
    return template.format(verb=verb, Verb=verb.capitalize(), noun=noun, a_noun=_with_article(noun), caption=caption)


def generation_reply(rng: random.Random, modality: Modality) -> str:
    """A stage-2 answer (without the placeholder)."""
    return rng.choice(REPLY_TEMPLATES).format(noun=rng.choice(REQUEST_NOUNS[modality]))
