"""Gradio chat demo over a checkpoint (same as the `nextgpt-demo` command).

The command line lives in `nextgpt.cli.demo`; `python demo.py --help` lists its options.
"""

import sys

from nextgpt.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
