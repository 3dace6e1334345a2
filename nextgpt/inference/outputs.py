"""Where inference writes: a usable output folder, one fresh run folder per run, and a summary kept current.

Nothing is ever overwritten: each run writes into a new sub-folder of the output folder (named by the start time, or
by the caller), so a second run with the same prompt keeps the first run's files. The run's summary.json is rewritten
atomically after every request, so a failure late in a batch keeps the record of everything finished before it.

    output_dir = prepare_output_dir(Path("outputs"))          # created and test-written before any model loads
    run_dir = create_run_dir(output_dir)                      # outputs/20260115-093012/
    summary = RunSummary(run_dir / "summary.json", {"checkpoint": "runs/stage_3/final"}, num_requests=3)
    summary.add({"id": "q1", "text": "...", "outputs": [...]})  # summary.json now lists q1
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from nextgpt.inference.input_checks import check_name_part

SUMMARY_FILE = "summary.json"


def prepare_output_dir(path: Path) -> Path:
    """Create the output folder if needed and prove it is writable by writing and removing a probe file.

    Args:
        path: the output folder.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: the path is a file, it cannot be created, or nothing can be written in it (one line with the fix).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is a file; pass a folder path (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create output folder {path} ({err.strerror or err}); choose a folder you can write to"
        ) from None
    probe = path / f".nextgpt-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as err:
        raise ValueError(
            f"cannot write in output folder {path} ({err.strerror or err}); make it writable or choose another folder"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    return path


def create_run_dir(output_dir: Path, run_name: str | None = None) -> Path:
    """Create this run's own sub-folder of `output_dir`.

    Args:
        output_dir: a prepared output folder.
        run_name: the sub-folder's name; None uses the start time (`YYYYmmdd-HHMMSS`, then `-2`, `-3`, ... when a
            run started in the same second).

    Returns:
        The new, empty run folder.

    Raises:
        ValueError: `run_name` is not a safe folder name, or that folder already holds files.
    """
    output_dir = Path(output_dir)
    if run_name is not None:
        run_dir = output_dir / check_name_part(run_name, "run name")
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise ValueError(
                f"run folder {run_dir} already exists; choose another run name (earlier outputs are never replaced)"
            )
        run_dir.mkdir(exist_ok=True)
        return run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        run_dir = output_dir / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir()  # exclusive: two runs started in the same second get different folders
            return run_dir
        except FileExistsError:
            continue
    raise ValueError(f"{output_dir} already holds 999 runs started at {stamp}; pass a run name")


def remove_if_empty(folder: Path) -> None:
    """Remove a run folder that got no files (the run failed before writing anything)."""
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or already gone: keep what is there


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a half-written one.

    Raises:
        OSError: the write failed (the previous file, if any, is left as it was).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunSummary:
    """summary.json of one run: written when the run starts, rewritten after every finished request.

    Args:
        path: the summary file.
        header: run facts (checkpoint, settings) stored next to the results.
        num_requests: how many requests the run will answer.
    """

    def __init__(self, path: Path, header: dict[str, Any], num_requests: int):
        self.path = Path(path)
        self.data: dict[str, Any] = {**header, "num_requests": num_requests, "complete": False, "results": []}
        write_json_atomic(self.path, self.data)  # present from the start: an interrupted run still has one

    def add(self, result: dict[str, Any]) -> None:
        """Record one finished request and rewrite the file.

        Raises:
            OSError: the write failed; the file still lists the earlier requests.
        """
        results = [*self.data["results"], result]
        data = {**self.data, "results": results, "complete": len(results) == self.data["num_requests"]}
        write_json_atomic(self.path, data)
        self.data = data  # only once written: the object and the file agree

    @property
    def num_done(self) -> int:
        """Requests recorded so far."""
        return len(self.data["results"])
