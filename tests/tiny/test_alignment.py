"""Stage 1 can learn on the tiny world.

The pretrained tiny ImageBind must tell the world's media apart, and the pretrained tiny LLM must read the media slot,
so that training only the input projector (frozen LLM, frozen encoder) lowers the caption loss a lot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nextgpt.config import Config, ImageBindConfig
from nextgpt.constants import MODALITIES, Modality
from nextgpt.tiny.pretrain_encoder import ATTRIBUTE_VALUES, WorldMedia, mean_cosine_between_captions

STAGE_1_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_stage_1.yaml"
NUM_STEPS = 100
LR = 1e-2
CAPTION_DATASETS = {Modality.IMAGE: "cc3m_enc", Modality.VIDEO: "webvid_enc", Modality.AUDIO: "audiocap_enc"}


def _build_stage_1(tiny_root: Path, catalog: Path, dataset: str):
    """The stage-1 model and one collated batch of `dataset`, with the ImageBind vectors precomputed."""
    from nextgpt.config import load_config
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.collate import Collator
    from nextgpt.data.datasets import build_datasets
    from nextgpt.model import NextGPTBatch, build_nextgpt
    from nextgpt.tiny.build import tiny_path_overrides

    overrides = [f"data.catalog_path={catalog}", f"data.datasets=[{dataset}]"]
    cfg = load_config(STAGE_1_CONFIG, overrides=tiny_path_overrides(tiny_root) + overrides)
    torch.manual_seed(0)
    model = build_nextgpt(cfg.model)
    data = build_datasets(
        cfg.data, load_catalog(cfg.data.catalog_path), model.tokenizer, model.signal_ids, cfg.model.encoder
    )
    collator = Collator(model.tokenizer.pad_token_id, cfg.model.llm.max_length, model.input_projector.num_tokens)
    batch = collator([data[0][i] for i in range(len(data[0]))]).batch
    features = {m: model.encoder(m, media) for m, media in batch.media.items()}
    return model, NextGPTBatch(batch.input_ids, batch.attention_mask, batch.labels, media_features=features)


def _train_input_projector(model, batch, num_steps: int, lr: float) -> list[float]:
    """Adam on the input projector only; the caption CE before every step and after the last."""
    model.requires_grad_(False)
    model.input_projector.requires_grad_(True)
    optimizer = torch.optim.Adam(model.input_projector.parameters(), lr=lr)
    losses = []
    for _ in range(num_steps):
        out = model(batch)
        losses.append(float(out.loss_terms["ce"]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        losses.append(float(model(batch).loss_terms["ce"]))
    return losses


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_training_only_the_input_projector_halves_the_caption_loss(
    tiny_root: Path, world_catalog: Path, modality: Modality
) -> None:
    model, batch = _build_stage_1(tiny_root, world_catalog, CAPTION_DATASETS[modality])
    assert list(batch.media_features) == [modality]
    assert model.cfg.input_projector.type == "linear"
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}

    losses = _train_input_projector(model, batch, NUM_STEPS, LR)

    assert losses[-1] < 0.5 * losses[0], f"{modality.value} caption CE {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert all(torch.equal(v, llm_before[k]) for k, v in model.llm.state_dict().items())


def _embed_all(encoder_cfg: ImageBindConfig, media: WorldMedia) -> torch.Tensor:
    from nextgpt.encoders.imagebind import load_imagebind

    encoder = load_imagebind(encoder_cfg)
    return torch.cat([encoder(media.modality, inputs[None]) for inputs in media.inputs])  # N x (1, D) -> (N, D)


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_pretrained_imagebind_separates_different_captions(
    pretrained_cfg: Config, world_media: dict[Modality, WorldMedia], tmp_path: Path, modality: Modality
) -> None:
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    encoder_cfg = pretrained_cfg.model.encoder
    random_path = write_tiny_imagebind(tmp_path / "random.pth", encoder_cfg, seed=0)
    media = world_media[modality]

    pretrained = mean_cosine_between_captions(_embed_all(encoder_cfg, media), media.captions())
    random = mean_cosine_between_captions(
        _embed_all(dataclasses.replace(encoder_cfg, checkpoint_path=random_path), media), media.captions()
    )

    assert random > 0.5
    assert pretrained < 0.3
    assert pretrained < random - 0.4


@pytest.mark.numerics
@pytest.mark.parametrize("modality", MODALITIES, ids=[m.value for m in MODALITIES])
def test_pretrained_imagebind_embeddings_identify_every_attribute(
    pretrained_cfg: Config, world_media: dict[Modality, WorldMedia], modality: Modality
) -> None:
    media = world_media[modality]
    unit = torch.nn.functional.normalize(_embed_all(pretrained_cfg.model.encoder, media), dim=-1)

    for attribute, labels in media.labels().items():
        num_values = len(ATTRIBUTE_VALUES[modality][attribute])
        centroids = torch.stack([unit[labels == v].mean(dim=0) for v in range(num_values)])  # (V, D)
        predicted = (unit @ centroids.T).argmax(dim=-1)  # (N, D) x (D, V) -> (N,)
        accuracy = float((predicted == labels).float().mean())
        assert accuracy >= 0.85, f"{modality.value} {attribute}: nearest-centroid accuracy {accuracy:.2f}"


def test_pretrained_imagebind_keeps_the_official_layout(
    tiny_root: Path, pretrained_cfg: Config, tmp_path: Path
) -> None:
    from nextgpt.encoders.imagebind import load_imagebind, split_unused_keys
    from nextgpt.tiny.build import IMAGEBIND_FILE
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    random_path = write_tiny_imagebind(tmp_path / "random.pth", pretrained_cfg.model.encoder, seed=0)
    random_state = torch.load(random_path, weights_only=True)
    trained_state = torch.load(tiny_root / IMAGEBIND_FILE, weights_only=True)

    assert {k: v.shape for k, v in trained_state.items()} == {k: v.shape for k, v in random_state.items()}
    used, _ = split_unused_keys(trained_state)
    unused = set(trained_state) - set(used)
    assert unused and all(torch.equal(trained_state[k], random_state[k]) for k in unused)
    for tower in ("vision", "audio"):
        key = f"modality_trunks.{tower}.blocks.0.attn.in_proj_weight"
        assert not torch.equal(trained_state[key], random_state[key])
    load_imagebind(pretrained_cfg.model.encoder)  # strict: every key and shape checked
