"""The tool library file shared by training (gold ids are checked against it), evaluation (hallucination = a named
tool that is not in it) and inference (what may run, and how).

A JSON file `{"tools": [...]}`; each tool has an `id` (a HuggingFace model id in ToolMMBench), the modality it reads
and writes, a one-line description, and at most one way to run it locally:

    {"id": "tiny/shape-counter", "input_modality": "image", "output_modality": "text",
     "description": "Counts the shapes in a picture.", "callable": "nextgpt.tiny.tools:count_shapes"}
    {"id": "nextgpt/image-decoder", "input_modality": "text", "output_modality": "image",
     "description": "Draws a picture of the request.", "decoder": "image"}
    {"id": "my/asr", "input_modality": "audio", "output_modality": "text", "description": "Speech to text.",
     "pipeline": {"path": "models/whisper-tiny", "library": "transformers", "task": "automatic-speech-recognition"}}

A tool without a runner can be chosen (and scored) but not run. `library = load_tool_library(path)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nextgpt.tools.answers import UNKNOWN_TOOL

ToolModality = Literal["text", "image", "video", "audio"]
TOOL_MODALITIES: tuple[str, ...] = ("text", "image", "video", "audio")
PIPELINE_LIBRARIES = ("transformers", "diffusers")
_CALLABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_FIELDS = {"id", "input_modality", "output_modality", "description", "callable", "decoder", "pipeline"}


@dataclass(frozen=True)
class PipelineSpec:
    """A local transformers / diffusers pipeline folder (loaded with local files only, no remote code)."""

    path: Path
    library: Literal["transformers", "diffusers"] = "transformers"
    task: str | None = None
    """transformers' pipeline task (e.g. "audio-classification"); None reads it from the folder's config."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool of the library.

    Attributes:
        id: the name the model answers with.
        input_modality: what it reads besides the request text ("text" for text alone).
        output_modality: what it makes.
        description: one line.
        callable: `package.module:function` to run (called with the request and the input files).
        decoder: one of the project's decoders ("image", "video", "audio"), run on the request text.
        pipeline: a local pipeline folder.
    """

    id: str
    input_modality: ToolModality
    output_modality: ToolModality
    description: str
    callable: str | None = None
    decoder: Literal["image", "video", "audio"] | None = None
    pipeline: PipelineSpec | None = None

    @property
    def runner(self) -> str | None:
        """ "callable", "decoder", "pipeline", or None when the tool cannot run here."""
        return next((name for name in ("callable", "decoder", "pipeline") if getattr(self, name) is not None), None)


@dataclass
class ToolLibrary:
    """The tools by id, in file order.

    Attributes:
        tools: id -> spec.
        path: the file it was read from, if any.
    """

    tools: dict[str, ToolSpec] = field(default_factory=dict)
    path: Path | None = None

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def get(self, tool_id: str) -> ToolSpec | None:
        """The spec of `tool_id`, or None."""
        return self.tools.get(tool_id)

    def is_known_answer(self, name: str) -> bool:
        """A library tool or the "unknown" answer: anything else a model names is a hallucination."""
        return name == UNKNOWN_TOOL or name in self.tools

    def to_json(self) -> dict[str, Any]:
        """The file content (`{"tools": [...]}`), paths relative to nothing (as given)."""
        return {"tools": [_spec_json(spec) for spec in self.tools.values()]}


def _spec_json(spec: ToolSpec) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": spec.id,
        "input_modality": spec.input_modality,
        "output_modality": spec.output_modality,
        "description": spec.description,
    }
    if spec.callable is not None:
        data["callable"] = spec.callable
    if spec.decoder is not None:
        data["decoder"] = spec.decoder
    if spec.pipeline is not None:
        data["pipeline"] = {"path": str(spec.pipeline.path), "library": spec.pipeline.library}
        if spec.pipeline.task is not None:
            data["pipeline"]["task"] = spec.pipeline.task
    return data


def _pipeline(where: str, value: Any, folder: Path) -> PipelineSpec:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("path"), str)
        or set(value) - {"path", "library", "task"}
    ):
        raise ValueError(f"{where}.pipeline must be {{path, library?, task?}} with a string path, got {value!r}")
    library = value.get("library", "transformers")
    if library not in PIPELINE_LIBRARIES:
        raise ValueError(f"{where}.pipeline.library must be one of {list(PIPELINE_LIBRARIES)}, got {library!r}")
    task = value.get("task")
    if task is not None and not isinstance(task, str):
        raise ValueError(f"{where}.pipeline.task must be a string, got {task!r}")
    path = Path(value["path"])
    return PipelineSpec(path if path.is_absolute() else folder / path, library, task)


def parse_tool(entry: Any, where: str, folder: Path) -> ToolSpec:
    """One library entry, checked.

    Args:
        entry: the JSON object.
        where: its position, for messages ("tools.json: tools[3]").
        folder: the library file's folder (relative pipeline paths resolve against it).

    Raises:
        ValueError: a missing or unknown field, a bad modality, a callable that is not `module:function`, or more
            than one runner.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with id, input_modality, output_modality, description")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    tool_id = entry.get("id")
    if not isinstance(tool_id, str) or not tool_id.strip() or tool_id != tool_id.strip() or "\n" in tool_id:
        raise ValueError(f"{where}.id must be a non-empty string without surrounding spaces, got {tool_id!r}")
    if tool_id == UNKNOWN_TOOL:
        raise ValueError(f"{where}.id {UNKNOWN_TOOL!r} is the reserved 'no tool fits' answer; rename the tool")
    for key in ("input_modality", "output_modality"):
        if entry.get(key) not in TOOL_MODALITIES:
            raise ValueError(f"{where}.{key} must be one of {list(TOOL_MODALITIES)}, got {entry.get(key)!r}")
    if not isinstance(entry.get("description"), str):
        raise ValueError(f"{where}.description must be a string (one line saying what the tool does)")
    runners = [key for key in ("callable", "decoder", "pipeline") if entry.get(key) is not None]
    if len(runners) > 1:
        raise ValueError(f"{where} names {runners}; give at most one way to run the tool")
    target = entry.get("callable")
    if target is not None and (not isinstance(target, str) or not _CALLABLE.match(target)):
        raise ValueError(f"{where}.callable must be 'package.module:function', got {target!r}")
    decoder = entry.get("decoder")
    if decoder is not None and decoder not in ("image", "video", "audio"):
        raise ValueError(f"{where}.decoder must be image, video or audio, got {decoder!r}")
    pipeline = entry.get("pipeline")
    return ToolSpec(
        id=tool_id,
        input_modality=entry["input_modality"],
        output_modality=entry["output_modality"],
        description=entry["description"],
        callable=target,
        decoder=decoder,
        pipeline=None if pipeline is None else _pipeline(where, pipeline, folder),
    )


def load_tool_library(path: Path) -> ToolLibrary:
    """Read and check a tool library file.

    Args:
        path: the JSON file (`{"tools": [...]}` or a bare list).

    Returns:
        The library, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, a bad entry (see `parse_tool`) or a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tool library {path} does not exist; pass the tools JSON file (--tools)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"tool library {path} is not valid JSON ({err})") from err
    entries = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f'tool library {path} must hold {{"tools": [...]}} or a list of tools')
    library = ToolLibrary(path=path)
    for index, entry in enumerate(entries):
        spec = parse_tool(entry, f"{path.name}: tools[{index}]", path.parent)
        if spec.id in library.tools:
            raise ValueError(f"{path.name}: tools[{index}] repeats the id {spec.id!r}; ids must be unique")
        library.tools[spec.id] = spec
    return library


def write_tool_library(library: ToolLibrary, path: Path) -> Path:
    """Write a library as `{"tools": [...]}` JSON; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(library.to_json(), indent=1) + "\n", encoding="utf-8")
    return path
