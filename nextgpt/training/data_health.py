"""Per-epoch accounting of usable and skipped samples, so bad data stops a run instead of spinning it.

Bad samples are skipped one by one (`data.bad_sample_policy=skip`); when every sample is bad, e.g. a catalog's
`image_dir` points at the wrong folder, the loop would otherwise go round epoch after epoch without a step. An epoch
pass that trains no micro-batch is an error naming each dataset and folder; a dataset none of whose samples was
usable in an epoch is a warning while the others keep training.

    health = EpochHealth(data.datasets, catalog_path)
    health.start_epoch(epoch)
    health.record(collated, trained=collated.batch is not None)
    health.finish_epoch()          # raises NoUsableDataError / warns
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextgpt.constants import MODALITIES

logger = logging.getLogger(__name__)

FOLDER_FIELDS = (*(f"{m.value}_dir" for m in MODALITIES), "caption_embed_dir")


class NoUsableDataError(ValueError):
    """A whole epoch pass held no usable sample; the message names the datasets, their folders and the fix."""


@dataclass
class _Counts:
    seen: int = 0
    skipped: int = 0
    first_reason: str | None = None
    first_path: Path | None = None


class EpochHealth:
    """Counts, per dataset, the samples seen and skipped in the current epoch pass.

    Args:
        datasets: the run's datasets (`name` and catalog `entry` of each).
        catalog_path: `data.catalog_path`, named in the messages.
    """

    def __init__(self, datasets: Sequence[Any], catalog_path: Path) -> None:
        self.entries = {d.name: d.entry for d in datasets}
        self.catalog_path = catalog_path
        self.epoch = 0
        self.num_trained = 0
        self.num_micro = 0
        self.counts: dict[str, _Counts] = {}

    def start_epoch(self, epoch: int) -> None:
        """Reset the counts for an epoch pass (a resumed pass starts mid-epoch)."""
        self.epoch, self.num_trained, self.num_micro = epoch, 0, 0
        self.counts = {}

    def record(self, collated: Any, trained: bool) -> None:
        """Account one micro-batch from the loader (`collated` may be None for an empty batch)."""
        self.num_micro += 1
        self.num_trained += int(trained)
        if collated is None:
            return
        for name in collated.datasets:
            self.counts.setdefault(name, _Counts()).seen += 1
        for (name, path), reason in zip(collated.skipped, collated.skip_reasons, strict=True):
            counts = self.counts.setdefault(name, _Counts())
            counts.seen += 1
            counts.skipped += 1
            if counts.first_reason is None:
                counts.first_reason, counts.first_path = reason, path

    def _describe(self, name: str, counts: _Counts) -> str:
        entry = self.entries.get(name)
        folders = []
        for field_name in FOLDER_FIELDS:
            folder = getattr(entry, field_name, None) if entry is not None else None
            if folder is not None and counts.first_path is not None and Path(folder) in counts.first_path.parents:
                folders.append(f"{field_name} {folder}")
        where = f"; check {', '.join(folders)} in the catalog {self.catalog_path}" if folders else ""
        return (
            f"every sample of {name} was skipped in epoch {self.epoch} ({counts.skipped} of {counts.seen}; first: "
            f"{counts.first_reason}){where}"
        )

    def finish_epoch(self) -> None:
        """Judge the finished pass.

        Raises:
            NoUsableDataError: the pass consumed micro-batches but trained none of them.
        """
        all_bad = {n: c for n, c in self.counts.items() if c.seen and c.skipped == c.seen}
        if self.num_micro and not self.num_trained:
            described = "; ".join(self._describe(n, c) for n, c in sorted(all_bad.items()))
            raise NoUsableDataError(
                f"no usable sample in epoch {self.epoch} ({self.num_micro} micro-batches): "
                f"{described or 'every batch was empty'}; fix the data or the catalog, then run the same command"
            )
        for name, counts in sorted(all_bad.items()):
            logger.warning("%s; the other datasets keep training", self._describe(name, counts))
