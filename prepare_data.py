"""Convert official raw dataset downloads into annotation files and a catalog (same as `nextgpt-prepare-data`).

The command line lives in `nextgpt.cli.prepare_data`; `python prepare_data.py --help` lists its options.
"""

import sys

from nextgpt.cli.prepare_data import main

if __name__ == "__main__":
    sys.exit(main())
