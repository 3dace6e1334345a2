"""The tool answer format: MLLM-Tool's `{'api_name': <id>}` target, lists for recall@k, and malformed replies."""

from __future__ import annotations

from nextgpt.tools.answers import format_tool_answer, parse_tool_answer


def test_the_training_target_parses_back_to_its_tool():
    answer = parse_tool_answer(format_tool_answer("MIT/ast-finetuned-speech-commands-v2") + "\n###")
    assert answer.tools == ["MIT/ast-finetuned-speech-commands-v2"] and answer.well_formed


def test_a_listed_answer_keeps_its_order_and_drops_quotes():
    answer = parse_tool_answer("{'api_name': ['a/b', \"c/d\", e]}")
    assert answer.tools == ["a/b", "c/d", "e"] and answer.well_formed and answer.first == "a/b"


def test_free_text_is_not_well_formed_but_still_names_what_it_says():
    answer = parse_tool_answer("You could use whisper\n{'api_name': x}")
    assert not answer.well_formed and answer.tools == ["You could use whisper"]
    assert parse_tool_answer("").tools == [] and parse_tool_answer("{'api_name': }").well_formed is False
