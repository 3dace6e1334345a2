"""Serving fixtures: one greedy pipeline on the taught tiny checkpoint, and where browser artifacts are kept."""

from __future__ import annotations

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
