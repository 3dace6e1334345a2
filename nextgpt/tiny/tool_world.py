"""A synthetic ToolMMBench: the tiny tool library, media, and requests in MLLM-Tool's released record format.

Layout under the root (as the released data, plus a held-out split and a catalog):

    tools.json                                   the tool library (nextgpt.tiny.tools)
    IT_data_ins/T+X-T_data/{image,video,audio}_tx2t.json, text_t2t.json    training records
    IT_data_ins/T+X-T_data/*_eval.json           held-out records: new media, request wordings never trained on
    IT_data_ins/T+X-T_data/mm_dataset/{image,video,audio}/                  the media
    datasets.yaml                                catalog: tool_{image,video,audio,text}[_eval], kind "tool"

A request names its task with a key phrase inside a frame ("Can you count the shapes?"); the held-out split uses
phrases that recombine the training words ("count how many shapes there are"), so a model that learned which words
pick which tool (and, for the requests that could mean anything — "Analyse it." — which tool the input's modality
picks) scores well above chance on requests it has never seen. Colour requests have two right tools (the synonymous colour namer and hue
reader): two records, as the released files write several right tools.

    catalog = write_tool_world(Path("data/tiny/tools"), num_train=12, num_eval=4)
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

from nextgpt.tiny.data import (
    _BACKGROUND,
    COLOURS,
    DIRECTIONS,
    IMAGE_SIZE,
    PITCHES,
    RHYTHMS,
    SHAPES,
    _draw_shape,
    write_audio,
    write_video,
)
from nextgpt.tiny.tools import (
    AUDIO_DECODER,
    COLOUR_NAMER,
    HUE_READER,
    IMAGE_DECODER,
    MOTION_READER,
    PITCH_METER,
    SHAPE_COUNTER,
    VIDEO_DECODER,
    write_tiny_tool_library,
)
from nextgpt.tools.answers import UNKNOWN_TOOL

logger = logging.getLogger(__name__)

DATA_DIR = "IT_data_ins/T+X-T_data"
MEDIA_DIR = f"{DATA_DIR}/mm_dataset"
FILES = {"image": "image_tx2t.json", "video": "video_tx2t.json", "audio": "audio_tx2t.json", "text": "text_t2t.json"}
MODALITY_AMBIGUOUS = 1
"""The ambiguity code of the tiny world's requests that only the input's modality resolves ("Tell me about this.")."""
SLOTS = ((14, 14), (50, 14), (14, 50), (50, 50))
"""Shape centres of the counting images: corners far enough apart that no two shapes touch."""

Split = str


@dataclass(frozen=True)
class Task:
    """One kind of request: its key phrases (train / held-out) and its right tools."""

    modality: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]
    tools: tuple[str, ...]
    ambiguity: int = -1


TASKS: tuple[Task, ...] = (
    Task(
        "image",
        ("count the shapes", "tell me how many shapes there are"),
        ("count how many shapes there are",),
        (SHAPE_COUNTER,),
    ),
    Task(
        "image",
        ("name the colour of the shape", "tell me which colour the shape is"),
        ("name which colour the shape is",),
        (COLOUR_NAMER, HUE_READER),
    ),
    Task(
        "video",
        ("tell me which way the shape moves", "find the direction it moves in"),
        ("find which way the shape moves",),
        (MOTION_READER,),
    ),
    Task(
        "audio",
        ("measure the pitch of this tone", "tell me how high the tone is"),
        ("measure how high the tone is",),
        (PITCH_METER,),
    ),
    Task(
        "image", ("analyse this", "tell me about this"), ("analyse it",), (COLOUR_NAMER, HUE_READER), MODALITY_AMBIGUOUS
    ),
    Task("video", ("analyse this", "tell me about this"), ("analyse it",), (MOTION_READER,), MODALITY_AMBIGUOUS),
    Task("audio", ("analyse this", "tell me about this"), ("analyse it",), (PITCH_METER,), MODALITY_AMBIGUOUS),
    Task(
        "text",
        ("draw a picture of a {colour} {shape}", "make an image of a {colour} {shape}"),
        ("draw an image of a {colour} {shape}",),
        (IMAGE_DECODER,),
    ),
    Task(
        "text",
        ("make a video of a {colour} {shape} moving {direction}", "create a clip of a {colour} {shape}"),
        ("create a video of a {colour} {shape}",),
        (VIDEO_DECODER,),
    ),
    Task(
        "text",
        ("make a sound of a {pitch} tone", "play a {pitch} beep"),
        ("play a sound of a {pitch} tone",),
        (AUDIO_DECODER,),
    ),
    Task(
        "text",
        ("translate this sentence into French", "book a table for two tonight"),
        ("translate this sentence into German", "book a table for four tonight"),
        (UNKNOWN_TOOL,),
    ),
)
FRAMES = ("{p}.", "Please {p}.", "Can you {p}?", "I need help: {p}.")
"""Frames around a task phrase; held-out requests put the held-out phrases (the same key words, recombined) in them."""


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def write_count_image(path: Path, colour: str, shapes: list[str]) -> None:
    """A PNG with one shape per corner slot (1-4 shapes of one colour), for the shape counter and colour namer."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape, centre in zip(shapes, SLOTS, strict=False):
        _draw_shape(draw, shape, centre, COLOURS[colour])
    image.save(path)


