"""A seeded synthetic multimodal world in every official annotation format, with its own dataset catalog.

Media are small and fully described by their attributes: images (64x64 PNG, a coloured shape at a position),
videos (16 frames at 8 fps MP4, a shape moving in a direction), audio (2 s 16 kHz WAV, a low or high tone, steady or
beeping). Each has a caption built from its attributes ("a red circle on the left"). The layout mirrors the real
`data/` folder (T_X_pair_data/, IT_data/, embed/, it/embed/); every catalog name has a train entry and a held-out
`<name>_eval` entry. Caption embeddings are not written here (preprocess_embeddings.py does that); tests can use
`write_random_caption_embeddings`.

    catalog_path = write_synthetic_world(Path("data/tiny"), num_train=40, num_eval=10)
    catalog = load_catalog(catalog_path)              # cc3m_enc, cc3m_enc_eval, ..., mosit_instruction_eval
    attributes = json.loads((catalog_path.parent / "metadata.json").read_text())
"""

from __future__ import annotations

import json
import logging
import math
import random
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from nextgpt.constants import Modality

logger = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48)}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
PITCHES = {"low": 220.0, "high": 880.0}
RHYTHMS = ("steady", "beeping")
IMAGE_SIZE, NUM_FRAMES, FPS, SAMPLE_RATE, AUDIO_SECONDS = 64, 16, 8, 16000, 2.0
_RADIUS = 10
_BACKGROUND = (235, 235, 235)
_PAIR_DIRS = {
    Modality.IMAGE: ("cc3m", "images"),
    Modality.VIDEO: ("webvid", "videos"),
    Modality.AUDIO: ("audiocap", "audios"),
}
_EXT = {Modality.IMAGE: "png", Modality.VIDEO: "mp4", Modality.AUDIO: "wav"}
_ABBREV = {Modality.IMAGE: "img", Modality.VIDEO: "vid", Modality.AUDIO: "aud"}
ASK_TEMPLATES = ["What is shown in the {m}?", "Describe the {m}.", "Give me a short caption of the {m}."]
MAKE_TEMPLATES = ["Please generate a {m} of {c}.", "Can you make a {m} showing {c}?", "I would like a {m} of {c}."]
REPLY_TEMPLATES = ["Sure, here it is.", "Here you go.", "Of course."]
MODALITY_WORDS = {Modality.IMAGE: "image", Modality.VIDEO: "video", Modality.AUDIO: "sound"}

Item = dict[str, Any]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], colour: tuple[int, int, int]
) -> None:
    x, y = centre
    box = (x - _RADIUS, y - _RADIUS, x + _RADIUS, y + _RADIUS)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, y - _RADIUS), (x - _RADIUS, y + _RADIUS), (x + _RADIUS, y + _RADIUS)], fill=colour)


def _frame(shape: str, centre: tuple[float, float], colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _BACKGROUND)
    _draw_shape(ImageDraw.Draw(image), shape, centre, colour)
    return image


def write_image(path: Path, attrs: dict[str, str]) -> None:
    """Write a PNG of `attrs["shape"]` in `attrs["colour"]` at `attrs["position"]`."""
    _frame(attrs["shape"], POSITIONS[attrs["position"]], COLOURS[attrs["colour"]]).save(path)


def write_video(path: Path, attrs: dict[str, str]) -> None:
    """Write an MP4 (H.264, or MPEG-4 part 2 when libx264 is missing) of a shape moving in `attrs["direction"]`."""
    import av

    dx, dy = DIRECTIONS[attrs["direction"]]
    travel = IMAGE_SIZE / 2 - _RADIUS - 2
    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=FPS)
            stream.options = {"preset": "ultrafast"}
        except (ValueError, av.error.FFmpegError):  # pragma: no cover - depends on the FFmpeg build
            stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = IMAGE_SIZE, IMAGE_SIZE, "yuv420p"
        for index in range(NUM_FRAMES):
            progress = index / (NUM_FRAMES - 1) * 2 - 1  # -1 -> +1 across the clip
            centre = (IMAGE_SIZE / 2 + dx * travel * progress, IMAGE_SIZE / 2 + dy * travel * progress)
            frame = np.asarray(_frame(attrs["shape"], centre, COLOURS[attrs["colour"]]))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_audio(path: Path, attrs: dict[str, str]) -> None:
    """Write a 16-bit mono WAV: a `attrs["pitch"]` sine, continuous or switched on/off every 1/8 s."""
    t = np.arange(int(SAMPLE_RATE * AUDIO_SECONDS)) / SAMPLE_RATE
    signal = 0.5 * np.sin(2 * math.pi * PITCHES[attrs["pitch"]] * t)
    if attrs["rhythm"] == "beeping":
        signal *= (np.floor(t * 8) % 2 == 0).astype(np.float64)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes((signal * 32767).astype("<i2").tobytes())


