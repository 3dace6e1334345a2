"""Cache the frozen ImageBind vectors of every input media file of catalog datasets (training then skips the encoder).

    python preprocess_features.py --config configs/stage_1.yaml --cache-dir data/features --num-workers 8
    python train.py --config configs/stage_1.yaml data.feature_cache_dir=data/features
    python preprocess_features.py --config configs/tiny_stage_1.yaml --datasets cc3m_enc --cache-dir data/tiny/features

Without --datasets, the config's data.datasets are cached; without --cache-dir, into its data.feature_cache_dir.

Uses the GPU when there is one; resumable (files already cached with the same content are skipped). The cache is
tied to the encoder checkpoint and its preprocessing settings (model.encoder); training refuses a cache written with
others, and re-running this script with the new settings rebuilds it. Unreadable files are reported and skipped.

Several GPUs or nodes share the work. Under a launcher each rank takes its part and rank 0 merges them at the end:

    torchrun --nproc_per_node 8 preprocess_features.py --config configs/stage_1.yaml --cache-dir data/features

Without one, run one command per part (e.g. one per node, all on the shared cache folder), then merge once:

    python preprocess_features.py --config configs/stage_1.yaml --cache-dir data/features --part 0/2   # node 0
    python preprocess_features.py --config configs/stage_1.yaml --cache-dir data/features --part 1/2   # node 1
    python preprocess_features.py --config configs/stage_1.yaml --cache-dir data/features --merge-parts
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from nextgpt.cli.preprocess_embeddings import build_parser, load_run_inputs
from nextgpt.data.feature_writer import DEFAULT_SHARD_ROWS
from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.preprocess_features")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "config naming the encoder (model.encoder)", batch_size=32, datasets_required=False)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: data.feature_cache_dir of the config")
    parser.add_argument("--num-workers", type=int, default=4, help="processes decoding media")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_ROWS, help="vectors per shard file")
    parser.add_argument(
        "--merge-parts", action="store_true", help="only merge the complete parts written with --part into the caches"
    )
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))
    launched = args.part is None and int(os.environ.get("WORLD_SIZE", "1")) > 1  # parts from the launcher's ranks

    def body() -> None:
        from nextgpt.components import check_components
        from nextgpt.data.records import load_records
        from nextgpt.encoders.imagebind import load_imagebind
        from nextgpt.jobs.feature_cache import cache_dataset_features, merge_feature_parts

        if args.num_workers < 0 or args.shard_size < 1:
            raise ValueError(
                f"--num-workers must be >= 0 and --shard-size >= 1, got {args.num_workers}, {args.shard_size}"
            )
        cfg, catalog = load_run_inputs(args, media=True)
        cache_dir = args.cache_dir or cfg.data.feature_cache_dir
        if cache_dir is None:
            raise ValueError("no cache folder: pass --cache-dir or set data.feature_cache_dir")
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise ValueError(f"cache folder {cache_dir} is a file; pass a folder to --cache-dir")
        check_components(cfg.model, encoder=True, decoders=(), llm=False)
        if args.merge_parts:
            for name in args.datasets:
                merge_feature_parts(Path(cache_dir), name, cfg.model.encoder, args.shard_size)
            return
        encoder = load_imagebind(cfg.model.encoder, device=args.device)
        for name in args.datasets:
            records = load_records(Path(catalog[name].annotation_path))
            options = {"batch_size": args.batch_size, "num_workers": args.num_workers, "shard_rows": args.shard_size}
            cache_dataset_features(records, catalog[name], name, encoder, Path(cache_dir), **options, part=args.part)
        if launched and _all_ranks_done() == 0:
            for name in args.datasets:
                merge_feature_parts(Path(cache_dir), name, cfg.model.encoder, args.shard_size)

    return run_reporting_errors(body)


def _all_ranks_done() -> int:
    """Wait until every rank of the launcher finished its part (a gloo barrier); returns this rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()
    rank = dist.get_rank()
    dist.destroy_process_group()
    return rank


if __name__ == "__main__":
    sys.exit(main())
