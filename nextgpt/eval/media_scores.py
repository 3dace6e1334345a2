"""Scores of generated media against references: FID and CLIP score (images), FID per frame and CLIPSIM (videos),
FD, KL and IS on PANNs CNN14 outputs (audio).

Definitions (the ones the NExT-GPT, CoDi and AudioLDM papers report):
- FID: Fréchet distance of pytorch-fid Inception pool features, generated vs reference images; for video, of all
  frames pooled ("FID per frame").
- CLIP score: 100 * max(cos(image, caption), 0) averaged over samples (Hessel et al. 2021, w = 100 as torchmetrics);
  CLIPSIM: the same averaged over each video's frames, then over videos.
- FD: Fréchet distance of CNN14 2048-d embeddings. KL: mean over pairs of KL(reference || generated) of the CNN14
  class distributions (clip-wise sigmoid outputs normalised to sum 1). IS: exp(E_x KL(p(y|x) || p(y))) on the same
  distributions of the generated clips.

    fid = image_fid(inception, generated, references)      # lists of (H, W, 3) uint8 arrays
    score = clip_score(clip, generated, captions)
    audio = audio_scores(classifier, generated_waves, reference_waves)   # {"FD", "KL", "IS"}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nextgpt.eval.cnn14 import Cnn14
from nextgpt.eval.frechet import frechet_distance
from nextgpt.eval.metric_models import Clip, InceptionFeatures

BATCH_SIZE = 16
_EPS = 1e-10


def _to_unit_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    stacked = torch.from_numpy(np.stack(images))  # N x (H, W, 3) uint8 -> (N, H, W, 3)
    return stacked.permute(0, 3, 1, 2).float() / 255.0  # (N, H, W, 3) -> (N, 3, H, W) in [0, 1]


def inception_features(inception: InceptionFeatures, images: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 images (any size; resized to 299 inside) -> (N, 2048) features."""
    batches = [_to_unit_batch(images[i : i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]
    return torch.cat([inception(batch) for batch in batches])


def image_fid(inception: InceptionFeatures, generated: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """FID between generated and reference images ((H, W, 3) uint8 each; at least two of each)."""
    return frechet_distance(inception_features(inception, generated), inception_features(inception, references))


def clip_score(clip: Clip, images: Sequence[np.ndarray], captions: Sequence[str]) -> float:
    """Mean CLIP score, 100 * max(cos, 0), of each image with its own caption.

    Raises:
        ValueError: different counts.
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"CLIP score needs one caption per image, got {len(images)} images, {len(captions)} captions")
    scores = []
    for start in range(0, len(images), BATCH_SIZE):
        image_embeds = clip.image_embeds(list(images[start : start + BATCH_SIZE]))
        text_embeds = clip.text_embeds(list(captions[start : start + BATCH_SIZE]))
        scores.append(100.0 * (image_embeds * text_embeds).sum(-1).clamp(min=0))  # (B,)
    return float(torch.cat(scores).mean())


def video_scores(
    inception: InceptionFeatures,
    clip: Clip,
    generated: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    captions: Sequence[str],
) -> dict[str, float]:
    """{"FID": per-frame FID, "CLIPSIM": mean over videos of the mean frame CLIP score}; videos are (F, H, W, 3)."""
    frames = [frame for video in generated for frame in video]
    reference_frames = [frame for video in references for frame in video]
    per_video = [
        clip_score(clip, list(video), [caption] * len(video))
        for video, caption in zip(generated, captions, strict=True)
    ]
    return {"FID": image_fid(inception, frames, reference_frames), "CLIPSIM": float(np.mean(per_video))}


def _fit_length(waves: Sequence[np.ndarray]) -> torch.Tensor:
    """Pad (zeros) or cut every clip to the first clip's length, so they batch: N x (T_i,) -> (N, T)."""
    length = len(waves[0])
    fitted = [np.pad(w, (0, max(0, length - len(w))))[:length] for w in waves]
    return torch.from_numpy(np.stack(fitted).astype(np.float32))


@torch.no_grad()
def classifier_outputs(classifier: Cnn14, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) float waveforms at the classifier's rate -> embeddings (N, E) and class distributions (N, C) summing to 1."""
    embeddings, probabilities = [], []
    for start in range(0, len(waves), BATCH_SIZE):
        out = classifier(_fit_length(waves[start : start + BATCH_SIZE]))
        embeddings.append(out.embedding)
        probabilities.append(out.clipwise / out.clipwise.sum(-1, keepdim=True).clamp(min=_EPS))
    return torch.cat(embeddings).double(), torch.cat(probabilities).double()


def kl_divergence(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean over pairs of KL(reference || generated) between (N, C) class distributions."""
    ratio = (reference + _EPS).log() - (generated + _EPS).log()
    return float((reference * ratio).sum(-1).mean())


def inception_score(probabilities: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of (N, C) class distributions."""
    marginal = probabilities.mean(0, keepdim=True)  # (1, C)
    kl = (probabilities * ((probabilities + _EPS).log() - (marginal + _EPS).log())).sum(-1)  # (N,)
    return float(kl.mean().exp())


def audio_scores(
    classifier: Cnn14, generated: Sequence[np.ndarray], references: Sequence[np.ndarray]
) -> dict[str, float]:
    """{"FD", "KL", "IS"} of generated clips against their references (pairs in the same order)."""
    if len(generated) != len(references) or len(generated) < 2:
        raise ValueError(f"audio scores need matching pairs (at least 2), got {len(generated)} and {len(references)}")
    gen_embed, gen_prob = classifier_outputs(classifier, generated)
    ref_embed, ref_prob = classifier_outputs(classifier, references)
    return {
        "FD": frechet_distance(gen_embed, ref_embed),
        "KL": kl_divergence(ref_prob, gen_prob),
        "IS": inception_score(gen_prob),
    }
