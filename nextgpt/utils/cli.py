"""The one exit-code rule of the top-level scripts: bad input ends a run with one readable line, not a traceback.

def main(argv=None) -> int:
    args = parser.parse_args(argv)

    def body() -> None:
        run(args)

    return run_reporting_errors(body)
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from nextgpt.config import ConfigError

USER_ERRORS = (ConfigError, FileNotFoundError, ValueError)
"""What bad input raises (a wrong config key, a missing folder, a malformed file); other errors are bugs and keep
their traceback."""

_OS_FIXES = {
    errno.ENOSPC: "free space on that disk or write somewhere else",
    errno.EDQUOT: "free space in your quota or write somewhere else",
    errno.EACCES: "make it writable (or readable) for you or choose another folder",
    errno.EPERM: "make it writable (or readable) for you or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.EISDIR: "pass a file there, not a folder",
    errno.ENOTDIR: "a part of that path is a file; pass a folder path",
    errno.EEXIST: "remove it or choose another name",
}
"""Operating-system errors a user can fix, with the fix; others keep their traceback."""


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError caused by the user's disk or folders (None when it looks like a bug)."""
    fix = _OS_FIXES.get(err.errno)
    if fix is None:
        return None
    where = f" {err.filename}" if err.filename else ""
    return f"{err.strerror or err}:{where}; {fix}"


def run_reporting_errors(body: Callable[[], object]) -> int:
    """Run a script's body and turn bad input into `error: <message>` on stderr.

    Returns:
        0 when the body finishes, 2 when it raised one of `USER_ERRORS` or a fixable OSError (full disk, read-only
        folder, ...), 130 when interrupted with Ctrl-C.
    """
    try:
        body()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        line = describe_os_error(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
