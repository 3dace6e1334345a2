"""Run the tool a model chose, locally: a Python function the tool file names, one of the project's decoders, or a
local transformers / diffusers pipeline folder.

Only what the tool library says runs: a tool id the model invents is reported ("not in the tool library"), never
looked up anywhere else; a callable is imported by the exact `package.module:function` the library file names; a
pipeline folder loads with local files only and without remote code. "unknown" (no tool fits) runs nothing.

    registry = ToolRegistry(load_tool_library(Path("tools.json")), decoders=pipeline.decoders)
    run = registry.run("tiny/shape-counter", "How many shapes?", [(Modality.IMAGE, Path("shapes.png"))], out_dir)
    run.status, run.text                                  # "ran", "3 shapes"
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nextgpt.constants import Modality
from nextgpt.tools.answers import UNKNOWN_TOOL
from nextgpt.tools.library import ToolLibrary, ToolSpec

logger = logging.getLogger(__name__)

RunStatus = Literal["ran", "unknown", "no_tool", "not_in_library", "not_runnable", "failed"]
ToolFunction = Callable[[str, list[Path]], Any]


@dataclass
class ToolRun:
    """What happened to a chosen tool.

    Attributes:
        tool: the chosen tool id (None when the reply named none).
        status: "ran"; "unknown" (the model said no tool fits); "no_tool" (the reply named none); "not_in_library"
            (an id outside the library: not run); "not_runnable" (in the library, without a runner); "failed".
        message: one line for people.
        text: the tool's text output, if any.
        files: files the tool wrote.
    """

    tool: str | None
    status: RunStatus
    message: str
    text: str | None = None
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (paths as strings)."""
        return {
            "tool": self.tool,
            "status": self.status,
            "message": self.message,
            "text": self.text,
            "files": [str(p) for p in self.files],
        }


def import_callable(target: str) -> ToolFunction:
    """The function named `package.module:function` (as checked by the library loader).

    Raises:
        ValueError: the module or function does not exist, or is not callable.
    """
    module_name, _, attribute = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"tool callable {target!r} cannot be imported ({err}); fix the tool file") from err
    if not callable(function):
        raise ValueError(f"tool callable {target!r} is not a function")
    return function


class ToolRegistry:
    """Tool id -> something that runs here, from one tool library.

    Args:
        library: the tool library.
        decoders: the project's decoders by modality (e.g. a `DecoderPool`), for tools with a `decoder` runner.
        seed: seed of the decoders' noise.
    """

    def __init__(self, library: ToolLibrary, decoders: Mapping[Modality, Any] | None = None, seed: int = 0):
        self.library = library
        self.decoders = decoders
        self.seed = seed
        self._functions: dict[str, ToolFunction] = {}
        self._pipelines: dict[str, Any] = {}

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self.library

    def run(
        self,
        tool: str | None,
        request: str,
        inputs: Sequence[tuple[Modality, Path]],
        output_dir: Path,
        prefix: str = "tool",
    ) -> ToolRun:
        """Run `tool` on the user's request and media, or say why it did not run.

        Args:
            tool: the chosen id (e.g. `ToolAnswer.first`).
            request: the user's text.
            inputs: the user's media files.
            output_dir: where a tool that makes media writes it.
            prefix: file name prefix of written media.

        Returns:
            The outcome; errors of the tool itself become status "failed" with their message.
        """
        if tool is None:
            return ToolRun(None, "no_tool", "the reply names no tool")
        if tool == UNKNOWN_TOOL:
            return ToolRun(tool, "unknown", "the model answered that no tool in the library does this")
        spec = self.library.get(tool)
        if spec is None:
            return ToolRun(tool, "not_in_library", f"'{tool}' is not in the tool library; it was not run")
        if spec.runner is None:
            return ToolRun(tool, "not_runnable", f"'{tool}' has no callable, decoder or pipeline in the tool file")
        files = [path for modality, path in inputs if modality.value == spec.input_modality]
        if spec.input_modality != "text" and not files:
            return ToolRun(tool, "failed", f"'{tool}' reads {spec.input_modality}, and the request has none")
        try:
            return self._dispatch(spec, request, files, Path(output_dir), prefix)
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            logger.warning("tool %s failed: %s", tool, err)
            return ToolRun(tool, "failed", f"'{tool}' failed: {err}")

    def _dispatch(self, spec: ToolSpec, request: str, files: list[Path], output_dir: Path, prefix: str) -> ToolRun:
        if spec.callable is not None:
            function = self._functions.get(spec.callable) or import_callable(spec.callable)
            self._functions[spec.callable] = function
            text = str(function(request, files))
            return ToolRun(spec.id, "ran", f"ran {spec.id}", text=text)
        if spec.decoder is not None:
            return self._run_decoder(spec, request, output_dir, prefix)
        return self._run_pipeline(spec, request, files, output_dir, prefix)

    def _run_decoder(self, spec: ToolSpec, request: str, output_dir: Path, prefix: str) -> ToolRun:
        """One of the project's decoders, conditioned on the request through its own text encoder."""
        from nextgpt.inference.media_io import save_outputs

        modality = Modality(spec.decoder)
        if self.decoders is None or modality not in self.decoders:
            return ToolRun(spec.id, "not_runnable", f"'{spec.id}' needs the {modality.value} decoder, which is not set")
        decoder = self.decoders[modality]
        media = decoder.generate(decoder.encode_captions([request]), seed=self.seed)
        sample_rate = getattr(self.decoders, "sample_rate", None) or getattr(decoder, "sample_rate", None)
        saved = save_outputs({modality: media}, output_dir, prefix, sample_rate)
        return ToolRun(spec.id, "ran", f"ran {spec.id}", files=[item.path for item in saved])

    def _pipeline(self, spec: ToolSpec) -> Any:
        pipe = self._pipelines.get(spec.id)
        if pipe is not None:
            return pipe
        folder = spec.pipeline.path
        if not folder.is_dir():
            raise ValueError(f"pipeline folder {folder} does not exist; fix the tool file's pipeline.path")
        if spec.pipeline.library == "transformers":
            from transformers import pipeline

            pipe = pipeline(spec.pipeline.task, model=str(folder), trust_remote_code=False)
        else:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        self._pipelines[spec.id] = pipe
        return pipe

    def _run_pipeline(self, spec: ToolSpec, request: str, files: list[Path], output_dir: Path, prefix: str) -> ToolRun:
        """A local pipeline folder: transformers reads the request (text tools) or the file; diffusers draws."""
        pipe = self._pipeline(spec)
        if spec.pipeline.library == "transformers":
            result = pipe(request if spec.input_modality == "text" else str(files[0]))
            return ToolRun(spec.id, "ran", f"ran {spec.id}", text=_as_text(result))
        from nextgpt.inference.media_io import save_outputs

        images = pipe(request, output_type="np").images  # (N, H, W, 3) floats in [0, 1]
        arrays = [(image * 255).round().clip(0, 255).astype("uint8") for image in images]
        saved = save_outputs({Modality.IMAGE: arrays}, output_dir, prefix)
        return ToolRun(spec.id, "ran", f"ran {spec.id}", files=[item.path for item in saved])


def _as_text(result: Any) -> str:
    """A transformers pipeline's output as one line (the generated text, the top label, or the whole object)."""
    item = result[0] if isinstance(result, list) and result else result
    if isinstance(item, dict):
        for key in ("generated_text", "text", "label", "answer"):
            if key in item:
                return str(item[key])
    return str(result)
