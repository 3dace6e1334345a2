"""Tool-use metrics (MLLM-Tool / ToolMMBench): accuracy against every right tool, hallucination and format accuracy,
per input modality and per ambiguity type, and recall@k when a reply lists several tools.

- accuracy: the reply's first named tool is one of the example's right tools ("unknown" included);
- hallucination rate: the first named tool is neither in the tool library nor "unknown" (a tool that does not exist);
- format accuracy: the reply's first line is exactly `{'api_name': ...}` (the trained answer format);
- recall@k: right tools among the first k named, over min(k, number of right tools).

`score_tool_replies` is pure (examples + replies + library -> metrics); `evaluate_tool_use` generates the replies
greedily on held-out records; `tool_report_markdown` / `write_tool_report` turn the metrics into a table and files.

    metrics = evaluate_tool_use(model, cfg, catalog, library, ["tool_image_eval", "tool_text_eval"])
    json_path, md_path = write_tool_report(metrics, Path("runs/tools/eval_tools.json"))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nextgpt.config import Config, DatasetEntryConfig
from nextgpt.constants import Modality
from nextgpt.data.records import load_records
from nextgpt.data.tool_records import NO_AMBIGUITY, ToolExample, group_tool_records
from nextgpt.eval.heldout import EvalDatasets, catalog_entry, greedy_generation, load_input_media
from nextgpt.tools.answers import UNKNOWN_TOOL, ToolAnswer, parse_tool_answer
from nextgpt.tools.library import ToolLibrary, load_tool_library

logger = logging.getLogger(__name__)

RECALL_KS = (1, 3)
NUM_EXAMPLES = 5
HEADLINE = ("accuracy", "hallucination_rate", "format_accuracy")


def ambiguity_name(code: int) -> str:
    """Report key of an ambiguity code: "none" for -1, else "type_<n>" (the released files give numbers only)."""
    return "none" if code == NO_AMBIGUITY else f"type_{code}"


def _score_one(example: ToolExample, answer: ToolAnswer, library: ToolLibrary, ks: Sequence[int]) -> dict[str, float]:
    right = set(example.right_tools)
    first = answer.first
    scores = {
        "accuracy": float(first in right),
        "hallucination_rate": float(first is not None and not library.is_known_answer(first)),
        "format_accuracy": float(answer.well_formed),
        "chance": len(right & ({UNKNOWN_TOOL} | set(library.tools))) / (len(library) + 1),
    }
    named = list(dict.fromkeys(answer.tools))
    for k in ks:
        scores[f"recall@{k}"] = len(right & set(named[:k])) / min(k, len(right))
    return scores


def _mean(rows: list[dict[str, float]]) -> dict[str, Any]:
    if not rows:
        return {"num_examples": 0}
    return {"num_examples": len(rows), **{key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}}


def score_tool_replies(
    examples: Sequence[ToolExample], replies: Sequence[str], library: ToolLibrary, ks: Sequence[int] = RECALL_KS
) -> dict[str, Any]:
    """Score one reply per example.

    Args:
        examples: grouped held-out examples (`group_tool_records`), each with every right tool.
        replies: the generated text for each example, in order.
        library: the tool library (a named tool outside it, other than "unknown", is a hallucination).
        ks: the k of recall@k.

    Returns:
        {"overall", "by_modality": {text, image, video, audio}, "by_ambiguity": {"none", "type_<n>"}}, each
        {"num_examples", "accuracy", "hallucination_rate", "format_accuracy", "chance", "recall@k"...}; "chance" is
        the accuracy of a uniform pick among the library's tools and "unknown".

    Raises:
        ValueError: a different number of replies than examples.
    """
    if len(replies) != len(examples):
        raise ValueError(f"got {len(replies)} replies for {len(examples)} examples; give one reply per example")
    rows = [_score_one(e, parse_tool_answer(r), library, ks) for e, r in zip(examples, replies, strict=True)]
    by_modality: dict[str, list[dict[str, float]]] = {}
    by_ambiguity: dict[str, list[dict[str, float]]] = {}
    for example, row in zip(examples, rows, strict=True):
        by_modality.setdefault(example.input_modality, []).append(row)
        by_ambiguity.setdefault(ambiguity_name(example.ambiguity), []).append(row)
    return {
        "overall": _mean(rows),
        "by_modality": {name: _mean(group) for name, group in sorted(by_modality.items())},
        "by_ambiguity": {name: _mean(group) for name, group in sorted(by_ambiguity.items())},
    }


def load_tool_examples(
    catalog: dict[str, DatasetEntryConfig], names: Sequence[str], library: ToolLibrary, max_items: int | None = None
) -> list[ToolExample]:
    """The grouped examples of held-out tool datasets (at most `max_items` examples each); data problems are logged.

    Raises:
        ValueError: a name missing from the catalog, or an entry whose kind is not "tool".
    """
    examples: list[ToolExample] = []
    for name in names:
        entry = catalog_entry(catalog, name)
        if entry.kind != "tool":
            raise ValueError(f"evaluation dataset '{name}' has kind '{entry.kind}'; tool metrics read kind 'tool'")
        grouped, stats = group_tool_records(load_records(entry.annotation_path), entry, library)
        if stats.num_malformed or stats.not_in_library:
            logger.warning(
                "%s: %d malformed record(s) skipped (%s); right tools missing from the library: %s",
                name,
                stats.num_malformed,
                "; ".join(stats.malformed) or "-",
                stats.not_in_library or "none",
            )
        examples += grouped[:max_items] if max_items is not None else grouped
    return examples


def evaluate_tool_use(
    model: Any,
    cfg: Config,
    catalog: dict[str, DatasetEntryConfig],
    library: ToolLibrary,
    names: Sequence[str],
    max_items: int | None = None,
) -> dict[str, Any]:
    """Greedy replies to held-out tool requests, scored by `score_tool_replies`.

    Args:
        model: a NextGPT.
        cfg: its config (encoder preprocessing, generation settings; decoding is made greedy).
        catalog: with the held-out tool entries.
        library: the tool library.
        names: held-out catalog names (kind "tool").
        max_items: examples per dataset (None: all).

    Returns:
        The metrics plus "num_tools" (library size), "datasets" and a few "examples" (request, right tools, reply).
    """
    from nextgpt.inference.fast_decode import FastDecoder
    from nextgpt.inference.generation import generate_reply
    from nextgpt.llm.conversation import Turn

    examples = load_tool_examples(catalog, names, library, max_items)
    generation = greedy_generation(cfg.generation)
    decoder = FastDecoder(model.llm, cfg.model.llm.max_length + generation.max_new_tokens, generation.compile_decode)
    replies = []
    for example in examples:
        media_items = [] if example.media is None else [(Modality(example.input_modality), example.media)]
        media = load_input_media(media_items, cfg.model.encoder)
        turns = [Turn("user", example.user_text())]
        replies.append(generate_reply(model, turns, media, generation, fast_decoder=decoder).text)
    metrics = score_tool_replies(examples, replies, library)
    metrics["num_tools"] = len(library)
    metrics["datasets"] = list(names)
    metrics["examples"] = [
        {"input": e.input_modality, "request": e.request, "right_tools": e.right_tools, "reply": r}
        for e, r in list(zip(examples, replies, strict=True))[:NUM_EXAMPLES]
    ]
    overall = metrics["overall"]
    logger.info(
        "tool use: accuracy %s, hallucination %s, format %s over %d examples",
        overall.get("accuracy"),
        overall.get("hallucination_rate"),
        overall.get("format_accuracy"),
        overall["num_examples"],
    )
    return metrics


def evaluate_tools_metric(
    model: Any,
    cfg: Config,
    catalog: dict[str, DatasetEntryConfig],
    max_items: int | None,
    datasets: EvalDatasets | None,
) -> dict[str, Any]:
    """The "tools" metric of `nextgpt.eval.report`: the library is `data.tool_library_path`, the datasets
    `datasets.tools`.

    Raises:
        ValueError: `data.tool_library_path` is unset.
    """
    if cfg.data.tool_library_path is None:
        raise ValueError("tool metrics need the tool library: set data.tool_library_path (or pass --tools FILE)")
    library = load_tool_library(Path(cfg.data.tool_library_path))
    names = (datasets or EvalDatasets()).tools
    return evaluate_tool_use(model, cfg, catalog, library, names, max_items)


def _cell(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def tool_report_markdown(metrics: dict[str, Any], title: str = "Tool use") -> str:
    """A Markdown table of tool metrics (overall, per input modality, per ambiguity type), one row per group.

    Args:
        metrics: `score_tool_replies` / `evaluate_tool_use` output, or {"trained": ..., "untrained": ...} of them.
        title: the heading.
    """
    runs = metrics if "overall" not in metrics else {"": metrics}
    recall = sorted({k for run in runs.values() for k in run["overall"] if k.startswith("recall@")})
    columns = ["model", "group", "n", *HEADLINE, *recall, "chance"]
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for label, run in runs.items():
        groups = [("overall", run["overall"])]
        groups += [(f"input: {k}", v) for k, v in run.get("by_modality", {}).items()]
        groups += [(f"ambiguity: {k}", v) for k, v in run.get("by_ambiguity", {}).items()]
        for name, values in groups:
            cells = [label or "-", name, str(values.get("num_examples", 0))]
            cells += [_cell(values.get(key)) for key in (*HEADLINE, *recall, "chance")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tool_report(metrics: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write the metrics as JSON at `path` and the Markdown table next to it (`.md`); returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    markdown = path.with_suffix(".md")
    markdown.write_text(tool_report_markdown(metrics))
    return path, markdown
