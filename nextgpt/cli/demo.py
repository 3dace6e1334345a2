"""Gradio chat demo: talk to a checkpoint with text, images, videos and sounds; generated media show in the chat.

python demo.py --checkpoint-dir runs/stage_3/final                       # http://127.0.0.1:7860
python demo.py --checkpoint-dir checkpoints/nextgpt-7b-merged --dtype float16 --low-memory --port 24004
python demo.py --checkpoint-dir runs/stage_3/final --host 0.0.0.0 --share  # reachable by others: opt-in only
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.demo")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", type=Path, required=True, help="stage-3 checkpoint or merged folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="per-file upload limit")
    parser.add_argument("--output-dir", type=Path, help="where generated media go (default: a temporary folder)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: config)")
    parser.add_argument("--low-memory", action="store_true", help="load each decoder when needed, offload it after")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the checkpoint's config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        import torch

        from nextgpt.inference.pipeline import NextGPTPipeline
        from nextgpt.serving.gradio_app import DemoSettings, build_demo, launch_demo

        if args.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
        settings = DemoSettings(
            host=args.host,
            port=args.port,
            share=args.share,
            max_upload_mb=args.max_upload_mb,
            output_dir=args.output_dir,
        )
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipeline = NextGPTPipeline.from_pretrained(
            args.checkpoint_dir, device=device, dtype=args.dtype, low_memory=args.low_memory, overrides=args.overrides
        )
        launch_demo(build_demo(pipeline, settings), settings, block=True)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
