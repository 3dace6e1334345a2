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

from nextgpt.config import ConfigError, load_config
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.preprocess_embeddings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="config naming the decoders (model.decoders)")
    parser.add_argument("--catalog", type=Path, default=None, help="dataset catalog (default: data.catalog_path)")
    parser.add_argument("--datasets", nargs="+", required=True, help="catalog names whose targets to cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))
    try:
        from nextgpt.data.catalog import load_catalog, validate_datasets
        from nextgpt.data.records import load_records
        from nextgpt.decoders.base import load_decoder
        from nextgpt.decoders.caption_cache import cache_caption_embeddings, record_modalities

        cfg = load_config(args.config, overrides=args.overrides)
        catalog = load_catalog(args.catalog or cfg.data.catalog_path)
        validate_datasets(args.datasets, catalog)
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
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
