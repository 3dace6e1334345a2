"""Options of one prepare_data.py run, checked when built (each field is also a command-line flag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nextgpt.data.prepare.prompts import DEFAULT_SEED

DATASETS = ("cc3m", "webvid", "audiocap", "llava", "alpaca", "videochat", "t2m", "mosit")
"""Datasets prepare_data.py converts; `all` converts every one found under the root (see the runner's layout)."""

SPLITS = ("comprehension", "generation")
"""Outputs of the pair datasets (CC3M, WebVid, AudioCaps): stage-1 X->text and stage-2 text->X."""


@dataclass
class PrepareOptions:
    """One conversion run."""

    dataset: str
    """A name of `DATASETS`, or `all`."""
    root: Path
    """The dataset's download folder; with `all`, the folder holding one subfolder per dataset."""
    out: Path = Path("data/prepared")
    """Output folder: `<dataset>/*.json`, `datasets.yaml` (catalog fragment) and `report.json`."""
    splits: tuple[str, ...] = SPLITS
    """Which pair-dataset outputs to write."""
    limit: int | None = None
    """Convert only the first N raw records of each dataset (a quick look before the full run)."""
    seed: int = DEFAULT_SEED
    """Seed of the prompt-template draws; recorded in the report."""
    annotation: Path | None = None
    """Raw annotation file replacing the layout's default name (one dataset only)."""
    media_dir: Path | None = None
    """Media folder replacing the layout's default (one dataset only)."""
    embed_dir: Path | None = None
    """Where preprocess_embeddings.py will write the caption embeddings (default `<out>/embed`); each dataset gets
    its own subfolder so names of two datasets never meet."""
    llava_image_every_turn: bool = True
    """LLaVA: put the image before or after every user turn, as NExT-GPT's own builder does (False: only the first
    turn, as in LLaVA)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.root, self.out = Path(self.root), Path(self.out)
        if self.dataset not in (*DATASETS, "all"):
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)} or all, got {self.dataset!r}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown or not self.splits:
            raise ValueError(f"--split must be a comma-separated subset of {','.join(SPLITS)}, got {self.splits!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.dataset == "all" and (self.annotation is not None or self.media_dir is not None):
            raise ValueError("--annotation and --media-dir name one dataset's files; pass a single --dataset with them")
        if not self.root.is_dir():
            raise FileNotFoundError(f"--root {self.root} is not a folder; pass the folder of the raw download")

    @property
    def embed_root(self) -> Path:
        """The caption-embedding folder holding one subfolder per dataset."""
        return self.embed_dir if self.embed_dir is not None else self.out / "embed"
