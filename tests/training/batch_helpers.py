"""Tiny-model batches for the packing and prefix-reuse tests: dataset-shaped items with cached ImageBind features,
signal spans and caption embeddings, and helpers to run a step and compare per-sample outputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch

from nextgpt.constants import SENTINEL_IDS, Modality
from nextgpt.data.collate import Collator
from nextgpt.data.datasets import expected_caption_shapes
from nextgpt.llm.conversation import Turn, build_training_example
from nextgpt.model import NextGPT, NextGPTBatch, NextGPTOutput, build_nextgpt
from nextgpt.signals import find_signal_spans
from nextgpt.training.stages import apply_trainable_groups

IMG, VID, AUD = Modality.IMAGE, Modality.VIDEO, Modality.AUDIO

STAGE_1 = [
    [Turn("user", "<image>\nDescribe the picture."), Turn("assistant", "A red circle on the left.")],
    [Turn("user", "What do you hear? <audio>"), Turn("assistant", "A dog barking twice, then silence.")],
    [Turn("user", "<video>\nCaption it."), Turn("assistant", "A green triangle moving to the top right corner.")],
    [Turn("user", "<image> <image>\nCompare."), Turn("assistant", "Both show squares.")],
]
STAGE_2 = [
    [Turn("user", "Please generate an image of a red circle."), Turn("assistant", "Here it is: <image>")],
    [Turn("user", "Make a sound of rain."), Turn("assistant", "Sure <audio>")],
    [Turn("user", "Show a video of a blue square."), Turn("assistant", "<video>")],
    [
        Turn("user", "<image>\nWhat is it?"), Turn("assistant", "A cat."),
        Turn("user", "Draw it and let it purr."), Turn("assistant", "Here: <image> and <audio>"),
    ],
]  # fmt: skip
STAGE_TRAINABLE = {
    1: ("input_projector", "token_rows"),
    2: ("input_projector", "output_projectors", "token_rows"),
}


def build_model(tiny_root: Path, tiny_cfg_path: Path, stage: int, *overrides: str) -> NextGPT:
    """The tiny model without ImageBind (items bring cached features), trainable as in the stage, in eval mode."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(tiny_cfg_path, overrides=[*tiny_path_overrides(tiny_root), *overrides])
    model = build_nextgpt(cfg.model, load_encoder=False)
    apply_trainable_groups(model, STAGE_TRAINABLE[stage])
    # Eval mode: the group projector's Gumbel noise and dropout would make any two passes differ; gradients still flow.
    return model.eval()


def make_items(model: NextGPT, conversations: list[list[Turn]], seed: int = 0) -> list[dict]:
    """Dataset-shaped items: ids/labels of the template, random features per user-side media item, a random caption
    embedding per signal span; `dataset` names the sample ("s0", "s1", ...) so packed order can be read back."""
    generator = torch.Generator().manual_seed(seed)
    caption_shapes = expected_caption_shapes(model.cfg.output_projectors)
    items = []
    for index, turns in enumerate(conversations):
        example = build_training_example(model.tokenizer, turns, model.signal_ids)
        ids = torch.tensor(example.input_ids)
        features = {}
        for modality, sentinel in SENTINEL_IDS.items():
            count = int((ids == sentinel).sum())
            if count:
                features[modality] = list(torch.randn(count, model.cfg.encoder.out_embed_dim, generator=generator))
        scan = find_signal_spans(ids, model.signal_ids)
        starts = {m: [s.start for s in spans] for m, spans in scan.spans.items() if spans}
        captions = {m: [torch.randn(caption_shapes[m], generator=generator) for _ in s] for m, s in starts.items()}
        items.append(
            {
                "input_ids": ids, "labels": torch.tensor(example.labels), "media": {}, "media_features": features,
                "caption_embeds": captions, "denoise_targets": {}, "signal_span_starts": starts,
                "length": len(ids), "dataset": f"s{index}", "index": index,
            }
        )  # fmt: skip
    return items


@dataclass
class Step:
    """One forward + backward: the output and the gradient of every trainable parameter."""

    out: NextGPTOutput
    grads: dict[str, torch.Tensor]


def run_step(model: NextGPT, batch: NextGPTBatch) -> Step:
    """Forward and backward on a fresh gradient buffer."""
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return Step(out=out, grads=grads)


def float64_batch(batch: NextGPTBatch) -> NextGPTBatch:
    """The batch with its float tensors (features, caption embeddings, media) in float64; ids and masks as they are."""

    def cast(values: dict) -> dict:
        return {k: v.double() if v.is_floating_point() else v for k, v in values.items()}

    return dataclasses.replace(
        batch,
        media=cast(batch.media),
        media_features=cast(batch.media_features),
        caption_embeds=cast(batch.caption_embeds),
        denoise_targets=cast(batch.denoise_targets),
    )


