"""Cache the decoders' caption embeddings (L2 targets of stages 2 and 3) for catalog datasets.

    python preprocess_embeddings.py --config configs/base.yaml --datasets cc3m_dec webvid_dec audiocap_dec
    python preprocess_embeddings.py --config configs/tiny.yaml --catalog data/tiny/datasets.yaml --datasets cc3m_dec

Uses the GPU when there is one; resumable (existing files are skipped). The decoder set must be the one used for
training and inference: a cache made with SD-1.5 (77x768) does not fit SD-2 (77x1024).

Several processes or nodes share the work with `--part I/N` each (or under a launcher, e.g.
`torchrun --nproc_per_node 8 preprocess_embeddings.py ...`, one part per rank); each file is written by one part.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from nextgpt.config import Config, DatasetEntryConfig, load_config
from nextgpt.constants import Modality
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
    parser.add_argument(
        "--part",
        default=None,
        metavar="I/N",
        help="do only part I of N of the files (0 <= I < N), so N processes or nodes share the work; default: the "
        "launcher's RANK/WORLD_SIZE when it starts several processes, else all",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser


def resolve_part(value: str | None) -> tuple[int, int]:
    """(i, n) from `--part I/N`, else from a launcher's RANK and WORLD_SIZE (torchrun, deepspeed), else (0, 1).

    Raises:
        ValueError: not I/N with 0 <= I < N.
    """
    import os

    if value is None:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    index, sep, num = value.partition("/")
    if not sep or not index.isdigit() or not num.isdigit() or not 0 <= int(index) < int(num):
        raise ValueError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {value!r}")
    return int(index), int(num)


def rank_device(device: str) -> str:
    """A launcher's local rank picks its own GPU: `cuda` becomes `cuda:<LOCAL_RANK>` when LOCAL_RANK is set."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device


def check_device(device: str) -> None:
    """Refuse a --device this machine does not have, in one line (torch would fail deep in the first transfer).

    Raises:
        ValueError: not a device name, or a CUDA device without a visible GPU.
    """
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device name; pass cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but no CUDA GPU is visible; pass --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device} but only {torch.cuda.device_count()} GPU(s) are visible")


def load_run_inputs(args: argparse.Namespace, media: bool = True) -> tuple[Config, dict[str, DatasetEntryConfig]]:
    """Resolved config and catalog of a preprocessing run; arguments and every named dataset are checked.

    `args.datasets` left unset is filled in from the config's `data.datasets`. Caption embeddings are not required
    (they are what preprocess_embeddings.py writes).

    Args:
        args: the parsed command line of `build_parser`.
        media: sample the datasets' input media files (preprocess_features.py reads them).

    Raises:
        ConfigError / FileNotFoundError / ValueError: bad arguments, config, catalog or dataset names (one line).
    """
    from nextgpt.data.catalog import load_catalog, validate_datasets

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    args.part = resolve_part(args.part)
    args.device = rank_device(args.device)
    check_device(args.device)
    cfg = load_config(args.config, overrides=args.overrides)
    catalog = load_catalog(args.catalog or cfg.data.catalog_path)
    args.datasets = args.datasets or list(cfg.data.datasets)
    if not args.datasets:
        raise ValueError(f"no datasets: pass --datasets or set data.datasets in {args.config}")
    validate_datasets(args.datasets, catalog, media=media, embeddings=False)
    return cfg, catalog


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "config naming the decoders (model.decoders)", batch_size=64)
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.components import check_components
        from nextgpt.data.records import load_records
        from nextgpt.decoders.base import load_decoder
        from nextgpt.jobs.caption_cache import cache_caption_embeddings, record_modalities

        cfg, catalog = load_run_inputs(args, media=False)
        records, modalities = {}, {}
        for name in args.datasets:
            entry = catalog[name]
            if entry.caption_embed_dir is None:
                raise ValueError(f"dataset {name} has no caption_embed_dir in the catalog; add one to cache embeddings")
            if Path(entry.caption_embed_dir).exists() and not Path(entry.caption_embed_dir).is_dir():
                raise ValueError(f"{name}: caption_embed_dir {entry.caption_embed_dir} is a file; set it to a folder")
            records[name] = load_records(Path(entry.annotation_path))
            modalities[name] = record_modalities(records[name], entry)
        needed = sorted({m for ms in modalities.values() for m in ms}, key=list(Modality).index)
        check_components(cfg.model, encoder=False, decoders=needed, llm=False)
        decoders = {}
        for name in args.datasets:
            entry = catalog[name]
            for modality in modalities[name]:
                if modality not in decoders:
                    width = getattr(cfg.model.output_projectors, modality.value).out_dim
                    decoders[modality] = load_decoder(
                        modality, getattr(cfg.model.decoders, modality.value), width, device=args.device
                    )
                cache_caption_embeddings(
                    records[name], entry, modality, decoders[modality], args.batch_size, part=args.part
                )

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
