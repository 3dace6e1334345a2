"""Merge a stage-3 checkpoint's LoRA and signal-token rows into a standalone folder for predict.py.

python merge_lora_weights.py --checkpoint-dir runs/stage_3/final --output-dir checkpoints/nextgpt-7b-merged
python merge_lora_weights.py --checkpoint-dir runs/stage_3/final --output-dir out model.llm.model_path=/data/vicuna

The output folder is written under a temporary name and renamed when complete. It must not be the checkpoint, lie
inside it or inside another checkpoint of its run; an existing folder is replaced only when it is empty or a previous
merge (or with --overwrite).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.merge")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint-dir", type=Path, required=True, help="checkpoint folder (e.g. runs/stage_3/final)"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="merged folder to write (written atomically)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty folder that is not a previous merge"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the checkpoint's config")
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.training.merge import merge_checkpoint

        merge_checkpoint(args.checkpoint_dir, args.output_dir, args.overrides, overwrite=args.overwrite)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