def _write_media(root: Path, modality: str, name: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Write one item; returns its `*_path` value (relative as released) and its attributes."""
    if modality == "image":
        attrs = {
            "colour": rng.choice(sorted(COLOURS)),
            "shapes": [rng.choice(SHAPES) for _ in range(rng.randint(1, 3))],
        }
        write_count_image(root / MEDIA_DIR / "image" / f"{name}.png", attrs["colour"], attrs["shapes"])
        return f"{name}.png", attrs
    if modality == "video":
        attrs = {
            "colour": rng.choice(sorted(COLOURS)),
            "shape": rng.choice(SHAPES),
            "direction": rng.choice(sorted(DIRECTIONS)),
        }
        write_video(root / MEDIA_DIR / "video" / f"{name}.mp4", attrs)
        return f"video/{name}.mp4", attrs  # released video paths start with "video/" (read from mm_dataset/)
    attrs = {"pitch": rng.choice(sorted(PITCHES)), "rhythm": rng.choice(RHYTHMS)}
    write_audio(root / MEDIA_DIR / "audio" / f"{name}.wav", attrs)
    return f"{name}.wav", attrs


def _record(index: int, modality: str, path: str, request: str, tool: str, ambiguity: int) -> dict[str, Any]:
    """One record exactly as MLLM-Tool's per-modality files write it."""
    paths = {key: (path if key == f"{modality}_path" else "") for key in ("image_path", "video_path", "audio_path")}
    return {
        "id": index,
        **paths,
        "input_modality": modality,
        "output_modality": "text",
        "conversations": [
            {"from": "human", "value": request, "input_modality": modality},
            {"from": "gpt", "value": tool, "ambiguity": ambiguity, "output_modality": "text"},
        ],
    }


def _fill(phrase: str, rng: random.Random) -> str:
    return phrase.format(
        colour=rng.choice(sorted(COLOURS)),
        shape=rng.choice(SHAPES),
        direction=rng.choice(sorted(DIRECTIONS)),
        pitch=rng.choice(sorted(PITCHES)),
    )


def _split_records(root: Path, split: Split, num_items: int, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Records per input modality: `num_items` requests per task, each on a fresh media item (media tasks)."""
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in FILES}
    phrases_of: Callable[[Task], tuple[str, ...]] = (lambda t: t.train) if split == "train" else (lambda t: t.heldout)
    for task_index, task in enumerate(TASKS):
        for item in range(num_items):
            phrase = _fill(rng.choice(phrases_of(task)), rng)
            request = _capitalised(rng.choice(FRAMES).format(p=phrase))
            path = ""
            if task.modality != "text":
                path, _ = _write_media(root, task.modality, f"{split}_{task_index:02d}_{item:04d}", rng)
            for tool in task.tools:  # one record per right tool, as released
                index = len(records[task.modality]) + 1
                records[task.modality].append(_record(index, task.modality, path, request, tool, task.ambiguity))
    return records


def write_tool_world(root: Path, num_train: int, num_eval: int, seed: int = 0) -> Path:
    """Write the tiny tool library, media, released-format records (train and held-out) and a catalog.

    Args:
        root: output folder (created).
        num_train: training requests per task (11 tasks; media tasks get a fresh item each).
        num_eval: held-out requests per task.
        seed: seed of every draw.

    Returns:
        The catalog path, `<root>/datasets.yaml`; the library is `<root>/tools.json`.

    Raises:
        ValueError: `num_train < 1` or `num_eval < 1`.
    """
    if num_train < 1 or num_eval < 1:
        raise ValueError(f"write_tool_world needs num_train >= 1 and num_eval >= 1, got {num_train}, {num_eval}")
    root = Path(root)
    rng = random.Random(seed)
    for folder in ("image", "video", "audio"):
        (root / MEDIA_DIR / folder).mkdir(parents=True, exist_ok=True)
    write_tiny_tool_library(root / "tools.json")
    folders = {
        "image": {"image_dir": f"{MEDIA_DIR}/image"},
        "video": {"video_dir": MEDIA_DIR},
        "audio": {"audio_dir": f"{MEDIA_DIR}/audio"},
        "text": {},
    }
    catalog: dict[str, dict[str, str]] = {}
    for split, count in (("train", num_train), ("eval", num_eval)):
        for modality, records in _split_records(root, split, count, rng).items():
            relative = f"{DATA_DIR}/{FILES[modality]}"
            name = f"tool_{modality}"
            if split == "eval":
                relative, name = relative.replace(".json", "_eval.json"), f"{name}_eval"
            (root / relative).write_text(json.dumps(records, indent=4))
            catalog[name] = {"annotation_path": relative, "kind": "tool", **folders[modality]}
    catalog_path = root / "datasets.yaml"
    catalog_path.write_text(yaml.safe_dump({"base_dir": ".", "datasets": catalog}, sort_keys=False))
    logger.info("wrote the tiny tool world (%d tasks) to %s", len(TASKS), root)
    return catalog_path
