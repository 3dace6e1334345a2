"""Atomic folder replacement, shared by checkpoint saves, merges, conversions and the Vicuna delta helper.

replace_folder(staging, target)   # readers see the old `target` or the complete new one, never a mix
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(staging: Path, target: Path) -> None:
    """Put a complete folder in place by renames only: readers see the old `target` or the new one, never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
