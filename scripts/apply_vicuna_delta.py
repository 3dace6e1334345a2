"""Build Vicuna v0 from LLaMA-7B and the released delta (the LLM of NExT-GPT's released checkpoint); no downloads.

    python scripts/apply_vicuna_delta.py --base checkpoints/llama-7b --delta checkpoints/vicuna-7b-delta-v0 \
        --output checkpoints/vicuna-7b-v0
    python train.py --config configs/stage_1.yaml model.llm.model_path=checkpoints/vicuna-7b-v0

Both inputs are local HF folders (fetch them once, e.g. `huggingface-cli download lmsys/vicuna-7b-delta-v0
--local-dir checkpoints/vicuna-7b-delta-v0`). The output holds safetensors shards, their index and the delta's config
and 32,001-token tokenizer; it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.apply_vicuna_delta")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="HF LLaMA-7B folder the delta was made from")
    parser.add_argument("--delta", type=Path, required=True, help="the delta folder (lmsys/vicuna-7b-delta-v0)")
    parser.add_argument("--output", type=Path, required=True, help="folder to write (replaced when complete)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="dtype of the written weights")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="size at which an output shard is closed")
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.llm.vicuna_delta import apply_vicuna_delta

        if args.max_shard_gb <= 0:
            raise ValueError(f"--max-shard-gb must be > 0, got {args.max_shard_gb}")
        result = apply_vicuna_delta(
            args.base, args.delta, args.output, DTYPES[args.dtype], max_shard_bytes=int(args.max_shard_gb * 2**30)
        )
        logger.info("%s: %d tensors, vocabulary %d, shards %s", result.output_dir, result.num_tensors,
                    result.vocab_size, ", ".join(result.shard_files))  # fmt: skip

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
