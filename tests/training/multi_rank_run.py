"""One rank of a multi-process tiny training run (launched by `torch.distributed.run` from test_step_loss.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/training/multi_rank_run.py TINY CATALOG OUT MICRO DS.json \
        STEPS CONFIG [key=value ...]

Trains a tiny stage CONFIG (e.g. tiny_stage_2.yaml) with the quick settings for a few steps and writes this rank's
logged losses to OUT/losses_rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_helpers import quick_cfg  # noqa: E402

from nextgpt.training.loop import run  # noqa: E402


def main(argv: list[str]) -> int:
    tiny_root, catalog, out, micro, ds, steps, config, *extra = argv
    cfg = quick_cfg(
        Path(tiny_root),
        Path(catalog),
        Path(out),
        f"train.max_steps={steps}",
        f"train.micro_batch_size={micro}",
        f"train.deepspeed_config={ds}",
        *extra,
        config=config,
    )
    result = run(cfg)
    rank = os.environ.get("RANK", "0")
    (Path(out) / f"losses_rank{rank}.json").write_text(json.dumps(result.losses))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
