"""Evaluate checkpoints on benchmarks under frozen protocols, or on the tiny world's held-out split (same as the
`nextgpt-evaluate` command).

The command line lives in `nextgpt.cli.evaluate`; `python evaluate.py --help` lists its options.
"""

import sys

from nextgpt.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
