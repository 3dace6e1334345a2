"""Loss terms of NExT-GPT (spec §1.11): causal LM cross-entropy and the caption-alignment L2 distance.

Both compute in float32 whatever the model dtype, and return a scalar that keeps a graph even when empty.

    lm_loss = compute_lm_loss(out.logits, spliced.labels)
    l2_loss = compute_caption_l2_loss(prompt_embeds_pred, caption_embeds)  # (N, 77, 768) each
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextgpt.constants import IGNORE_INDEX


def compute_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over labelled target tokens (HF causal shift).

    Args:
        logits: (B, L, V) LM logits.
        labels: (B, L) target ids, `IGNORE_INDEX` where no loss is taken; position t is predicted from t-1.

    Returns:
        Scalar float32 loss; a zero that still depends on `logits` when no token is labelled.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"compute_lm_loss expects logits (B, L, V) and labels (B, L), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # (B, L-1, V) -> (B*(L-1), V)
    shifted_labels = labels[:, 1:].reshape(-1)  # (B, L-1) -> (B*(L-1),)
    num_labelled = (shifted_labels != IGNORE_INDEX).sum()
    loss_sum = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    # No branch on the count: reading it on the host would wait for the whole forward pass queued before it. With no
    # labelled token the sum is a zero that still depends on `logits`.
    return loss_sum / num_labelled.clamp(min=1)


def compute_caption_l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-token Euclidean distance between projected and caption embeddings (not squared MSE).

    loss = mean over items n and tokens q of sqrt(sum_d (pred[n, q, d] - target[n, q, d])^2).

    Args:
        pred: (N, Q, D) output-projector conditioning.
        target: (N, Q, D) pre-computed text-encoder embeddings, or (N, D) when Q == 1 (AudioLDM's CLAP vector).

    Returns:
        Scalar float32 loss; a zero that still depends on `pred` when N == 0.

    Raises:
        ValueError: if the shapes do not match.
    """
    if pred.ndim == 3 and pred.shape[1] == 1 and target.ndim == 2:
        target = target.unsqueeze(1)  # (N, D) -> (N, 1, D)
    if pred.ndim != 3 or target.shape != pred.shape:
        raise ValueError(
            f"caption L2 loss expects pred (N, Q, D) and target of the same shape (or (N, D) when Q == 1), got "
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)}; check output_projectors.<modality> "
            "num_queries/out_dim against the cached caption embeddings"
        )
    if pred.numel() == 0:
        return pred.float().sum() * 0.0
    # vector_norm's backward is 0 (not NaN) where the distance is exactly 0, unlike sqrt(sum(...)).
    distances = torch.linalg.vector_norm(pred.float() - target.float(), dim=-1)  # (N, Q, D) -> (N, Q)
    return distances.mean()
