"""The batch type: what the collator produces and the model consumes, media items listed per modality.

batch = NextGPTBatch(input_ids, attention_mask, labels, media={Modality.IMAGE: pixels})
batch = batch.to("cuda", non_blocking=True)  # asynchronous for pinned tensors (DataLoader pin_memory=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nextgpt.constants import IGNORE_INDEX, Modality
from nextgpt.data.layout import BatchLayout


@dataclass
class NextGPTBatch:
    """One (collated) batch. Media items of each modality are listed in the order their placeholders appear.

    Attributes:
        input_ids: (B, L) token ids with `SENTINEL_IDS` where media items are spliced; right-padded.
        attention_mask: (B, L) 1 for real tokens.
        labels: (B, L) targets (IGNORE_INDEX where not supervised) or None at inference.
        media: preprocessed encoder inputs per modality, e.g. image (N, 3, 224, 224).
        media_features: precomputed ImageBind vectors per modality (N, encoder_dim); used instead of `media`.
        caption_embeds: per modality, the decoder's caption embedding for each signal span, in span order:
            (N_spans, Q, D), or (N_spans, D) for audio.
        denoise_targets: per modality, target media tensors for the optional denoising loss, in span order.
        position_ids: (B, L) for packed rows (`data.packing`): each token's position within its sample, restarting
            at 0 at every sample's first token (token space, before splicing; the model derives the LLM positions and
            the layout after splicing). None: one sample per row.
        media_group_sizes: per modality, how many consecutive items each sentinel stands for (the legacy template
            sums several inputs of one modality into one token); None: one item per sentinel.
        layout: where every sample sits in the LLM's flattened row (`nextgpt.data.layout`), computed on the host by
            the collator; None: the model computes it from the ids (inference, hand-built batches).
        host: the CPU batch this one was copied from by `to` (None for a batch that was not): the model reads the
            ids there, so finding where media and signal tokens go never waits for the GPU.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    media: dict[Modality, torch.Tensor] = field(default_factory=dict)
    media_features: dict[Modality, torch.Tensor] = field(default_factory=dict)
    caption_embeds: dict[Modality, torch.Tensor] = field(default_factory=dict)
    denoise_targets: dict[Modality, torch.Tensor] = field(default_factory=dict)
    position_ids: torch.Tensor | None = None
    media_group_sizes: dict[Modality, list[int]] | None = None
    layout: BatchLayout | None = None
    host: NextGPTBatch | None = field(default=None, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        """Real tokens of the batch's samples, the shared prefix the collator stripped included (read on the host:
        call it on the CPU batch)."""
        tokens = int(self.attention_mask.sum())
        if self.layout is not None and self.layout.num_prefix:
            valid = self.attention_mask.bool()
            starts = valid & (self.position_ids == 0 if self.position_ids is not None else valid.cumsum(1) == 1)
            tokens += self.layout.num_prefix * int(starts.sum())
        return tokens

    def loss_counts(self) -> dict[str, int]:
        """What each loss term averages over, per term name (read on the host: call it on the CPU batch).

        "ce": labelled next-token targets (the causal shift drops each row's first label); "l2_<m>" and
        "denoise_<m>": the batch's generation targets of modality m. A term's mean times its count is its sum, which
        the training loop renormalises by the count over the whole step (all micro-batches, all ranks).
        """
        counts: dict[str, int] = {}
        if self.labels is not None:
            counts["ce"] = int((self.labels[:, 1:] != IGNORE_INDEX).sum())
        for modality, target in self.caption_embeds.items():
            counts[f"l2_{modality.value}"] = int(target.shape[0])
        for modality, target in self.denoise_targets.items():
            counts[f"denoise_{modality.value}"] = int(target.shape[0])
        return counts

    def to(self, device: torch.device | str, non_blocking: bool = False) -> NextGPTBatch:
        """Move every tensor to `device`.

        Args:
            device: the target device.
            non_blocking: copy page-locked (pinned) CPU tensors asynchronously, so the host does not wait for the copy;
                other tensors are copied as usual (an asynchronous copy into pageable host memory could be read
                before it lands).
        """
        moved = self._map(lambda t: t.to(device, non_blocking=non_blocking and t.is_pinned()))
        if moved.input_ids.device.type == "cpu":
            moved.host = None
        else:
            moved.host = self if self.input_ids.device.type == "cpu" else self.host
        return moved

    @property
    def host_view(self) -> NextGPTBatch:
        """The batch whose ids are read on the host: `host` when this batch was copied from the CPU, else itself."""
        return self if self.host is None else self.host

    def pin_memory(self) -> NextGPTBatch:
        """Copy every tensor into page-locked memory (the DataLoader's pin thread calls this with `pin_memory=True`)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> NextGPTBatch:
        def each(d: dict[Modality, torch.Tensor]) -> dict[Modality, torch.Tensor]:
            return {k: fn(v) for k, v in d.items()}

        return NextGPTBatch(
            input_ids=fn(self.input_ids),
            attention_mask=fn(self.attention_mask),
            labels=None if self.labels is None else fn(self.labels),
            media=each(self.media),
            media_features=each(self.media_features),
            caption_embeds=each(self.caption_embeds),
            denoise_targets=each(self.denoise_targets),
            position_ids=None if self.position_ids is None else fn(self.position_ids),
            media_group_sizes=self.media_group_sizes,
            layout=None if self.layout is None else self.layout.apply(fn),
        )
