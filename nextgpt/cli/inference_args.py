"""Command-line pieces shared by predict.py and demo.py: the parser that reports bad flags in one line, the flags
that pick and place a checkpoint, and the range check of every numeric flag (NaN and infinity included).

    parser = OneLineArgumentParser(description=__doc__)
    add_checkpoint_flags(parser)
    args = parser.parse_args(argv)          # a bad flag: "error: argument --fps: invalid int value: 'x'; ..." exit 2
    check_flag_ranges(args, ["temperature", "top_p"])   # raises ValueError naming the flag
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

CHECKPOINT_DEFAULT = "default: the checkpoint's config"
"""Help text for flags whose default comes from the checkpoint's config.yaml, not from this parser."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag like every other user error: one `error:` line and exit code 2.

    argparse's own report is the whole usage block plus `prog: error: ...`; with the one-line rule a script or a
    person reads the same shape for a typo in a flag as for a missing file.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}; see {self.prog} --help\n")
        sys.exit(2)


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """Parse `argv`; returns the exit code instead of raising SystemExit (bad flag: 2, --help: 0), so that `main`
    returns an exit code whatever happens."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """--checkpoint-dir, --device, --dtype, --low-memory and the trailing `key=value` config overrides."""
    parser.add_argument(
        "--checkpoint-dir", type=Path, required=True, help="stage-3 checkpoint folder (runs/.../final) or merged folder"
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    runtime.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help=f"weights dtype ({CHECKPOINT_DEFAULT})"
    )
    runtime.add_argument(
        "--low-memory",
        action="store_true",
        help="keep loaded decoders on the CPU and move one at a time to the device (decoders always load only "
        "when a reply first needs them)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key.sub=value overrides of the checkpoint's config, e.g. model.decoders.audio.guidance_scale=3",
    )


def _finite_at_least(low: float, inclusive: bool) -> Callable[[float], bool]:
    return lambda v: math.isfinite(v) and (v >= low if inclusive else v > low)


FLAG_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (_finite_at_least(0, True), "a finite number >= 0 (0 = greedy)"),
    "top_p": (lambda v: math.isfinite(v) and 0 < v <= 1, "in (0, 1]"),
    "max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "guidance_scale": (_finite_at_least(0, True), "a finite number >= 0 (<= 1 disables guidance)"),
    "num_inference_steps": (lambda v: v >= 1, "an integer >= 1"),
    "height": (lambda v: v > 0 and v % 8 == 0, "a positive multiple of 8 (the VAE works in 8-pixel blocks)"),
    "width": (lambda v: v > 0 and v % 8 == 0, "a positive multiple of 8 (the VAE works in 8-pixel blocks)"),
    "num_frames": (lambda v: v >= 1, "an integer >= 1"),
    "audio_seconds": (_finite_at_least(0, False), "a finite number > 0"),
    "fps": (lambda v: 1 <= v <= 240, "an integer from 1 to 240"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "max_prompt_chars": (lambda v: v >= 1, "an integer >= 1"),
    "max_upload_mb": (_finite_at_least(0, False), "a finite number > 0"),
    "port": (lambda v: 0 <= v <= 65535, "a TCP port from 0 to 65535"),
}
"""What each numeric flag accepts. NaN fails every comparison, so without the explicit finiteness check
`--temperature nan` used to pass and fail deep inside the sampler."""


def check_flag_ranges(args: argparse.Namespace, names: Iterable[str]) -> None:
    """Check the given numeric flags (unset ones are skipped) before anything loads.

    Raises:
        ValueError: the first flag out of range, with what it accepts.
    """
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        accepts, expected = FLAG_RULES[name]
        if not accepts(value):
            raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {value}")
