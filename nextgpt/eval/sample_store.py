"""Per-sample outputs of an evaluation, sharded across ranks and resumable.

Rank r of W generates the records whose position k has k % W == r. Each finished sample is written at once, atomically
(temporary file, then rename), as `<dir>/<id>.npz` holding the reply text and its media arrays; a re-run skips every
id whose file exists, so a killed evaluation continues where it stopped and no sample is generated twice. Scoring
reads the files of all ranks once every record has one.

    store = SampleStore(Path("runs/eval/coco_t2i/samples"))
    for record in store.pending(records, rank=0, world_size=2): store.write(record.id, text, {"image": array})
    samples = store.read_all([r.id for r in records])       # raises if a rank has not finished
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class Sample:
    """A stored sample: `text` the reply, `media` name -> array (e.g. "image": (H, W, 3) uint8)."""

    id: str
    text: str
    media: dict[str, np.ndarray]


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of `rank`: positions k with k % world_size == rank.

    Raises:
        ValueError: rank outside [0, world_size).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of world size {world_size}")
    return [item for k, item in enumerate(items) if k % world_size == rank]


class SampleStore:
    """A folder of per-sample `.npz` files (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sample_id: str) -> Path:
        return self.folder / f"{sample_id}.npz"

    def has(self, sample_id: str) -> bool:
        return self.path(sample_id).is_file()

    def pending(self, items: Sequence[T], rank: int, world_size: int) -> list[T]:
        """This rank's items (anything with an `id`) that have no stored sample yet."""
        return [item for item in shard(items, rank, world_size) if not self.has(item.id)]  # type: ignore[attr-defined]

    def write(self, sample_id: str, text: str, media: dict[str, np.ndarray]) -> Path:
        """Store one sample atomically (a crash leaves either no file or the whole file)."""
        target = self.path(sample_id)
        temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npz")
        np.savez(temporary, __text__=np.array(text), **media)
        os.replace(temporary, target)
        return target

    def read(self, sample_id: str) -> Sample:
        with np.load(self.path(sample_id), allow_pickle=False) as data:
            media = {k: data[k] for k in data.files if k != "__text__"}
            return Sample(sample_id, str(data["__text__"]), media)

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if not self.has(i)]

    def read_all(self, ids: Sequence[str]) -> list[Sample]:
        """Every sample, in `ids` order.

        Raises:
            ValueError: some samples are not written yet (another rank still running, or it was stopped).
        """
        missing = self.missing(ids)
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(ids)} samples in {self.folder} are not generated yet (e.g. {missing[0]}); "
                "let every rank finish (or re-run them: finished samples are kept), then score again"
            )
        return [self.read(i) for i in ids]
