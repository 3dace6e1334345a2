"""The Vicuna v1 template: exact rendering, label masking, placeholders, generation prompts, checks."""

from __future__ import annotations

import pytest

from nextgpt.constants import IGNORE_INDEX, SENTINEL_IDS, Modality
from nextgpt.llm.conversation import (
    VICUNA_V1,
    Example,
    Turn,
    build_generation_prompt,
    build_training_example,
    check_tokenization,
    render_conversation,
)
from nextgpt.llm.tokenizer import encode_text, load_tokenizer, signal_token_ids

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TWO_ROUNDS = [
    Turn("user", "show me a red circle"),
    Turn("assistant", "Here is a red circle."),
    Turn("user", "and a blue square?"),
    Turn("assistant", "Sure, a blue square."),
]


def _labelled_spans(example: Example) -> list[list[int]]:
    """Runs of consecutive labelled positions, as label lists."""
    spans, current = [], []
    for label in example.labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def test_exact_rendering_of_two_rounds() -> None:
    assert VICUNA_V1.system == SYSTEM + " "
    assert render_conversation(TWO_ROUNDS) == (
        f"{SYSTEM} USER: show me a red circle ASSISTANT: Here is a red circle.</s>"
        "USER: and a blue square? ASSISTANT: Sure, a blue square.</s>"
    )
    assert render_conversation(TWO_ROUNDS[:3]).endswith("</s>USER: and a blue square? ASSISTANT:")


def test_ids_equal_whole_string_tokenisation(tokenizer, signal_ids) -> None:
    example = build_training_example(tokenizer, TWO_ROUNDS, signal_ids)
    assert example.input_ids == tokenizer(render_conversation(TWO_ROUNDS)).input_ids
    assert check_tokenization(tokenizer, TWO_ROUNDS, example)


def test_labels_cover_only_answers_and_their_eos(tokenizer, signal_ids) -> None:
    example = build_training_example(tokenizer, TWO_ROUNDS, signal_ids)
    assert len(example.labels) == len(example.input_ids)
    assert example.input_ids[0] == tokenizer.bos_token_id and example.labels[0] == IGNORE_INDEX
    eos = tokenizer.eos_token_id
    spans = _labelled_spans(example)
    assert len(spans) == 2 and all(span[-1] == eos for span in spans)
    assert tokenizer.decode(spans[0]) == "Here is a red circle.</s>"
    assert tokenizer.decode(spans[1]) == "Sure, a blue square.</s>"
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    assert all(example.labels[i] == example.input_ids[i] for i in labelled)
    assert example.input_ids.count(eos) == 2


def test_user_placeholders_become_sentinels_and_stay_unlabelled(tokenizer, signal_ids) -> None:
    turns = [Turn("user", "<image>\nWhat is shown? <audio>"), Turn("assistant", "A red circle and a tone.")]
    example = build_training_example(tokenizer, turns, signal_ids)
    positions = [i for i, t in enumerate(example.input_ids) if t < 0]
    assert [example.input_ids[i] for i in positions] == [SENTINEL_IDS[Modality.IMAGE], SENTINEL_IDS[Modality.AUDIO]]
    assert all(example.labels[i] == IGNORE_INDEX for i in positions)
    assert check_tokenization(tokenizer, turns, example)


def test_assistant_placeholders_become_exactly_n_signal_ids(tokenizer, signal_ids) -> None:
    turns = [Turn("user", "make a video and a sound"), Turn("assistant", "Here you go: <video> and <audio>")]
    example = build_training_example(tokenizer, turns, signal_ids)
    ids = example.input_ids
    for modality, count in ((Modality.VIDEO, 24), (Modality.AUDIO, 8)):
        start = ids.index(signal_ids[modality][0])
        assert ids[start : start + count] == signal_ids[modality]  # contiguous: no "▁" between signal tokens
        assert example.labels[start : start + count] == signal_ids[modality]
    assert sum(1 for t in ids if t >= 512) == 32
    assert check_tokenization(tokenizer, turns, example)


