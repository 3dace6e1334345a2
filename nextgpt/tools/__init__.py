"""Tool use (MLLM-Tool / ToolMMBench): the tool library, the answer format, and running a chosen tool locally.

library = load_tool_library(Path("data/tools/tools.json"))
parse_tool_answer("{'api_name': MIT/ast-finetuned-speech-commands-v2}").tools   # ['MIT/ast-...']
"""

from nextgpt.tools.answers import UNKNOWN_TOOL, ToolAnswer, format_tool_answer, parse_tool_answer
from nextgpt.tools.library import ToolLibrary, ToolSpec, load_tool_library

__all__ = [
    "UNKNOWN_TOOL",
    "ToolAnswer",
    "ToolLibrary",
    "ToolSpec",
    "format_tool_answer",
    "load_tool_library",
    "parse_tool_answer",
]
