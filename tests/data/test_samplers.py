"""Batch samplers: single-dataset round-robin batches, length grouping, determinism, resume and rank disjointness."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

from nextgpt.data.samplers import (
    ConcatIndex,
    LengthGroupedBatchSampler,
    ModalityBlendedBatchSampler,
    RandomBatchSampler,
    build_batch_sampler,
)

SIZES = [10, 3, 7]


def test_concat_index_matches_torch_concat_dataset():
    datasets = [TensorDataset(torch.arange(n) + 100 * d) for d, n in enumerate([4, 0, 3, 5])]
    concat = ConcatDataset(datasets)
    index = ConcatIndex([len(d) for d in datasets])
    assert len(index) == len(concat) == 12
    for g in range(len(concat)):
        d, i = index.to_local(g)
        assert int(concat[g][0]) == 100 * d + i
        assert index.to_global(d, i) == g
    with pytest.raises(IndexError):
        index.to_local(12)


def test_blended_batches_come_from_one_dataset_in_round_robin():
    sampler = ModalityBlendedBatchSampler(SIZES, batch_size=2, seed=0)
    index = ConcatIndex(SIZES)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 * (10 // 2)
    sources = [{index.to_local(g)[0] for g in batch} for batch in batches]
    assert all(len(s) == 1 for s in sources)
    assert [s.pop() for s in sources] == [0, 1, 2] * 5
    per_dataset = {d: [index.to_local(g)[1] for b in batches for g in b if index.to_local(g)[0] == d] for d in range(3)}
    assert sorted(per_dataset[0]) == list(range(10))  # the largest is covered exactly once
    assert len(per_dataset[1]) == 10 and set(per_dataset[1]) == {0, 1, 2}  # smaller ones are re-drawn
    assert set(per_dataset[2]) == set(range(7))


def _samplers(kind: str, rank: int = 0, world_size: int = 1, seed: int = 5):
    lengths = [(i * 37) % 23 + 1 for i in range(sum(SIZES))]
    if kind == "blended":
        return ModalityBlendedBatchSampler(SIZES, 2, seed, rank, world_size)
    if kind == "length":
        return LengthGroupedBatchSampler(lengths, 2, seed, rank, world_size)
    return RandomBatchSampler(sum(SIZES), 2, seed, rank, world_size)


@pytest.mark.parametrize("kind", ["blended", "length", "random"])
def test_deterministic_per_seed_and_epoch(kind: str):
    first, second = _samplers(kind), _samplers(kind)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second)
    assert list(_samplers(kind, seed=6)) != list(_samplers(kind, seed=5))


@pytest.mark.parametrize("kind", ["blended", "length", "random"])
def test_resume_offset_continues_the_same_order(kind: str):
    sampler = _samplers(kind)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = _samplers(kind)
    resumed.load_state_dict({"epoch": 2, "start_batch": 4})
    assert list(resumed) == full[4:] and len(resumed) == len(full) - 4
    resumed.set_epoch(3)  # a new epoch starts from its first batch
    assert len(list(resumed)) == len(full)


@pytest.mark.parametrize("kind", ["blended", "length", "random"])
def test_ranks_get_disjoint_batches_in_lock_step(kind: str):
    ranks = [list(_samplers(kind, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    index = ConcatIndex(SIZES)
    for batch0, batch1 in zip(*ranks, strict=True):
        assert len(batch0) == len(batch1) == 2
        if kind != "blended" or min(SIZES) >= 4:
            assert not set(batch0) & set(batch1)
        if kind == "blended":  # both ranks read the same dataset at every step
            assert {index.to_local(g)[0] for g in batch0 + batch1} == {index.to_local(batch0[0])[0]}
    if kind != "blended":
        seen = [g for batches in ranks for b in batches for g in b]
        assert set(seen) == set(range(sum(SIZES)))


def test_blended_ranks_disjoint_when_datasets_are_large_enough():
    ranks = [list(ModalityBlendedBatchSampler([12, 8], 2, 0, r, 2)) for r in range(2)]
    for batch0, batch1 in zip(*ranks, strict=True):
        assert not set(batch0) & set(batch1)


def test_length_grouped_batches_hold_similar_lengths_and_respect_groups():
    lengths = list(range(1, 33))
    groups = ["text" if i % 2 else "image" for i in range(32)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=4, seed=0, rank=0, world_size=1, groups=groups)
    batches = list(sampler)
    assert sorted(g for b in batches for g in b) == list(range(32))
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
        assert len({groups[i] for i in batch}) == 1
    # with two ranks, each megabatch is dealt round-robin: rank 0 holds the 1st, 3rd, ... longest
    r0, r1 = (list(LengthGroupedBatchSampler(lengths, 2, 0, r, 2)) for r in range(2))
    for a, b in zip(r0, r1, strict=True):
        assert lengths[a[0]] > lengths[b[0]] > lengths[a[1]] > lengths[b[1]]


def test_build_batch_sampler_kinds_and_errors():
    lengths = [[3, 4, 5], [1, 2]]
    assert isinstance(build_batch_sampler("random", lengths, 2, 0), RandomBatchSampler)
    assert isinstance(build_batch_sampler("modality_blended", lengths, 2, 0), ModalityBlendedBatchSampler)
    grouped = build_batch_sampler("length_grouped", lengths, 2, 0, dataset_groups=[["image"] * 3, ["text"] * 2])
    assert isinstance(grouped, LengthGroupedBatchSampler) and grouped.groups == ["image"] * 3 + ["text"] * 2
    with pytest.raises(ValueError, match="data.sampler must be"):
        build_batch_sampler("sorted", lengths, 2, 0)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        RandomBatchSampler(4, 2, 0, rank=2, world_size=2)
