"""Write checkpoints/tiny/: a tiny LLaMA folder, an ImageBind .pth and three diffusers pipelines, in the real formats.

python scripts/build_tiny_checkpoints.py                 # -> checkpoints/tiny (what configs/tiny.yaml reads)
python scripts/build_tiny_checkpoints.py --out /tmp/tiny --config configs/tiny.yaml
python -m nextgpt.cli.build_tiny --metric-models-only      # add metrics/ (evaluate.py's models) to existing ones
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.config import ConfigError, load_config
from nextgpt.tiny.build import METRICS_SUBDIR, build_tiny_checkpoints
from nextgpt.tiny.metric_models import write_tiny_metric_models
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.scripts.build_tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("checkpoints/tiny"), help="output folder")
    parser.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"), help="tiny config giving the sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric-models-only", action="store_true", help="only write metrics/ (evaluate.py's models)")
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))
    try:
        if args.metric_models_only:
            write_tiny_metric_models(args.out / METRICS_SUBDIR, seed=args.seed)
        else:
            build_tiny_checkpoints(args.out, load_config(args.config), seed=args.seed)
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info("done: %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