def float64_step(model: NextGPT, batch: NextGPTBatch) -> Step:
    """The pass of a float64 copy of the model: the exact values the float32 paths round.

    With about 2**29 times less rounding than float32, its distance to the exact result is negligible next to the
    float32 bounds of `numerics.rounding_bound`.
    """
    from numerics import float64_copy

    return run_step(float64_copy(model), float64_batch(batch))


def assert_close_to_float64(
    what: str, step: Step, collated, exact: Step, exact_collated, items: list[dict], tokens_per_media: int
) -> None:
    """A float32 pass (`step` on `collated`) equals the float64 plain pass (`exact` on `exact_collated`, from
    `float64_step`) up to float32 rounding: loss terms, each sample's logits, each span's conditioning and every
    gradient within `numerics.rounding_bound`, with n = the real LLM positions of the batch (the longest sums: attention
    over a sample's positions, every weight gradient over all positions)."""
    from numerics import assert_grads_rounding_close, assert_rounding_close

    exact_logits = logits_by_sample(exact.out, exact_collated.batch, exact_collated.datasets, tokens_per_media)
    num_terms = sum(len(logits) for logits in exact_logits.values())
    assert set(step.out.loss_terms) == set(exact.out.loss_terms), what
    for name, value in exact.out.loss_terms.items():
        assert_rounding_close(step.out.loss_terms[name], value, num_terms, f"{what} loss term {name}")
    assert_rounding_close(step.out.loss, exact.out.loss, num_terms, f"{what} loss")
    got_logits = logits_by_sample(step.out, collated.batch, collated.datasets, tokens_per_media)
    assert got_logits.keys() == exact_logits.keys(), what
    skipped = step.out.num_prefix_tokens  # prefix reuse computes no logits for the shared prefix
    for name, logits in exact_logits.items():
        assert_rounding_close(got_logits[name], logits[skipped:], num_terms, f"{what} logits of {name}")
    got_signals = signal_embeds_by_sample(step.out, collated.datasets, items)
    exact_signals = signal_embeds_by_sample(exact.out, exact_collated.datasets, items)
    assert got_signals.keys() == exact_signals.keys(), what
    for key, embeds in exact_signals.items():
        assert_rounding_close(got_signals[key], embeds, num_terms, f"{what} conditioning of {key}")
    assert_grads_rounding_close(step.grads, exact.grads, num_terms, what)


def collate(model: NextGPT, items: list[dict], packing: bool, max_length: int = 512, prefix_reuse: bool = False):
    """Collate with the model's tokens per media item (stripping the template's shared prefix with `prefix_reuse`)."""
    prefix = model.template_prefix_ids if prefix_reuse else ()
    collator = Collator(
        model.tokenizer.pad_token_id, max_length, model.input_projector.num_tokens, packing=packing, prefix_ids=prefix
    )
    return collator(items)


def signal_embeds_by_sample(out: NextGPTOutput, samples: list[str], items: list[dict]) -> dict[tuple, torch.Tensor]:
    """Projected conditioning keyed by (sample name, modality, span number), from spans listed in batch order."""
    by_name = {item["dataset"]: item for item in items}
    keyed = {}
    for modality, embeds in out.signal_embeds.items():
        row = 0
        for name in samples:
            for number, _ in enumerate(by_name[name]["signal_span_starts"].get(modality, [])):
                keyed[(name, modality, number)] = embeds[row]
                row += 1
        assert row == embeds.shape[0]
    return keyed


def logits_by_sample(out: NextGPTOutput, batch: NextGPTBatch, samples: list[str], tokens_per_media: int) -> dict:
    """Each sample's logits at its real spliced positions, found from the collated ids alone (not the model's layout).

    With prefix reuse the collator stripped the shared prefix, so a sample's logits start after it.
    """
    result, names = {}, iter(samples)
    for row in range(batch.input_ids.shape[0]):
        valid = batch.attention_mask[row].bool()
        ids = batch.input_ids[row][valid]
        positions = torch.arange(len(ids)) if batch.position_ids is None else batch.position_ids[row][valid]
        starts = [*(positions == 0).nonzero().flatten().tolist(), len(ids)]
        column = 0
        for start, end in pairwise(starts):
            width = int(torch.where(ids[start:end] < 0, tokens_per_media, 1).sum())
            result[next(names)] = out.logits[row, column : column + width]
            column += width
    return result
