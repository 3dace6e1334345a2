"""Sharded, resumable samples: ranks split the records exactly, finished samples are never generated again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nextgpt.eval.sample_store import SampleStore, shard


@dataclass
class Item:
    id: str


def test_ranks_partition_the_records():
    items = [Item(str(k)) for k in range(10)]
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in items)
    assert [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(ValueError, match="rank must be in"):
        shard(items, 3, 3)


def test_samples_round_trip_and_finished_ones_are_not_pending(tmp_path: Path):
    store = SampleStore(tmp_path)
    items = [Item("a"), Item("b"), Item("c")]
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    store.write("a", "a red circle", {"image": image})
    store.write("b", "no media", {})
    assert [i.id for i in store.pending(items, 0, 1)] == ["c"]
    assert [i.id for i in store.pending(items, 1, 2)] == []  # rank 1 of 2 owns "b" only, and it is done
    with pytest.raises(ValueError, match="1 of 3 samples"):
        store.read_all(["a", "b", "c"])
    store.write("c", "", {})
    a, b, _ = store.read_all(["a", "b", "c"])
    assert a.text == "a red circle" and np.array_equal(a.media["image"], image) and b.media == {}
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary file left