def caption_of(modality: Modality, attrs: dict[str, str]) -> str:
    """Caption built from an item's attributes, e.g. "a red circle on the left"."""
    if modality == Modality.IMAGE:
        return f"a {attrs['colour']} {attrs['shape']} {POSITION_WORDS[attrs['position']]}"
    if modality == Modality.VIDEO:
        return f"a {attrs['colour']} {attrs['shape']} moving {attrs['direction']}"
    return f"a {attrs['rhythm']} {attrs['pitch']} tone"


def sample_attrs(modality: Modality, rng: random.Random) -> dict[str, str]:
    if modality == Modality.AUDIO:
        return {"pitch": rng.choice(sorted(PITCHES)), "rhythm": rng.choice(RHYTHMS)}
    attrs = {"colour": rng.choice(sorted(COLOURS)), "shape": rng.choice(SHAPES)}
    if modality == Modality.IMAGE:
        attrs["position"] = rng.choice(sorted(POSITIONS))
    else:
        attrs["direction"] = rng.choice(sorted(DIRECTIONS))
    return attrs


_WRITERS: dict[Modality, Callable[[Path, dict[str, str]], None]] = {
    Modality.IMAGE: write_image,
    Modality.VIDEO: write_video,
    Modality.AUDIO: write_audio,
}


def _write_media(root: Path, modality: Modality, split: str, count: int, rng: random.Random) -> list[Item]:
    dataset, folder = _PAIR_DIRS[modality]
    media_dir = root / "T_X_pair_data" / dataset / folder
    media_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        attrs = sample_attrs(modality, rng)
        name = f"{split}_{_ABBREV[modality]}_{index:05d}.{_EXT[modality]}"
        _WRITERS[modality](media_dir / name, attrs)
        items.append(
            {
                "file": name,
                "modality": modality.value,
                "split": split,
                "attributes": attrs,
                "caption": caption_of(modality, attrs),
                "path": str((media_dir / name).relative_to(root)),
            }
        )
    return items


def _turns(*texts: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(texts)]


