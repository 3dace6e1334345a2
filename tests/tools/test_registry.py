"""Running a chosen tool: the tiny world's readers on its media, a project decoder on the request, a local
transformers pipeline folder; ids outside the library, "unknown" and missing inputs are reported and run nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nextgpt.constants import Modality
from nextgpt.tiny.data import write_audio, write_video
from nextgpt.tiny.tool_world import write_count_image
from nextgpt.tiny.tools import tiny_tool_library
from nextgpt.tools.library import PipelineSpec, ToolLibrary, ToolSpec
from nextgpt.tools.registry import ToolRegistry


@pytest.fixture()
def registry() -> ToolRegistry:
    return ToolRegistry(tiny_tool_library())


def test_the_tiny_readers_read_what_the_media_hold(registry: ToolRegistry, tmp_path: Path):
    image, video, audio = tmp_path / "s.png", tmp_path / "m.mp4", tmp_path / "t.wav"
    write_count_image(image, "blue", ["circle", "square", "triangle"])
    write_video(video, {"colour": "red", "shape": "square", "direction": "up"})
    write_audio(audio, {"pitch": "high", "rhythm": "steady"})
    runs = {
        "tiny/shape-counter": registry.run("tiny/shape-counter", "How many?", [(Modality.IMAGE, image)], tmp_path),
        "tiny/hue-reader": registry.run("tiny/hue-reader", "Which colour?", [(Modality.IMAGE, image)], tmp_path),
        "tiny/motion-reader": registry.run("tiny/motion-reader", "Where?", [(Modality.VIDEO, video)], tmp_path),
        "tiny/pitch-meter": registry.run("tiny/pitch-meter", "How high?", [(Modality.AUDIO, audio)], tmp_path),
    }
    assert {k: r.status for k, r in runs.items()} == dict.fromkeys(runs, "ran")
    assert [r.text for r in runs.values()] == ["3 shapes", "blue", "up", "880 Hz (high)"]


def test_ids_outside_the_library_and_unknown_run_nothing(registry: ToolRegistry, tmp_path: Path):
    assert registry.run("os:system", "rm -rf /", [], tmp_path).status == "not_in_library"
    assert registry.run("unknown", "Translate this.", [], tmp_path).status == "unknown"
    assert registry.run(None, "?", [], tmp_path).status == "no_tool"
    missing = registry.run("tiny/shape-counter", "How many?", [], tmp_path)
    assert missing.status == "failed" and "reads image" in missing.message
    no_decoders = registry.run("nextgpt/image-decoder", "Draw a cat.", [], tmp_path)
    assert no_decoders.status == "not_runnable" and "image decoder" in no_decoders.message
    assert list(tmp_path.iterdir()) == []


def test_a_decoder_tool_draws_the_request(tiny_cfg, tmp_path: Path):
    from nextgpt.inference.decoder_pool import DecoderPool

    registry = ToolRegistry(tiny_tool_library(), decoders=DecoderPool(tiny_cfg.model, "cpu"))
    run = registry.run("nextgpt/image-decoder", "a red circle on the left", [], tmp_path, prefix="draw")
    assert run.status == "ran" and run.files == [tmp_path / "draw-image-0.png"]
    assert np.asarray(Image.open(run.files[0])).shape == (32, 32, 3)


def test_a_local_transformers_pipeline_folder_runs(tiny_root: Path, tmp_path: Path):
    spec = ToolSpec(
        "local/writer",
        "text",
        "text",
        "Continues a text.",
        pipeline=PipelineSpec(tiny_root / "llm", "transformers", "text-generation"),
    )
    run = ToolRegistry(ToolLibrary({spec.id: spec})).run("local/writer", "a red circle", [], tmp_path)
    assert run.status == "ran" and run.text.startswith("a red circle")
