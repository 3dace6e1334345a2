"""The batch type: what the collator produces and the model consumes, media items listed per modality.

batch = NextGPTBatch(input_ids, attention_mask, labels, media={Modality.IMAGE: pixels})
batch = batch.to("cuda")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nextgpt.constants import Modality
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

    def to(self, device: torch.device | str) -> NextGPTBatch:
        """Move every tensor to `device`."""

        def move(d: dict[Modality, torch.Tensor]) -> dict[Modality, torch.Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return NextGPTBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            media=move(self.media),
            media_features=move(self.media_features),
            caption_embeds=move(self.caption_embeds),
            denoise_targets=move(self.denoise_targets),
            position_ids=None if self.position_ids is None else self.position_ids.to(device),
            media_group_sizes=self.media_group_sizes,
            layout=None if self.layout is None else self.layout.to(device),
        )
