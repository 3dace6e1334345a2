"""Train one NExT-GPT stage from its YAML.

deepspeed --include localhost:0,1 train.py --config configs/stage_1.yaml
deepspeed train.py --config configs/stage_3.yaml train.lr=2e-4 train.micro_batch_size=2
python train.py --config configs/tiny_stage_1.yaml train.max_steps=20      # one process, CPU is fine
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.config import load_config, to_dict
from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="stage YAML (may inherit base.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args, _ = parser.parse_known_args(argv)  # the deepspeed launcher appends --local_rank=N
    setup_logging()

    def body() -> None:
        cfg = load_config(args.config, overrides=[o for o in args.overrides if not o.startswith("--")])
        logger.info("config: %s", to_dict(cfg))
        from nextgpt.training.loop import run

        run(cfg)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
