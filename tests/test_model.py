"""NextGPT on the tiny checkpoints: a full forward with every loss term, and where gradients go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nextgpt.constants import MODALITIES, Modality
from nextgpt.decoders.base import load_decoder
from nextgpt.decoders.denoising import compute_log_mel, prepare_image_target, prepare_video_target
from nextgpt.llm.conversation import Turn, build_training_example
from nextgpt.model import NextGPTBatch, build_nextgpt
from nextgpt.training.stages import apply_trainable_groups

ANY_TO_ANY = [
    Turn("user", "<image>\nTurn this picture into a picture, a video and a sound."),
    Turn("assistant", "Here they are: <image> <video> <audio>"),
]


@pytest.fixture(scope="module")
def model_and_decoders(tiny_root, tiny_cfg_path):
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides

    cfg = load_config(tiny_cfg_path, overrides=[*tiny_path_overrides(tiny_root), "model.loss.denoise_weight=0.5"])
    model = build_nextgpt(cfg.model)
    decoders = {
        m: load_decoder(m, getattr(cfg.model.decoders, m.value), getattr(cfg.model.output_projectors, m.value).out_dim)
        for m in MODALITIES
    }
    return model, decoders


def _batch(model, decoders) -> NextGPTBatch:
    example = build_training_example(model.tokenizer, ANY_TO_ANY, model.signal_ids)
    ids = torch.tensor([example.input_ids])
    pixels = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    frames = np.random.default_rng(1).integers(0, 255, (1, 4, 32, 32, 3), dtype=np.uint8)
    waveform = torch.randn(1, 16000, generator=torch.Generator().manual_seed(2))
    return NextGPTBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.tensor([example.labels]),
        media={Modality.IMAGE: torch.randn(1, 3, 224, 224)},
        caption_embeds={m: decoders[m].encode_captions(["a red circle on the left"]) for m in MODALITIES},
        denoise_targets={
            Modality.IMAGE: prepare_image_target(pixels, 32),
            Modality.VIDEO: prepare_video_target(frames, 32),
            Modality.AUDIO: compute_log_mel(waveform, n_mel=decoders[Modality.AUDIO].num_mel_bins),
        },
    )


@pytest.mark.numerics
def test_full_forward_has_every_loss_term_and_trains_only_the_groups(model_and_decoders):
    model, decoders = model_and_decoders
    apply_trainable_groups(model, ("input_projector", "output_projectors", "token_rows"))
    out = model(_batch(model, decoders), decoders=decoders)
    expected = {"ce"} | {f"{kind}_{m.value}" for kind in ("l2", "denoise") for m in MODALITIES}
    assert set(out.loss_terms) == expected
    assert all(torch.isfinite(v) for v in out.loss_terms.values())
    weighted = out.loss_terms["ce"] + sum(out.loss_terms[f"l2_{m.value}"] for m in MODALITIES)
    weighted = weighted + 0.5 * sum(out.loss_terms[f"denoise_{m.value}"] for m in MODALITIES)
    assert torch.allclose(out.loss, weighted)
    assert {m: e.shape for m, e in out.signal_embeds.items()} == {
        Modality.IMAGE: (1, 77, 32),
        Modality.VIDEO: (1, 77, 24),
        Modality.AUDIO: (1, 1, 16),
    }
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("input_projector.") for n in grads)
    for m in MODALITIES:
        assert any(n.startswith(f"output_projectors.{m.value}.") for n in grads)
    assert {n for n in grads if n.startswith("llm.")} == {"llm.model.embed_tokens.new_rows", "llm.lm_head.new_rows"}
    assert not any(n.startswith("encoder.") for n in grads)
    for decoder in decoders.values():
        assert all(p.grad is None for p in decoder.pipeline.unet.parameters())


def test_caption_targets_must_match_signal_spans(model_and_decoders):
    model, decoders = model_and_decoders
    batch = _batch(model, decoders)
    batch.caption_embeds[Modality.IMAGE] = torch.cat([batch.caption_embeds[Modality.IMAGE]] * 2)
    batch.denoise_targets = {}
    with pytest.raises(ValueError, match="2 image caption embeddings but 1 complete image signal spans"):
        model(batch)


@pytest.mark.numerics
def test_precomputed_features_replace_the_encoder(model_and_decoders):
    model, decoders = model_and_decoders
    batch = _batch(model, decoders)
    batch.denoise_targets, batch.caption_embeds = {}, {}
    with torch.no_grad():
        features = model.encoder(Modality.IMAGE, batch.media[Modality.IMAGE])
        from_media = model(batch).loss
        batch.media_features = {Modality.IMAGE: features}
        batch.media = {}
        from_features = model(batch).loss
    assert torch.allclose(from_media, from_features)


def test_data_parallel_forward_runs_every_idle_projector_for_a_zero_gradient(model_and_decoders):
    """With several ranks (`data_parallel`), a text-only training batch still runs the input projector and every
    output projector, on zero inputs: each gets an all-zero gradient (what DeepSpeed fills in for one process) and the
    loss is unchanged; one process runs none of them."""
    model, _ = model_and_decoders
    apply_trainable_groups(model, ("input_projector", "output_projectors", "token_rows"))
    turns = [Turn("user", "Say hello."), Turn("assistant", "Hello there.")]
    example = build_training_example(model.tokenizer, turns, model.signal_ids)
    ids = torch.tensor([example.input_ids])
    batch = NextGPTBatch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([example.labels]))
    projectors = {n: p for n, p in model.named_parameters() if n.startswith(("input_projector.", "output_projectors."))}
    was_training = model.training
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        one = model(batch)
        one.loss.backward()
        assert one.participation is None and all(p.grad is None for p in projectors.values())
        model.data_parallel = True
        several = model(batch)
        several.loss.backward()
    finally:
        model.data_parallel = False
        model.train(was_training)
    assert several.participation is not None and float(several.participation) == 0.0
    assert torch.equal(several.loss, one.loss)
    assert not [n for n, p in projectors.items() if p.grad is None or p.grad.any()]
    for m in MODALITIES:
        assert any(n.startswith(f"output_projectors.{m.value}.") for n in projectors)
