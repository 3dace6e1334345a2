"""Assemble what the training loop iterates: catalog datasets → batch sampler → DataLoader with the collator, plus the
decoders the optional denoising loss needs.

    data = build_training_data(cfg, model)
    data.batch_sampler.set_epoch(0)
    for collated in data.loader: ...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader

from nextgpt.config import Config
from nextgpt.constants import Modality
from nextgpt.data.catalog import load_catalog
from nextgpt.data.collate import Collator
from nextgpt.data.datasets import ConversationDataset, build_datasets, expected_caption_shapes
from nextgpt.data.samplers import build_batch_sampler
from nextgpt.decoders.base import load_decoder
from nextgpt.decoders.targets import build_target_loader
from nextgpt.model import NextGPT
from nextgpt.training.distributed import rank, world_size

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The loader, its (resumable) batch sampler, the datasets in concatenation order and the decoders for the
    denoising loss (None when it is off)."""

    loader: DataLoader
    batch_sampler: Any
    decoders: dict[Modality, Any] | None
    datasets: list[ConversationDataset]


def _load_denoising_decoders(cfg: Config) -> dict[Modality, Any] | None:
    if cfg.model.loss.denoise_weight <= 0:
        return None
    return {
        m: load_decoder(m, getattr(cfg.model.decoders, m.value), getattr(cfg.model.output_projectors, m.value).out_dim)
        for m in Modality
    }


def build_training_data(cfg: Config, model: NextGPT) -> TrainingData:
    """Build datasets, sampler and loader for `cfg.data`.

    Raises:
        ValueError: no datasets named, unknown names, or missing files (listed by the catalog validation).
    """
    if not cfg.data.datasets:
        raise ValueError("data.datasets is empty; name catalog datasets, e.g. data.datasets=[cc3m_enc]")
    catalog = load_catalog(cfg.data.catalog_path)
    decoders = _load_denoising_decoders(cfg)
    target_loader = None if decoders is None else build_target_loader(decoders, cfg.model.decoders)
    datasets = build_datasets(
        cfg.data,
        catalog,
        model.tokenizer,
        model.signal_ids,
        cfg.model.encoder,
        caption_embed_shapes=expected_caption_shapes(cfg.model.output_projectors),
        target_loader=target_loader,
        template=cfg.model.llm.template,
    )
    for dataset in datasets:
        logger.info("dataset %-24s %7d samples", dataset.name, len(dataset))
    batch_sampler = build_batch_sampler(
        cfg.data.sampler,
        [d.lengths() for d in datasets],
        cfg.train.micro_batch_size,
        seed=cfg.seed,
        rank=rank(),
        world_size=world_size(),
        dataset_groups=[d.modality_tags() for d in datasets],
    )
    collator = build_collator(cfg, model)
    # Pinned batches let the loop copy them to the GPU without waiting (`NextGPTBatch.to(..., non_blocking=True)`).
    pin = torch.cuda.is_available()
    loader = DataLoader(
        ConcatDataset(datasets),
        batch_sampler=batch_sampler,
        collate_fn=collator,
        num_workers=cfg.data.num_workers,
        persistent_workers=False,
        pin_memory=pin,
    )
    return TrainingData(loader=loader, batch_sampler=batch_sampler, decoders=decoders, datasets=datasets)


def build_collator(cfg: Config, model: NextGPT) -> Collator:
    """The run's collator: the model's tokens per media item, `data.packing`, and the template's opening to strip
    when `train.prefix_reuse` is on."""
    return Collator(
        pad_id=model.tokenizer.pad_token_id,
        max_length=cfg.model.llm.max_length,
        tokens_per_media=model.input_projector.num_tokens,
        packing=cfg.data.packing,
        prefix_ids=model.template_prefix_ids if cfg.train.prefix_reuse else (),
    )
