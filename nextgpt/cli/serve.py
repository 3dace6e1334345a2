"""OpenAI-compatible HTTP API over a checkpoint: POST /v1/chat/completions (streaming too), GET /v1/models, /health.

python serve.py --checkpoint-dir runs/stage_3/final                             # http://127.0.0.1:8000, docs at /docs
python serve.py --checkpoint-dir checkpoints/nextgpt-7b-merged --dtype float16 --low-memory --api-key "$KEY"
python serve.py --checkpoint-dir runs/stage_3/final --media-root /srv/media --media-output url --port 8001

Every flag below the checkpoint flags is a field of `nextgpt.serving.api_config.ServeConfig`. The API key can come
from the environment (NEXTGPT_API_KEY) instead of the command line, where other users of the machine could read it.
Binding another interface than 127.0.0.1 without a key is allowed, with a warning.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import os
import sys
import typing
from pathlib import Path

from nextgpt.cli.inference_args import OneLineArgumentParser, add_checkpoint_flags, parse_or_exit_code
from nextgpt.serving.api_config import ServeConfig
from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.serve")

API_KEY_ENV = "NEXTGPT_API_KEY"


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the help text of its flag)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(parser)
    group = parser.add_argument_group("serving (nextgpt.serving.api_config.ServeConfig)")
    docs = _field_docs(ServeConfig)
    hints = typing.get_type_hints(ServeConfig)
    for field in dataclasses.fields(ServeConfig):
        hint = hints[field.name]
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        convert = str if choices else kind
        help_text = f"{docs.get(field.name, '')} (default: {field.default})".replace("%", "%%")
        group.add_argument(
            "--" + field.name.replace("_", "-"), type=convert, choices=choices, default=field.default, help=help_text
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(_build_parser(), argv)
    if isinstance(args, int):
        return args
    setup_logging()

    def body() -> None:
        import uvicorn

        from nextgpt.inference.pipeline import NextGPTPipeline
        from nextgpt.inference.preflight import inspect_checkpoint, resolve_device
        from nextgpt.serving.api import create_app

        # 1. Settings and the checkpoint (without weights) before binding: a typo fails here, in one line.
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
        values["api_key"] = values["api_key"] or os.environ.get(API_KEY_ENV) or None
        config = ServeConfig(**values)
        if config.media_root is not None and not Path(config.media_root).is_dir():
            raise ValueError(f"--media-root {config.media_root} is not a folder; pass the folder to allow")
        device = resolve_device(args.device)
        inspect_checkpoint(args.checkpoint_dir, args.overrides)
        shown = {k: ("***" if k == "api_key" and v else v) for k, v in values.items()}
        logger.info("settings: %s", shown)
        if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
            logger.warning("serving on %s without an API key: anyone who reaches it can use it", config.host)

        # 2. Serve at once (/health answers 503) and load the weights in the background.
        def load() -> NextGPTPipeline:
            return NextGPTPipeline.from_pretrained(
                args.checkpoint_dir, device, args.dtype, args.low_memory, args.overrides, show_progress=False
            )

        if config.model_name is None:
            config = dataclasses.replace(config, model_name=Path(args.checkpoint_dir).name)
        uvicorn.run(create_app(config, loader=load), host=config.host, port=config.port, log_level="info")

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
