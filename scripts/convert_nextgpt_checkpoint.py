"""Convert released NExT-GPT weights into a project checkpoint (same as `nextgpt-convert`).

The command line lives in `nextgpt.cli.convert_checkpoint`; `python scripts/convert_nextgpt_checkpoint.py --help`
lists its options.
"""

import sys

from nextgpt.cli.convert_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
