"""Write a tool library JSON listing every right tool of MLLM-Tool records (ToolMMBench ships no library file).

python -m nextgpt.cli.make_tool_library --catalog configs/datasets.yaml \
    --datasets tool_image tool_video tool_audio tool_text --output data/IT_data_ins/T+X-T_data/tools.json

Each tool gets the input modality it is first asked with, "text" out, an empty description and no runner; add a
description, and a `callable`, `decoder` or `pipeline` to the tools that should run (nextgpt.tools.library).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nextgpt.utils.cli import run_reporting_errors
from nextgpt.utils.logging import setup_logging

logger = logging.getLogger("nextgpt.make_tool_library")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=Path("configs/datasets.yaml"), help="dataset catalog")
    parser.add_argument("--datasets", nargs="+", required=True, help="catalog names of kind 'tool'")
    parser.add_argument("--output", type=Path, required=True, help="the tool library JSON to write")
    args = parser.parse_args(argv)
    setup_logging()
    logger.info("arguments: %s", vars(args))

    def body() -> None:
        from nextgpt.data.catalog import load_catalog
        from nextgpt.data.records import load_records
        from nextgpt.data.tool_records import group_tool_records, library_from_examples
        from nextgpt.eval.heldout import catalog_entry
        from nextgpt.tools.library import write_tool_library

        catalog = load_catalog(args.catalog)
        examples = []
        for name in args.datasets:
            entry = catalog_entry(catalog, name)
            if entry.kind != "tool":
                raise ValueError(f"dataset '{name}' has kind '{entry.kind}'; name datasets of kind 'tool'")
            grouped, stats = group_tool_records(load_records(entry.annotation_path), entry)
            logger.info(
                "%s: %d records, %d examples, %d malformed", name, stats.num_records, len(grouped), stats.num_malformed
            )
            examples += grouped
        library = library_from_examples(examples)
        write_tool_library(library, args.output)
        print(f"{len(library)} tools written to {args.output}")

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
