"""Serving fixtures: one greedy pipeline on the taught tiny checkpoint, a loopback HTTP server for the API tests, and
where browser artifacts are kept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
_kept_artifacts: list[Path] = []


@pytest.fixture(scope="session")
def demo_pipeline(taught_checkpoint: Path):
    """The taught tiny checkpoint behind the demo, greedy and with short replies so pages settle fast."""
    from nextgpt.inference.pipeline import NextGPTPipeline

    overrides = ["generation.temperature=0", "generation.max_new_tokens=24"]
    return NextGPTPipeline.from_pretrained(taught_checkpoint, device="cpu", overrides=overrides)


@pytest.fixture()
def keep_artifact():
    """Return the path to write an artifact to; it is listed at the end of the test run."""

    def keep(name: str) -> Path:
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        path = ARTIFACTS_DIR / name
        _kept_artifacts.append(path)
        return path

    return keep


def pytest_terminal_summary(terminalreporter) -> None:
    for path in _kept_artifacts:
        if path.is_file():
            terminalreporter.write_line(f"test artifact: {path}")


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a port the OS picks) until the block ends; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def serve():
    """`with serve(app) as base_url:` runs the app on a free 127.0.0.1 port for the block."""
    return running_server
