"""The tiny world's tools: small readers of its media (shape counter, colour namer, motion reader, pitch meter) and
the library that names them next to the project's own decoders (text -> image / video / audio are tools too).

Each reader is a plain function `(request, inputs) -> str` that the tool registry imports by the
`package.module:function` path the library file names; it reads the files the user sent.

    write_tiny_tool_library(Path("data/tiny/tools/tools.json"))
    count_shapes("How many shapes?", [Path("two_squares.png")])   # "2 shapes"
"""

from __future__ import annotations

import math
import wave
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nextgpt.tiny.data import COLOURS, PITCHES
from nextgpt.tools.library import ToolLibrary, ToolSpec, write_tool_library

BACKGROUND_DISTANCE = 60
"""A pixel belongs to a shape when its RGB distance from the plain grey background exceeds this."""
_BACKGROUND = np.array((235, 235, 235), dtype=np.float32)

SHAPE_COUNTER = "tiny/shape-counter"
COLOUR_NAMER = "tiny/colour-namer"
HUE_READER = "tiny/hue-reader"
MOTION_READER = "tiny/motion-reader"
PITCH_METER = "tiny/pitch-meter"
IMAGE_DECODER = "nextgpt/image-decoder"
VIDEO_DECODER = "nextgpt/video-decoder"
AUDIO_DECODER = "nextgpt/audio-decoder"


def tiny_tool_library() -> ToolLibrary:
    """The tiny world's library: four media readers (colour naming twice, under two names: synonymous tools) and the
    three decoders."""
    module = __name__
    specs = [
        ToolSpec(SHAPE_COUNTER, "image", "text", "Counts the shapes in a picture.", f"{module}:count_shapes"),
        ToolSpec(
            COLOUR_NAMER, "image", "text", "Names the colour of the shapes in a picture.", f"{module}:name_colour"
        ),
        ToolSpec(HUE_READER, "image", "text", "Reads the hue of a picture's shapes.", f"{module}:name_colour"),
        ToolSpec(MOTION_READER, "video", "text", "Tells which way the shape in a clip moves.", f"{module}:read_motion"),
        ToolSpec(PITCH_METER, "audio", "text", "Measures the pitch of a tone.", f"{module}:measure_pitch"),
        ToolSpec(IMAGE_DECODER, "text", "image", "Draws a picture of what the request describes.", decoder="image"),
        ToolSpec(VIDEO_DECODER, "text", "video", "Makes a short clip of what the request describes.", decoder="video"),
        ToolSpec(AUDIO_DECODER, "text", "audio", "Makes a sound of what the request describes.", decoder="audio"),
    ]
    return ToolLibrary({spec.id: spec for spec in specs})


def write_tiny_tool_library(path: Path) -> Path:
    """Write `tiny_tool_library()` as a tool file; returns `path`."""
    return write_tool_library(tiny_tool_library(), path)


def _one_input(inputs: Sequence[Path], what: str) -> Path:
    if len(inputs) != 1:
        raise ValueError(f"{what} reads exactly one file, got {len(inputs)}")
    return Path(inputs[0])


def _foreground(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: pixels far from the background grey."""
    return np.linalg.norm(pixels.astype(np.float32) - _BACKGROUND, axis=-1) > BACKGROUND_DISTANCE


def _count_components(mask: np.ndarray) -> int:
    """4-connected regions of a boolean mask (breadth-first; the tiny images are 64x64)."""
    seen = np.zeros_like(mask)
    height, width = mask.shape
    count = 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        count += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


def count_shapes(request: str, inputs: Sequence[Path]) -> str:
    """Count the separate shapes in an image, e.g. "3 shapes"."""
    pixels = np.asarray(Image.open(_one_input(inputs, "the shape counter")).convert("RGB"))
    count = _count_components(_foreground(pixels))
    return f"{count} shape" + ("" if count == 1 else "s")


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(np.linalg.norm(np.array(COLOURS[name], dtype=np.float32) - rgb)))


def name_colour(request: str, inputs: Sequence[Path]) -> str:
    """Name the colour of an image's shapes (the tiny world's palette), e.g. "red"."""
    pixels = np.asarray(Image.open(_one_input(inputs, "the colour namer")).convert("RGB"))
    mask = _foreground(pixels)
    if not mask.any():
        return "no shape"
    return _nearest_colour(pixels[mask].astype(np.float32).mean(axis=0))


def _centre(frame: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(_foreground(frame))
    return None if len(xs) == 0 else np.array([xs.mean(), ys.mean()])


def read_motion(request: str, inputs: Sequence[Path]) -> str:
    """Which way the shape of a clip moves (left, right, up or down), from its first and last frames."""
    import av

    with av.open(str(_one_input(inputs, "the motion reader"))) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    centres = [c for c in (_centre(f) for f in frames) if c is not None]
    if len(centres) < 2:
        return "no motion"
    dx, dy = centres[-1] - centres[0]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def measure_pitch(request: str, inputs: Sequence[Path]) -> str:
    """The dominant frequency of a WAV tone and the tiny world's word for it, e.g. "880 Hz (high)"."""
    with wave.open(str(_one_input(inputs, "the pitch meter")), "rb") as handle:
        rate, width = handle.getframerate(), handle.getsampwidth()
        frames = handle.readframes(handle.getnframes())
    if width != 2:
        raise ValueError(f"the pitch meter reads 16-bit WAV files, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32)
    spectrum = np.abs(np.fft.rfft(samples))
    hertz = float(np.fft.rfftfreq(len(samples), 1.0 / rate)[int(spectrum[1:].argmax()) + 1])
    word = min(PITCHES, key=lambda name: abs(math.log(PITCHES[name] / max(hertz, 1.0))))
    return f"{hertz:.0f} Hz ({word})"
