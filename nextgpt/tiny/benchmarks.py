"""The tiny world's benchmark files: its held-out images, videos and sounds with their captions, in the format the
evaluation tasks read (`nextgpt.eval.benchmark`), so every task of configs/eval/ runs on the tiny world too.

    paths = write_tiny_benchmarks(Path("data/tiny"))   # data/tiny/benchmarks/{image,video,audio}.json
"""

from __future__ import annotations

import json
from pathlib import Path

from nextgpt.constants import MODALITIES

BENCHMARK_DIR = "benchmarks"


def write_tiny_benchmarks(world_root: Path) -> dict[str, Path]:
    """Write one benchmark file per modality from the world's `metadata.json` (held-out items, in file order).

    Media paths are relative to `world_root`, the tiny protocols' `media_dir`.

    Raises:
        FileNotFoundError: `world_root` has no metadata.json (write the world first: make_tiny_world).
    """
    metadata_path = Path(world_root) / "metadata.json"
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{metadata_path} not found; write the tiny world first (nextgpt-make-tiny-world)")
    items = [it for it in json.loads(metadata_path.read_text())["items"] if it["split"] == "eval"]
    out_dir = Path(world_root) / BENCHMARK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality in MODALITIES:
        records = [
            {"id": Path(it["file"]).stem, "media": it["path"], "captions": [it["caption"]]}
            for it in items
            if it["modality"] == modality.value
        ]
        paths[modality.value] = out_dir / f"{modality.value}.json"
        paths[modality.value].write_text(json.dumps(records, indent=1))
    return paths
