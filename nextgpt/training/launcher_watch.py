"""Stop the trainer when the launcher that started it dies, so a killed run leaves no orphan writing to its folder.

`deepspeed train.py` runs three processes: the runner (`deepspeed`), `python -m deepspeed.launcher.launch` and the
trainer; torchrun runs two. Killing the runner (Ctrl-C in another terminal, a scheduler's SIGKILL) leaves the lower
ones running, and a resume started then would be a second writer on the run folder. So a trainer started by a
launcher watches every launcher above it: the kernel signals it when its direct parent dies
(`prctl(PR_SET_PDEATHSIG)`), and a thread polls the ancestors' pids (with their start times, so a reused pid does not
count as alive) for the runner further up. When one is gone the trainer terminates itself; checkpoints are written
atomically, so the newest complete one stays valid. A plain `python train.py` has no launcher and is not watched.

    chain = watch_launcher()   # [] when not started by a launcher
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LAUNCHER_MODULES = frozenset(
    {"deepspeed.launcher.launch", "deepspeed.launcher.runner", "torch.distributed.run", "torch.distributed.launch"}
)
LAUNCHER_SCRIPTS = frozenset({"deepspeed", "ds", "torchrun"})
POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
"""After SIGTERM to itself, how long the trainer waits before SIGKILL (a handler somewhere could swallow SIGTERM)."""
_PR_SET_PDEATHSIG = 1
_started = False


@dataclass(frozen=True)
class Ancestor:
    """A launcher process above the trainer: pid, its start time (clock ticks since boot) and command line."""

    pid: int
    start_time: int
    command: str


def _read_process(pid: int) -> tuple[int, int, str, list[str]] | None:
    """(parent pid, start time, state, argv) from /proc, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0], [a.decode(errors="replace") for a in argv if a]


def is_launcher(argv: list[str]) -> bool:
    """Whether a command line is the deepspeed runner / launcher or torchrun (run directly, as a script given to
    python, or as `python -m <module>`)."""
    if not argv:
        return False
    if Path(argv[0]).name in LAUNCHER_SCRIPTS:
        return True
    if not Path(argv[0]).name.startswith("python"):
        return False
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1] in LAUNCHER_MODULES
        if not arg.startswith("-"):  # the script python runs
            return Path(arg).name in LAUNCHER_SCRIPTS
    return False


def launcher_chain() -> list[Ancestor]:
    """The unbroken run of launcher processes above this one, direct parent first ([] without a launcher)."""
    chain: list[Ancestor] = []
    pid = os.getppid()
    while pid > 1:
        info = _read_process(pid)
        if info is None or not is_launcher(info[3]):
            break
        chain.append(Ancestor(pid, info[1], " ".join(info[3][:4])))
        pid = info[0]
    return chain


def is_alive(ancestor: Ancestor) -> bool:
    """True while the process exists, is not a zombie and is the same process (start time) as when recorded."""
    info = _read_process(ancestor.pid)
    return info is not None and info[2] != "Z" and info[1] == ancestor.start_time


def _set_parent_death_signal() -> None:
    """Ask the kernel for SIGTERM when the direct parent exits (Linux; elsewhere the polling thread does it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_PDEATHSIG) is not available; relying on polling")


def _terminate(gone: Ancestor) -> None:
    logger.error(
        "launcher pid %d (%s) exited; stopping this trainer (pid %d) so that the run folder has one writer. "
        "Resume with the same command.",
        gone.pid,
        gone.command,
        os.getpid(),
    )
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(chain: list[Ancestor]) -> None:
    while True:
        for ancestor in chain:
            if not is_alive(ancestor):
                _terminate(ancestor)
                return
        time.sleep(POLL_SECONDS)


def watch_launcher() -> list[Ancestor]:
    """Start watching the launcher processes above this trainer (once per process).

    Returns:
        The watched launchers, direct parent first; [] when the trainer was not started by a launcher.
    """
    global _started
    chain = launcher_chain()
    if not chain or _started or not Path("/proc").is_dir():
        return chain
    _started = True
    _set_parent_death_signal()
    if not is_alive(chain[0]) or os.getppid() != chain[0].pid:  # died before the signal was armed
        _terminate(chain[0])
    threading.Thread(target=_watch, args=(chain,), name="launcher-watch", daemon=True).start()
    logger.info("watching launcher pids %s: this trainer stops when they exit", [a.pid for a in chain])
    return chain
