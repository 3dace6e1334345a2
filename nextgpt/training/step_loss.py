"""One optimizer step's loss over all its samples, however they are split into micro-batches and ranks.

Each loss term is a mean: cross-entropy over labelled tokens, the L2 and denoising terms over generation targets.
A micro-batch's own mean weighs its samples by 1 / (its count), so a step of several micro-batches (gradient
accumulation) or ranks (data parallelism) would optimise something other than one big batch of the same samples, and
two runs with the same global batch would disagree. Here every term of a micro-batch is rescaled to its share of the
step's mean: term x count(micro-batch) / count(step, every micro-batch of every rank). The counts are read on the
host from the batches (`NextGPTBatch.loss_counts`) and summed over ranks on the CPU, so nothing waits for the GPU.

    plan = StepLossPlan.build([b.loss_counts() for b in cpu_batches], count_group())  # before the forwards
    loss = model.weighted_loss(plan.scaled(i, out.loss_terms))                        # micro-batch i, for backward
    means = step_means(summed_shares, distributed=True)                              # the step's terms, all ranks
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from nextgpt.constants import MODALITIES

TERM_NAMES: tuple[str, ...] = (
    "ce",
    *(f"l2_{m.value}" for m in MODALITIES),
    *(f"denoise_{m.value}" for m in MODALITIES),
)
"""Every loss term a forward can return (`NextGPT._loss_terms`)."""


@dataclass
class StepLossPlan:
    """How much each micro-batch's terms weigh in the step.

    Attributes:
        factors: per micro-batch, term -> the multiplier of its mean for `engine.backward` (DeepSpeed divides the
            loss by the accumulation steps and averages gradients over ranks, which this undoes).
        shares: per micro-batch, term -> the multiplier that makes its mean its share of the step's mean.
        totals: term -> its count over the whole step; terms with none are not reported.
    """

    factors: list[dict[str, float]]
    shares: list[dict[str, float]]
    totals: dict[str, int]

    @classmethod
    def build(cls, counts: list[dict[str, int]], group: dist.ProcessGroup | None = None) -> StepLossPlan:
        """The plan of one step from its micro-batches' counts on this rank.

        Args:
            counts: per micro-batch of this rank, `NextGPTBatch.loss_counts()`.
            group: a CPU (gloo) process group over the data-parallel ranks, or None for one process. Every rank
                calls this at the same step: the counts are summed over ranks.
        """
        names = TERM_NAMES  # the same vector on every rank, whichever terms its own batches have
        unknown = {name for micro in counts for name in micro} - set(names)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {list(names)}")
        local = torch.tensor([sum(micro.get(name, 0) for micro in counts) for name in names], dtype=torch.float64)
        world = 1
        if group is not None:
            dist.all_reduce(local, group=group)
            world = dist.get_world_size(group)
        totals = {name: int(total) for name, total in zip(names, local.tolist(), strict=True)}
        scale = world * len(counts)
        # A term with no count in the whole step (no labelled token anywhere) is a zero that still depends on the
        # forward: it weighs nothing.
        shares = [
            {n: micro.get(n, 0) / totals[n] if totals[n] else 0.0 for n in names if totals[n] > 0 or n in micro}
            for micro in counts
        ]
        factors = [{n: share * scale for n, share in micro.items()} for micro in shares]
        return cls(factors=factors, shares=shares, totals=totals)

    def scaled(self, micro: int, terms: dict[str, torch.Tensor], which: str = "factors") -> dict[str, torch.Tensor]:
        """Micro-batch `micro`'s terms times their factors (or shares); a term this plan has no count for raises."""
        weights = getattr(self, which)[micro]
        unknown = set(terms) - set(weights)
        if unknown:
            raise ValueError(f"loss terms {sorted(unknown)} have no count in the batch (NextGPTBatch.loss_counts)")
        return {name: value.float() * weights[name] for name, value in terms.items()}


def step_means(shares: dict[str, torch.Tensor], distributed: bool) -> dict[str, torch.Tensor]:
    """The step's mean of each term from this rank's summed shares: device tensors, summed over the ranks on the
    device (the default process group) without waiting for it.

    Args:
        shares: term -> this rank's share of the step mean, summed over its micro-batches.
        distributed: several data-parallel ranks (every rank calls this at the same step).
    """
    if not distributed or not shares:
        return shares
    names = sorted(shares)
    stacked = torch.stack([shares[n].reshape(()) for n in names])  # (T,)
    dist.all_reduce(stacked)
    return dict(zip(names, stacked.unbind(), strict=True))


def count_group() -> dist.ProcessGroup | None:
    """The CPU process group `StepLossPlan.build` sums counts over: None for one process, the default group when it
    is already gloo (CPU runs), else a gloo group over the same ranks (created once, by every rank together)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")
