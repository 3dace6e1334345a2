"""Turn released NExT-GPT weights into a project checkpoint folder that predict.py, the demo and merge take.

    # the legacy release (7b_tiva_v0/pytorch_model.pt), run on Vicuna-7B v0
    python scripts/convert_nextgpt_checkpoint.py legacy --checkpoint-dir ckpt/7b_tiva_v0 \
        --output-dir checkpoints/nextgpt-7b-tiva-v0 model.llm.model_path=checkpoints/vicuna-7b-v0
    # what the NEW code's scripts save between stages
    python scripts/convert_nextgpt_checkpoint.py new --input-adapter checkpoints/pretrain_enc_1/mm_input_projector.bin \
        --output-adapter checkpoints/pretrain_dec_1/mm_output_projector.bin --finetune-dir checkpoints/finetune_1 \
        --output-dir checkpoints/nextgpt-new --config base model.llm.model_path=checkpoints/vicuna-7b-v1.5

The architecture (projector shapes, LoRA rank, template, signal tokens) is read from the weights; component paths,
generation and decoder defaults come from --config (legacy default: the shipped `nextgpt_7b_tiva_v0`, which holds the
legacy demo's settings) and the key=value overrides. Nothing is downloaded; the LLM is not loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    legacy = sub.add_parser("legacy", help="the legacy release (pytorch_model.pt)")
    legacy.add_argument("--checkpoint-dir", type=Path, required=True, help="folder holding pytorch_model.pt")
    legacy.add_argument("--config", default="nextgpt_7b_tiva_v0", help="base config (paths, generation defaults)")
    new = sub.add_parser("new", help="the NEW code's mm_*_projector.bin / LoRA folder")
    new.add_argument("--input-adapter", type=Path, help="mm_input_projector.bin (stage 1)")
    new.add_argument("--output-adapter", type=Path, help="mm_output_projector.bin (stage 2)")
    new.add_argument("--finetune-dir", type=Path, help="stage-3 folder (adapter_config.json, non_lora_trainables.bin)")
    new.add_argument("--config", default="base", help="base config (paths, generation defaults)")
    for p in (legacy, new):
        p.add_argument("--output-dir", type=Path, required=True, help="checkpoint folder to write (atomically)")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the base config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> None:
        from nextgpt.compat.writer import write_converted_checkpoint
        from nextgpt.config import load_config

        cfg = load_config(args.config, overrides=args.overrides)
        if args.format == "legacy":
            from nextgpt.compat.legacy import convert_legacy_state, read_legacy_weights

            state = read_legacy_weights(args.checkpoint_dir)
            converted = convert_legacy_state(state, cfg, source=str(Path(args.checkpoint_dir).absolute()))
        else:
            from nextgpt.compat.new_codebase import NewCodebaseFiles, convert_new_codebase

            files = NewCodebaseFiles(args.input_adapter, args.output_adapter, args.finetune_dir)
            if not any((files.input_adapter, files.output_adapter, files.finetune_dir)):
                raise ValueError("name at least one of --input-adapter, --output-adapter, --finetune-dir")
            converted = convert_new_codebase(files, cfg)
        out = write_converted_checkpoint(args.output_dir, converted, overwrite=args.overwrite)
        print(
            f"wrote {out} ({len(converted.trainable)} tensors, {len(converted.lora)} LoRA tensors); run it with: "
            f"python predict.py --checkpoint-dir {out} --prompt '...'"
        )

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
