"""Write the tiny synthetic world (train + held-out splits, every official annotation format) to data/tiny/.

    python data/make_tiny_world.py                                  # -> data/tiny/datasets.yaml (seed 0)
    python data/make_tiny_world.py --out /tmp/world --num-train 16 --num-eval 8 --seed 1
    python -m nextgpt.cli.make_tiny_world --benchmarks-only     # add benchmarks/ (evaluate.py) to an existing world

The catalog names every format twice: `<name>` (train) and `<name>_eval` (held out); `metadata.json` lists each item's
attributes and caption. Caption embeddings are written afterwards by preprocess_embeddings.py.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from nextgpt.tiny.benchmarks import write_tiny_benchmarks
from nextgpt.tiny.data import write_synthetic_world
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.data.make_tiny_world")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=Path("data/tiny"), help="output folder (its catalog: datasets.yaml)"
    )
    parser.add_argument("--num-train", type=int, default=96, help="training items per modality")
    parser.add_argument("--num-eval", type=int, default=32, help="held-out items per modality")
    parser.add_argument("--seed", type=int, default=0, help="seed of every attribute draw")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing output folder first")
    parser.add_argument(
        "--benchmarks-only", action="store_true", help="only (re)write benchmarks/ of an existing world"
    )
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))
    if args.benchmarks_only:
        try:
            logger.info("benchmarks: %s", write_tiny_benchmarks(args.out))
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if (args.out / "datasets.yaml").exists():
        if not args.overwrite:
            print(f"error: {args.out} already holds a world; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    try:
        catalog_path = write_synthetic_world(args.out, args.num_train, args.num_eval, seed=args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info("catalog: %s", catalog_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
