"""Official raw downloads -> annotation files in the formats the records parser reads, plus a catalog fragment.

One module per concern: `options` (what a run does), `pairs` / `instructions` / `t2m` (one converter per dataset
family), `runner` (convert, check with the training parser, write), `outputs` (atomic files), `report` (what was
skipped and why), `prompts` (seeded templates), `sources` (reading raw files, checking media names).

    from nextgpt.data.prepare import PrepareOptions, prepare
    reports = prepare(PrepareOptions(dataset="cc3m", root=Path("raw/cc3m"), out=Path("data/prepared")))
"""

from nextgpt.data.prepare.options import DATASETS, SPLITS, PrepareOptions
from nextgpt.data.prepare.report import DatasetReport, format_report
from nextgpt.data.prepare.runner import prepare

__all__ = ["DATASETS", "SPLITS", "DatasetReport", "PrepareOptions", "format_report", "prepare"]
