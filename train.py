"""Train one NExT-GPT stage from its YAML (same as the `nextgpt-train` command).

The command line lives in `nextgpt.cli.train`; `python train.py --help` lists its options.
"""

import sys

from nextgpt.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
