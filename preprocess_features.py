"""Cache ImageBind features of datasets (same as `nextgpt-preprocess-features`).

The command line lives in `nextgpt.cli.preprocess_features`; `python preprocess_features.py --help` lists its options.
"""

import sys

from nextgpt.cli.preprocess_features import main

if __name__ == "__main__":
    sys.exit(main())
