"""Batch samplers over a concatenation of datasets: deterministic per (seed, epoch), resumable, rank-disjoint.

Every sampler first draws the epoch's *global* batches (world_size x batch_size indices each) from a generator
seeded with (seed, epoch), then hands rank r its slice of each global batch, so ranks never share an index within
a batch and all ranks step through the same datasets in lock step. `skip_batches(n)` resumes mid-epoch.

    index = ConcatIndex([len(d) for d in datasets])           # same layout as torch ConcatDataset
    sampler = ModalityBlendedBatchSampler(index.sizes, batch_size=4, seed=42, rank=0, world_size=1)
    sampler.set_epoch(epoch); sampler.skip_batches(resume_step)
    loader = DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=collator)
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from torch.utils.data import Sampler


class ConcatIndex:
    """Global <-> (dataset, local) index mapping, laid out like `torch.utils.data.ConcatDataset`.

    Args:
        sizes: number of samples of each dataset, in concatenation order.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        if not sizes or any(s < 0 for s in sizes):
            raise ValueError(f"ConcatIndex needs at least one dataset size >= 0, got {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        self.offsets = [0, *itertools.accumulate(self.sizes)]

    def __len__(self) -> int:
        return self.offsets[-1]

    def to_global(self, dataset_idx: int, local_idx: int) -> int:
        """Global index of sample `local_idx` of dataset `dataset_idx`."""
        if not 0 <= local_idx < self.sizes[dataset_idx]:
            raise IndexError(
                f"sample {local_idx} out of range for dataset {dataset_idx} of size {self.sizes[dataset_idx]}"
            )
        return self.offsets[dataset_idx] + local_idx

    def to_local(self, global_idx: int) -> tuple[int, int]:
        """(dataset index, local index) of a global index."""
        if not 0 <= global_idx < len(self):
            raise IndexError(f"global index {global_idx} out of range for {len(self)} samples")
        dataset_idx = bisect.bisect_right(self.offsets, global_idx) - 1
        while self.sizes[dataset_idx] == 0:  # empty datasets share their offset with the next one
            dataset_idx += 1
        return dataset_idx, global_idx - self.offsets[dataset_idx]


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared machinery: seeding per epoch, rank slicing of global batches, resume offset."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"sampler needs batch_size >= 1, world_size >= 1 and 0 <= rank < world_size, got "
                f"batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce; also resets the resume offset to 0."""
        self.epoch = epoch
        self.start_batch = 0

    def skip_batches(self, num_batches: int) -> None:
        """Start the current epoch after its first `num_batches` batches (to resume a run)."""
        if num_batches < 0:
            raise ValueError(f"skip_batches needs a count >= 0, got {num_batches}")
        self.start_batch = num_batches

    def state_dict(self) -> dict[str, int]:
        """Epoch and resume offset, for checkpoints."""
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore `state_dict()`."""
        self.set_epoch(int(state["epoch"]))
        self.skip_batches(int(state["start_batch"]))

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _all_batches(self) -> list[list[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [batch[lo:hi] for batch in self._global_batches(self._rng())]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._all_batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, self._num_batches() - self.start_batch)

    def _num_batches(self) -> int:
        return len(self._all_batches())


def _pad_to_multiple(order: list[int], multiple: int) -> list[int]:
    """Repeat the start of `order` so its length is a multiple of `multiple` (DistributedSampler style)."""
    if not order:
        return order
    missing = -len(order) % multiple
    repeats = (missing + len(order) - 1) // len(order) + 1
    return order + (order * repeats)[:missing]


class RandomBatchSampler(_EpochBatchSampler):
    """Uniformly shuffled batches over all samples (padded by repetition to whole global batches).

    Args:
        num_samples: size of the (concatenated) dataset.
        batch_size: per-rank batch size.
        seed: base seed; the order depends only on (seed, epoch).
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        if num_samples < 1:
            raise ValueError(f"RandomBatchSampler needs at least one sample, got {num_samples}")
        self.num_samples = num_samples

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        order = _pad_to_multiple(rng.permutation(self.num_samples).tolist(), self.global_batch_size)
        gb = self.global_batch_size
        return [order[i : i + gb] for i in range(0, len(order), gb)]

    def _num_batches(self) -> int:
        return -(-self.num_samples // self.global_batch_size)


class ModalityBlendedBatchSampler(_EpochBatchSampler):
    """Each batch comes from one dataset; datasets take turns (spec §3.4).

    An epoch has `max(1, largest // global_batch)` batches per dataset, visited round-robin in dataset order, so
    it covers about `largest x num_datasets` samples; smaller datasets are re-shuffled and re-drawn as needed.

    Args:
        dataset_sizes: sizes of the concatenated datasets (global index = offset + local, as `ConcatIndex`).
        batch_size: per-rank batch size.
        seed: base seed; the order depends only on (seed, epoch).
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(
        self, dataset_sizes: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        self.index = ConcatIndex(dataset_sizes)
        self.active = [i for i, size in enumerate(self.index.sizes) if size > 0]
        if not self.active:
            raise ValueError(f"ModalityBlendedBatchSampler needs a non-empty dataset, got sizes {list(dataset_sizes)}")
        self.batches_per_dataset = max(1, max(self.index.sizes) // self.global_batch_size)

    def _stream(self, dataset_idx: int, rng: np.random.Generator) -> Iterator[int]:
        """Endless shuffled passes over one dataset, as global indices."""
        offset, size = self.index.offsets[dataset_idx], self.index.sizes[dataset_idx]
        while True:
            yield from (offset + i for i in rng.permutation(size).tolist())

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        streams = {d: self._stream(d, np.random.default_rng([self.seed, self.epoch, d])) for d in self.active}
        batches = []
        for _ in range(self.batches_per_dataset):
            for d in self.active:
                batches.append(list(itertools.islice(streams[d], self.global_batch_size)))
        return batches

    def _num_batches(self) -> int:
        return self.batches_per_dataset * len(self.active)


class LengthGroupedBatchSampler(_EpochBatchSampler):
    """Shuffled megabatches (one global batch each) sorted by length, so a batch holds similar lengths.

    LLaVA's algorithm: shuffle, cut into megabatches of world_size x batch_size, sort each by length (longest first)
    and deal its samples round-robin to the ranks, so each rank's batch has a similar total length. With `groups`,
    samples of different groups (e.g. "text" vs media samples) never share a megabatch; leftover partial
    megabatches of all groups are merged at the end.

    Args:
        lengths: per-sample lengths (e.g. `ConversationDataset.lengths()` concatenated).
        batch_size: per-rank batch size.
        seed: base seed; the order depends only on (seed, epoch).
        rank: this process's rank.
        world_size: number of processes.
        groups: optional per-sample group labels.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[str] | None = None,
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        if not lengths:
            raise ValueError("LengthGroupedBatchSampler needs at least one sample length")
        if groups is not None and len(groups) != len(lengths):
            raise ValueError(
                f"groups has {len(groups)} labels but there are {len(lengths)} lengths; give one per sample"
            )
        self.lengths = [int(x) for x in lengths]
        self.groups = list(groups) if groups is not None else ["all"] * len(self.lengths)

    def _deal(self, megabatch: list[int]) -> list[int]:
        """Sort by length and reorder so that contiguous rank slices are dealt round-robin."""
        ordered = sorted(megabatch, key=lambda i: -self.lengths[i])
        return [i for r in range(self.world_size) for i in ordered[r :: self.world_size]]

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        gb = self.global_batch_size
        megabatches: list[list[int]] = []
        leftovers: list[int] = []
        for group in sorted(set(self.groups)):
            members = np.array([i for i, g in enumerate(self.groups) if g == group])
            order = members[rng.permutation(len(members))].tolist()
            full = len(order) - len(order) % gb
            megabatches += [order[i : i + gb] for i in range(0, full, gb)]
            leftovers += order[full:]
        megabatches = [megabatches[i] for i in rng.permutation(len(megabatches)).tolist()]
        if leftovers:
            padded = _pad_to_multiple(leftovers, gb)
            megabatches += [padded[i : i + gb] for i in range(0, len(padded), gb)]
        return [self._deal(m) for m in megabatches]

    def _num_batches(self) -> int:
        gb = self.global_batch_size
        counts = [self.groups.count(g) for g in set(self.groups)]
        return sum(c // gb for c in counts) + -(-sum(c % gb for c in counts) // gb)


SamplerKind = Literal["random", "modality_blended", "length_grouped"]


def build_batch_sampler(
    kind: SamplerKind,
    dataset_lengths: Sequence[Sequence[int]],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    dataset_groups: Sequence[Sequence[str]] | None = None,
) -> _EpochBatchSampler:
    """Build the batch sampler named by `data.sampler` over concatenated datasets.

    Args:
        kind: "random", "modality_blended" or "length_grouped".
        dataset_lengths: per dataset, per-sample lengths (their counts give the dataset sizes).
        batch_size: per-rank batch size.
        seed: base seed.
        rank: this process's rank.
        world_size: number of processes.
        dataset_groups: per dataset, per-sample group labels for "length_grouped" (e.g. `modality_tags()`).

    Returns:
        A batch sampler yielding global indices of the concatenation.

    Raises:
        ValueError: unknown kind.
    """
    sizes = [len(lengths) for lengths in dataset_lengths]
    if kind == "random":
        return RandomBatchSampler(sum(sizes), batch_size, seed, rank, world_size)
    if kind == "modality_blended":
        return ModalityBlendedBatchSampler(sizes, batch_size, seed, rank, world_size)
    if kind == "length_grouped":
        flat_lengths = [x for lengths in dataset_lengths for x in lengths]
        flat_groups = None if dataset_groups is None else [g for groups in dataset_groups for g in groups]
        return LengthGroupedBatchSampler(flat_lengths, batch_size, seed, rank, world_size, flat_groups)
    raise ValueError(f"data.sampler must be 'random', 'modality_blended' or 'length_grouped', got {kind!r}")
