"""Cache the decoders' caption embeddings (same as `nextgpt-preprocess-embeddings`).

The command line lives in `nextgpt.cli.preprocess_embeddings`; `python preprocess_embeddings.py --help` lists its options.
"""

import sys

from nextgpt.cli.preprocess_embeddings import main

if __name__ == "__main__":
    sys.exit(main())
