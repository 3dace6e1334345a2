"""Gradio chat demo: talk to a checkpoint with text, images, videos and sounds; generated media show in the chat.

python demo.py --checkpoint-dir runs/stage_3/final                       # http://127.0.0.1:7860
python demo.py --checkpoint-dir checkpoints/nextgpt-7b-merged --dtype float16 --low-memory --port 24004
python demo.py --checkpoint-dir runs/stage_3/final --host 0.0.0.0 --share  # reachable by others: opt-in only

The page has Stop (ends the running reply within a token or a denoising step), Retry, Clear, example prompts and the
checkpoint's path. Messages longer than --max-prompt-chars and uploads that do not decode are refused with a message.
Decoders load when a reply first asks for their modality.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.cli.inference_args import (
    OneLineArgumentParser,
    add_checkpoint_flags,
    check_flag_ranges,
    parse_or_exit_code,
)
from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.demo")


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(parser)
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="TCP port (default: 7860)")
    serve.add_argument("--share", action="store_true", help="open a public Gradio share link")
    serve.add_argument("--max-upload-mb", type=float, default=50.0, help="per-file upload limit (default: 50)")
    serve.add_argument(
        "--max-prompt-chars", type=int, default=4000, help="longest message accepted, in characters (default: 4000)"
    )
    serve.add_argument("--output-dir", type=Path, help="where generated media go (default: a temporary folder)")
    serve.add_argument("--tools", type=Path, help="tool library JSON: run the tool each reply chooses and show it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(_build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.inference.outputs import prepare_output_dir
        from nextgpt.inference.pipeline import NextGPTPipeline
        from nextgpt.inference.preflight import resolve_device
        from nextgpt.serving.gradio_app import DemoSettings, build_demo, launch_demo

        # 1. Flags, output folder and device before anything loads; the checkpoint is checked by from_pretrained.
        check_flag_ranges(args, ("port", "max_upload_mb", "max_prompt_chars"))
        output_dir = prepare_output_dir(args.output_dir) if args.output_dir is not None else None
        device = resolve_device(args.device)
        settings = DemoSettings(
            host=args.host,
            port=args.port,
            share=args.share,
            max_upload_mb=args.max_upload_mb,
            max_prompt_chars=args.max_prompt_chars,
            output_dir=output_dir,
            tools_path=args.tools,
        )
        # 2. Load and serve.
        pipeline = NextGPTPipeline.from_pretrained(
            args.checkpoint_dir, device, args.dtype, args.low_memory, args.overrides, show_progress=None
        )
        launch_demo(build_demo(pipeline, settings), settings, block=True)

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