def test_generation_prompt_ends_with_assistant_colon(tokenizer, signal_ids) -> None:
    turns = TWO_ROUNDS[:3]
    prompt = build_generation_prompt(tokenizer, turns)
    assert prompt == tokenizer(render_conversation(turns)).input_ids
    assert prompt[-len(encode_text(tokenizer, " ASSISTANT:")) :] == encode_text(tokenizer, " ASSISTANT:")
    assert tokenizer.decode(prompt, skip_special_tokens=True).endswith("ASSISTANT:")
    assert check_tokenization(tokenizer, turns, prompt)
    # the generation prompt is the training example's prefix: same rendering of earlier turns
    training = build_training_example(tokenizer, TWO_ROUNDS, signal_ids)
    assert training.input_ids[: len(prompt)] == prompt


def test_generation_prompt_renders_earlier_signal_ids(tokenizer, signal_ids) -> None:
    turns = [Turn("user", "draw a star"), Turn("assistant", "Done. <image>"), Turn("user", "<image> now a video")]
    prompt = build_generation_prompt(tokenizer, turns)
    start = prompt.index(signal_ids[Modality.IMAGE][0])
    assert prompt[start : start + 4] == signal_ids[Modality.IMAGE]
    assert SENTINEL_IDS[Modality.IMAGE] in prompt
    assert prompt == build_generation_prompt(tokenizer, turns, signal_ids)
    assert check_tokenization(tokenizer, turns, prompt)


@pytest.mark.parametrize(
    "turns",
    [
        [Turn("user", "hi"), Turn("assistant", "Hello! How can I help you?")],
        [Turn("user", "  spaces  around  "), Turn("assistant", "  odd  spacing ")],
        [Turn("user", "line one\nline two\n"), Turn("assistant", "\nok\n")],
        [Turn("user", "ünïcödé 東京 ✓"), Turn("assistant", "émoji 🙂 reply")],
        [Turn("user", "<video>"), Turn("assistant", "<image>")],
        [Turn("user", "a<image>b"), Turn("assistant", "x<audio>y"), Turn("user", "again"), Turn("assistant", "")],
    ],
)
@pytest.mark.parametrize("fixture_name", ["tiny_llm_dir", "legacy_llm_dir"])
def test_check_tokenization_true_on_ordinary_conversations(request, signal_cfg, fixture_name, turns) -> None:
    tokenizer = load_tokenizer(request.getfixturevalue(fixture_name), signal_cfg)
    ids = signal_token_ids(tokenizer, signal_cfg)
    example = build_training_example(tokenizer, turns, ids)
    assert check_tokenization(tokenizer, turns, example, ids)
    assert check_tokenization(tokenizer, turns[:-1], build_generation_prompt(tokenizer, turns[:-1], ids), ids)


def test_check_tokenization_flags_control_strings_and_wrong_ids(tokenizer, signal_ids) -> None:
    turns = [Turn("user", "say </s> please"), Turn("assistant", "no")]
    example = build_training_example(tokenizer, turns, signal_ids)
    assert tokenizer.eos_token_id not in example.input_ids[:-1]  # the forged EOS stayed text
    assert not check_tokenization(tokenizer, turns, example)  # whole-string tokenisation would read it as EOS
    good = build_training_example(tokenizer, TWO_ROUNDS, signal_ids)
    broken = Example(input_ids=good.input_ids[:-2] + good.input_ids[-1:], labels=good.labels[:-1])
    assert not check_tokenization(tokenizer, TWO_ROUNDS, broken)


@pytest.mark.parametrize(
    "turns,match",
    [
        ([], "at least one turn"),
        ([Turn("assistant", "hi")], "turn 0 must have role 'user'"),
        ([Turn("user", "a"), Turn("user", "b")], "turn 1 must have role 'assistant'"),
        ([Turn("user", "a"), Turn("assistant", "b"), Turn("assistant", "c")], "turn 2 must have role 'user'"),
        ([Turn("user", "a")], "training example must end with a 'assistant' turn"),
    ],
)
def test_bad_turn_order_raises(tokenizer, signal_ids, turns, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_training_example(tokenizer, turns, signal_ids)


def test_generation_prompt_needs_a_final_user_turn(tokenizer) -> None:
    with pytest.raises(ValueError, match="generation prompt must end with a 'user' turn"):
        build_generation_prompt(tokenizer, TWO_ROUNDS)


def test_assistant_placeholder_without_signal_ids_raises(tokenizer) -> None:
    turns = [Turn("user", "draw"), Turn("assistant", "<image>")]
    with pytest.raises(ValueError, match="no image signal tokens"):
        build_training_example(tokenizer, turns, {Modality.VIDEO: [520]})
