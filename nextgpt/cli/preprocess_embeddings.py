"""Cache the decoders' caption embeddings (L2 targets of stages 2 and 3) for catalog datasets.

    python preprocess_embeddings.py --config configs/base.yaml --datasets cc3m_dec webvid_dec audiocap_dec
    python preprocess_embeddings.py --config configs/tiny.yaml --catalog data/tiny/datasets.yaml --datasets cc3m_dec

Uses the GPU when there is one; resumable (existing files are skipped). The decoder set must be the one used for
training and inference: a cache made with SD-1.5 (77x768) does not fit SD-2 (77x1024).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from nextgpt.config import Config, DatasetEntryConfig, load_config
from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.preprocess_embeddings")


def build_parser(
    description: str, config_help: str, batch_size: int, datasets_required: bool = True
) -> argparse.ArgumentParser:
    """The CLI the preprocessing scripts share: --config --catalog --datasets --batch-size --device + overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help=config_help)
    parser.add_argument("--catalog", type=Path, default=None, help="dataset catalog (default: data.catalog_path)")
    datasets_help = "catalog names whose files to cache" + ("" if datasets_required else " (default: data.datasets)")
    parser.add_argument("--datasets", nargs="+", required=datasets_required, help=datasets_help)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser


def load_run_inputs(args: argparse.Namespace) -> tuple[Config, dict[str, DatasetEntryConfig]]:
    """Resolved config and catalog of a preprocessing run; every named dataset is checked against the catalog.

    `args.datasets` left unset is filled in from the config's `data.datasets`.

    Raises:
        ConfigError / FileNotFoundError / ValueError: bad config, catalog or dataset names (one line each).
    """
    from nextgpt.data.catalog import load_catalog, validate_datasets

    cfg = load_config(args.config, overrides=args.overrides)
    catalog = load_catalog(args.catalog or cfg.data.catalog_path)
    args.datasets = args.datasets or list(cfg.data.datasets)
    if not args.datasets:
        raise ValueError(f"no datasets: pass --datasets or set data.datasets in {args.config}")
    validate_datasets(args.datasets, catalog)
    return cfg, catalog


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "config naming the decoders (model.decoders)", batch_size=64)
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.data.records import load_records
        from nextgpt.decoders.base import load_decoder
        from nextgpt.decoders.caption_cache import cache_caption_embeddings, record_modalities

        cfg, catalog = load_run_inputs(args)
        decoders = {}
        for name in args.datasets:
            entry = catalog[name]
            if entry.caption_embed_dir is None:
                raise ValueError(f"dataset {name} has no caption_embed_dir in the catalog; add one to cache embeddings")
            records = load_records(Path(entry.annotation_path))
            for modality in record_modalities(records, entry):
                if modality not in decoders:
                    width = getattr(cfg.model.output_projectors, modality.value).out_dim
                    decoders[modality] = load_decoder(
                        modality, getattr(cfg.model.decoders, modality.value), width, device=args.device
                    )
                cache_caption_embeddings(records, entry, modality, decoders[modality], args.batch_size)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
