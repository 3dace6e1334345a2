"""Merge a stage-3 checkpoint into a standalone folder (same as `nextgpt-merge`).

The command line lives in `nextgpt.cli.merge`; `python merge_lora_weights.py --help` lists its options.
"""

import sys

from nextgpt.cli.merge import main

if __name__ == "__main__":
    sys.exit(main())
