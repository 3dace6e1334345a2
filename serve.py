"""OpenAI-compatible HTTP API over a checkpoint (same as the `nextgpt-serve` command).

The command line lives in `nextgpt.cli.serve`; `python serve.py --help` lists its options.
"""

import sys

from nextgpt.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