def _pair_records(modality: Modality, items: list[Item], rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Raw pairs, `*_comprehension` and `*_generation` records of one modality."""
    m, key = MODALITY_WORDS[modality], modality.value
    name_key = {Modality.IMAGE: "image_name", Modality.VIDEO: "video_name", Modality.AUDIO: "audio_name"}[modality]
    raw = [{"id": i, name_key: it["file"], "caption": it["caption"]} for i, it in enumerate(items)]
    comprehension = [
        {
            f"input_{key}": it["file"],
            "conversations": _turns(f"<{key}>\n" + rng.choice(ASK_TEMPLATES).format(m=m), it["caption"]),
        }
        for it in items
    ]
    generation = [
        {
            f"output_{key}": it["file"],
            f"{key}_captions": it["caption"],
            f"{key}_caption_embeddings": f"{it['file']}.npy",
            "conversations": _turns(
                rng.choice(MAKE_TEMPLATES).format(m=m, c=it["caption"]), f"{rng.choice(REPLY_TEMPLATES)} <{key}>"
            ),
        }
        for it in items
    ]
    return {"raw": raw, "comprehension": comprehension, "generation": generation}


def _t2m_records(modality: Modality, items: list[Item], split: str, rng: random.Random) -> list[dict[str, Any]]:
    key, m = modality.value, MODALITY_WORDS[modality]
    records = []
    for index, it in enumerate(items):
        conversations = _turns(
            rng.choice(MAKE_TEMPLATES).format(m=m, c=it["caption"]), f"{rng.choice(REPLY_TEMPLATES)} <{key}>"
        )
        conversations[0]["input_modality"] = "text"
        conversations[1].update(caption=it["caption"], output_modality=key)
        records.append(
            {
                f"{key}_captions": [it["caption"]],
                f"{key}_caption_embeddings": [f"it_{_ABBREV[modality]}_{split}_{index}.{_EXT[modality]}.npy"],
                "conversations": conversations,
                "source_data": {"file": it["file"]},
            }
        )
    return records


def _llava_records(images: list[Item]) -> list[dict[str, Any]]:
    return [
        {
            "input_image": [it["file"], it["file"]],
            "conversations": _turns(
                "<image>\nWhat colour is the shape?",
                it["attributes"]["colour"],
                "Where is the shape?\n<image>",
                POSITION_WORDS[it["attributes"]["position"]],
            ),
        }
        for it in images
    ]


def _alpaca_records(images: list[Item]) -> list[dict[str, Any]]:
    return [
        {
            "conversations": _turns(
                f"Write a short caption for a picture of a {a['colour']} {a['shape']}.",
                f"A {a['colour']} {a['shape']} on a plain grey background.",
            )
        }
        for a in (it["attributes"] for it in images)
    ]


def _videochat_records(videos: list[Item]) -> list[dict[str, Any]]:
    return [
        {
            "input_video": it["file"],
            "conversations": _turns(
                "<video>\nWhich way does the shape move?", f"It moves {it['attributes']['direction']}."
            ),
        }
        for it in videos
    ]


def _mosit_records(media: dict[Modality, list[Item]]) -> list[dict[str, Any]]:
    """Three rounds, media on both sides: inline user tag, assistant tag with `video_list`, input_audio + <audio>."""
    images, videos, audios = media[Modality.IMAGE], media[Modality.VIDEO], media[Modality.AUDIO]
    records = []
    for i, image in enumerate(images):
        video, heard, made = videos[i % len(videos)], audios[i % len(audios)], audios[(i + 1) % len(audios)]
        records.append(
            {
                "video_list": [{"video_name": video["file"], "data_source": "synthetic", "caption": video["caption"]}],
                "input_audio": [heard["file"]],
                "audio_captions": [made["caption"]],
                "audio_caption_embeddings": [f"{made['file']}.npy"],
                "conversations": _turns(
                    f"<Image>{image['file']}</Image> What is in this picture?",
                    f"It shows {image['caption']}.",
                    "Can you show me a video of a moving shape?",
                    f"Here is {video['caption']}. <Video>{video['file']}</Video>",
                    "<audio>\nWhat does this sound like? Then make another one.",
                    f"It is {heard['caption']}. Here is {made['caption']}: <audio>",
                ),
            }
        )
    return records


def _annotation_files(media: dict[Modality, list[Item]], split: str, rng: random.Random) -> dict[str, tuple[str, list]]:
    """Catalog name -> (annotation path relative to the root, records)."""
    files: dict[str, tuple[str, list]] = {}
    for modality, (dataset, _) in _PAIR_DIRS.items():
        records = _pair_records(modality, media[modality], rng)
        files[f"{dataset}_raw"] = (f"T_X_pair_data/{dataset}/{dataset}.json", records["raw"])
        files[f"{dataset}_enc"] = (f"T_X_pair_data/{dataset}/{dataset}_comprehension.json", records["comprehension"])
        files[f"{dataset}_dec"] = (f"T_X_pair_data/{dataset}/{dataset}_generation.json", records["generation"])
        files[f"{modality.value}_instruction"] = (
            f"IT_data/T-T+X_data/{modality.value}_instruction_tuning.json",
            _t2m_records(modality, media[modality], split, rng),
        )
    it = "IT_data/T+X-T_data"
    files["llava_instruction"] = (f"{it}/llava/preprocessed_llava.json", _llava_records(media[Modality.IMAGE]))
    files["alpaca_instruction"] = (f"{it}/alpaca/preprocessed_alpaca.json", _alpaca_records(media[Modality.IMAGE]))
    files["videochat_instruction"] = (f"{it}/videochat/videochat.json", _videochat_records(media[Modality.VIDEO]))
    files["mosit_instruction"] = ("IT_data/MosIT_data/mosit_instruction_tuning.json", _mosit_records(media))
    return files


def _catalog_entry(name: str, annotation: str, records: list[dict[str, Any]]) -> dict[str, str]:
    """Catalog fields of one dataset: only the folders its records refer to."""
    from nextgpt.data.catalog import needed_folders

    folders = {
        "image_dir": "T_X_pair_data/cc3m/images",
        "video_dir": "T_X_pair_data/webvid/videos",
        "audio_dir": "T_X_pair_data/audiocap/audios",
        "caption_embed_dir": "embed" if name.endswith("_dec") else "it/embed",
    }
    kind = "x_to_text" if name.endswith("_enc") else "text_to_x" if name.endswith("_dec") else "instruction"
    entry = {"annotation_path": annotation, "kind": kind}
    entry.update({key: folders[key] for key in folders if key in needed_folders(records)})
    return entry


def write_synthetic_world(root: Path, num_train: int, num_eval: int, seed: int = 0) -> Path:
    """Write media, annotation files in every official format, attribute metadata and a catalog under `root`.

    Args:
        root: output folder (created).
        num_train: training items per modality (each format gets one record per item).
        num_eval: held-out items per modality (written to `<file>_eval.json`, catalog names `<name>_eval`).
        seed: seed of every attribute draw; the same seed writes the same world.

    Returns:
        Path of the catalog, `<root>/datasets.yaml` (relative paths, anchored at `root`).

    Raises:
        ValueError: `num_train < 1` or `num_eval < 0`.
    """
    if num_train < 1 or num_eval < 0:
        raise ValueError(f"write_synthetic_world needs num_train >= 1 and num_eval >= 0, got {num_train}, {num_eval}")
    root = Path(root)
    rng = random.Random(seed)
    catalog: dict[str, dict[str, str]] = {}
    metadata: list[Item] = []
    for split, count in (("train", num_train), ("eval", num_eval)):
        if count == 0:
            continue
        media = {m: _write_media(root, m, split, count, rng) for m in _PAIR_DIRS}
        metadata += [it for items in media.values() for it in items]
        for name, (relative, records) in _annotation_files(media, split, rng).items():
            if split == "eval":
                name, relative = f"{name}_eval", relative.replace(".json", "_eval.json")
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(json.dumps(records, indent=1))
            if not name.startswith(("cc3m_raw", "webvid_raw", "audiocap_raw")):
                catalog[name] = _catalog_entry(name.removesuffix("_eval"), relative, records)
    for folder in ("embed", "it/embed"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text(json.dumps({"seed": seed, "items": metadata}, indent=1))
    catalog_path = root / "datasets.yaml"
    catalog_path.write_text(yaml.safe_dump({"base_dir": ".", "datasets": catalog}, sort_keys=False))
    if num_eval:
        from nextgpt.tiny.benchmarks import write_tiny_benchmarks

        write_tiny_benchmarks(root)
    logger.info("wrote synthetic world (%d media items, %d datasets) to %s", len(metadata), len(catalog), root)
    return catalog_path


def write_random_caption_embeddings(
    catalog_path: Path, shapes: dict[Modality, tuple[int, ...]], seed: int = 0, names: list[str] | None = None
) -> int:
    """Write a random float16 embedding for every caption embedding the catalog's records name (stand-in for
    preprocess_embeddings.py in tests); existing files are kept.

    Args:
        catalog_path: a catalog YAML (e.g. from `write_synthetic_world`).
        shapes: shape per modality, e.g. `expected_caption_shapes(cfg.model.output_projectors)`.
        seed: seed of the random values.
        names: catalog names to cover; None covers all.

    Returns:
        Number of files written.
    """
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.embeddings import save_caption_embedding
    from nextgpt.data.records import load_records, parse_record

    generator = np.random.default_rng(seed)
    written = 0
    for name, entry in load_catalog(catalog_path).items():
        if names is not None and name not in names:
            continue
        for record in load_records(entry.annotation_path):
            for target in parse_record(record, entry).targets:
                path = target.embedding_path
                if path is not None and not path.exists():
                    save_caption_embedding(path, generator.standard_normal(shapes[target.modality]).astype(np.float32))
                    written += 1
    return written
