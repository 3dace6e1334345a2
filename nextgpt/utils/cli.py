"""The one exit-code rule of the top-level scripts: bad input ends a run with one readable line, not a traceback.

def main(argv=None) -> int:
    args = parser.parse_args(argv)

    def body() -> None:
        run(args)

    return run_reporting_errors(body)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from nextgpt.config import ConfigError

USER_ERRORS = (ConfigError, FileNotFoundError, ValueError)
"""What bad input raises (a wrong config key, a missing folder, a malformed file); other errors are bugs and keep
their traceback."""


def run_reporting_errors(body: Callable[[], object]) -> int:
    """Run a script's body and turn bad input into `error: <message>` on stderr.

    Returns:
        0 when the body finishes, 2 when it raised one of `USER_ERRORS`.
    """
    try:
        body()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
