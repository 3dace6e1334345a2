"""Any-to-any inference from the command line (same as the `nextgpt-predict` command).

The command line lives in `nextgpt.cli.predict`; `python predict.py --help` lists its options.
"""

import sys

from nextgpt.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
