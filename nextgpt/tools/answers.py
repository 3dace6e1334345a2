"""The assistant's tool answer as MLLM-Tool trains it: `{'api_name': <tool id>}`, and its parser.

MLLM-Tool's training code (`build_one_instance`) writes the gold tool of a record as `"{'api_name': " + tool + "}"`
(the tool id unquoted) and its evaluation keeps the first line of the reply. The same text is the training target
here, so a reply's format is checkable: a well-formed answer is exactly one such object on the first line. A reply
may list several tools (`{'api_name': [a, b]}`, or `a, b`), which the recall@k metric reads in order.

    format_tool_answer("tiny/shape-counter")                  # "{'api_name': tiny/shape-counter}"
    parse_tool_answer("{'api_name': [tiny/a, tiny/b]}")      # ToolAnswer(tools=['tiny/a', 'tiny/b'], well_formed=True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

UNKNOWN_TOOL = "unknown"
"""ToolMMBench's answer when no tool of the library does what is asked (spelled in lower case in the released
files); it is a right answer, never a tool to run, and never a hallucination."""

_ANSWER = re.compile(r"^\s*\{\s*['\"]?api_name['\"]?\s*:\s*(?P<value>.*?)\s*\}\s*$")
_QUOTES = "'\""


@dataclass(frozen=True)
class ToolAnswer:
    """A reply read as a tool choice.

    Attributes:
        tools: the named tools in order (several when the reply lists them); empty when it names none.
        well_formed: the first line is exactly `{'api_name': ...}` naming at least one tool.
    """

    tools: list[str] = field(default_factory=list)
    well_formed: bool = False

    @property
    def first(self) -> str | None:
        """The first named tool (the choice), or None."""
        return self.tools[0] if self.tools else None


def format_tool_answer(tool: str) -> str:
    """The training target for one right tool: `{'api_name': <tool>}` (MLLM-Tool's spelling)."""
    return "{'api_name': " + tool + "}"


def _split_names(value: str) -> list[str]:
    """Tool names of an api_name value: one id, or a `[a, b]` / `a, b` list; quotes around names are dropped."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    names = [part.strip().strip(_QUOTES).strip() for part in value.split(",")]
    return [name for name in names if name]


def parse_tool_answer(reply: str) -> ToolAnswer:
    """Read the tool(s) a reply chooses.

    Only the reply's first non-empty line counts (MLLM-Tool's evaluation keeps `output.split("\\n")[0]`). A line
    that is not `{'api_name': ...}` is not well formed; its text is still read as a list of names, so that a
    hallucinated id is counted as one.

    Args:
        reply: the generated text.

    Returns:
        The named tools and whether the format was kept.
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    match = _ANSWER.match(first)
    if match:
        tools = _split_names(match.group("value"))
        return ToolAnswer(tools, well_formed=bool(tools))
    return ToolAnswer(_split_names(first), well_formed=False)
