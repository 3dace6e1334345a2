"""Tool metrics on hand-written replies: accuracy against every right tool, hallucination against the library,
format accuracy, recall@k, the per-modality and per-ambiguity groups, and the Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.data.tool_records import ToolExample
from nextgpt.eval.tools import score_tool_replies, tool_report_markdown, write_tool_report
from nextgpt.tiny.tools import tiny_tool_library

EXAMPLES = [
    ToolExample("image", Path("a.png"), "Name the colour.", ["tiny/colour-namer", "tiny/hue-reader"], 1),
    ToolExample("audio", Path("a.wav"), "How high?", ["tiny/pitch-meter"]),
    ToolExample("text", None, "Translate this.", ["unknown"]),
    ToolExample("text", None, "Draw a cat.", ["nextgpt/image-decoder"]),
]


def test_scores_follow_the_definitions():
    replies = [
        "{'api_name': tiny/hue-reader}",  # a synonym: right
        "{'api_name': tiny/pitch-meter-pro}",  # well formed, a tool that does not exist
        "{'api_name': unknown}",  # right, never a hallucination
        "nextgpt/image-decoder",  # right tool, wrong format
    ]
    metrics = score_tool_replies(EXAMPLES, replies, tiny_tool_library())
    overall = metrics["overall"]
    assert overall["num_examples"] == 4
    assert overall["accuracy"] == pytest.approx(0.75)
    assert overall["hallucination_rate"] == pytest.approx(0.25)
    assert overall["format_accuracy"] == pytest.approx(0.75)
    assert overall["chance"] == pytest.approx((2 + 1 + 1 + 1) / 9 / 4)
    assert metrics["by_modality"]["audio"]["hallucination_rate"] == 1.0
    assert metrics["by_modality"]["text"]["accuracy"] == 1.0
    assert metrics["by_ambiguity"]["type_1"]["num_examples"] == 1
    assert metrics["by_ambiguity"]["none"]["num_examples"] == 3


def test_recall_at_k_reads_a_listed_reply_in_order():
    reply = "{'api_name': [tiny/shape-counter, tiny/colour-namer, tiny/hue-reader]}"
    metrics = score_tool_replies(EXAMPLES[:1], [reply], tiny_tool_library())
    assert metrics["overall"]["accuracy"] == 0.0
    assert metrics["overall"]["recall@1"] == 0.0 and metrics["overall"]["recall@3"] == 1.0


def test_the_report_is_json_plus_a_markdown_table(tmp_path: Path):
    trained = score_tool_replies(EXAMPLES, ["{'api_name': tiny/colour-namer}"] * 4, tiny_tool_library())
    untrained = score_tool_replies(EXAMPLES, ["a red circle"] * 4, tiny_tool_library())
    json_path, md_path = write_tool_report({"trained": trained, "untrained": untrained}, tmp_path / "tools.json")
    assert json.loads(json_path.read_text())["untrained"]["overall"]["hallucination_rate"] == 1.0
    table = md_path.read_text()
    assert (
        "| model | group | n | accuracy | hallucination_rate | format_accuracy | recall@1 | recall@3 | chance |"
        in table
    )
    assert "| trained | overall | 4 | 0.250 | 0.000 | 1.000 |" in table
    assert "| untrained | ambiguity: type_1 | 1 |" in table
    assert tool_report_markdown(trained).count("\n| - |") == 1 + 3 + 2


def test_one_reply_per_example():
    with pytest.raises(ValueError, match="one reply per example"):
        score_tool_replies(EXAMPLES, ["x"], tiny_tool_library())
