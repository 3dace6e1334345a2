"""Helpers shared by the training tests (imported by test modules; pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def stage_overrides(tiny_root: Path, catalog: Path, out_dir: Path, *extra: str) -> list[str]:
    """Overrides that point a tiny stage config at the session's checkpoints, world and an output folder."""
    from nextgpt.tiny.build import tiny_path_overrides

    return [*tiny_path_overrides(tiny_root), f"data.catalog_path={catalog}", f"train.output_dir={out_dir}", *extra]


def read_metrics(run_dir: Path) -> dict[int, float]:
    """Per-step loss from metrics.jsonl (the last record wins when a resumed run repeats a step)."""
    losses: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


QUICK_STAGE_2 = (
    "train.init_from=",
    "train.micro_batch_size=2",
    "train.warmup_ratio=0",
    "train.schedule=constant",
    "train.log_every=1",
)
"""Stage 2 of the tiny world without its stage-1 checkpoint: text-only batches, about 20 steps a second on CPU; a
constant LR so that a run continued with more steps matches an uninterrupted longer run exactly."""


def quick_cfg(tiny_root: Path, catalog: Path, out_dir: Path, *extra: str, config: str = "tiny_stage_2.yaml"):
    """The quick stage-2 config of QUICK_STAGE_2 (or another tiny stage `config` with the same settings) writing to
    `out_dir`."""
    from nextgpt.config import load_config

    overrides = stage_overrides(tiny_root, catalog, out_dir, *QUICK_STAGE_2, *extra)
    return load_config(REPO_ROOT / "configs" / config, overrides=overrides)


def metric_steps(run_dir: Path) -> list[int]:
    """Every step number in metrics.jsonl, in file order (repeats included)."""
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Content of every file under `folder` (to assert that a failed command changed nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def no_model_built(monkeypatch) -> None:
    """Make building a model fail the test: the error under test must come before it."""
    import nextgpt.training.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("build_nextgpt was called: the error should have come before any model is built")

    monkeypatch.setattr(loop, "build_nextgpt", refuse)


def error_lines(err: str) -> list[str]:
    """The `error:` lines of a script's stderr (logging lines are not counted)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_same_trained_weights(got: dict, want: dict, lr: float) -> None:
    """Two runs trained the same weights up to float32 summation order.

    Adam's normalised update turns rounding-level differences of a gradient that is itself at rounding level (an
    attention key bias, whose true gradient is zero) into steps of up to lr in those few elements; a real difference
    (a stale or missing gradient) moves whole tensors. Hence: every element within lr / 2, and the mean difference
    over all weights below 1e-6.
    """
    import torch

    assert got.keys() == want.keys() and got, (sorted(got)[:5], sorted(want)[:5])
    total, count = 0.0, 0
    for key, tensor in got.items():
        assert tensor.shape == want[key].shape and tensor.numel() > 0, key
        torch.testing.assert_close(tensor, want[key], rtol=0, atol=lr / 2, msg=lambda m, key=key: f"{key}: {m}")
        total += float((tensor.double() - want[key].double()).abs().sum())
        count += tensor.numel()
    assert total / count < 1e-6, total / count


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a launcher's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(
    tiny_root: Path, catalog: Path, out_dir: Path, micro: int, ds: Path, steps: int, config: str, *extra: str
) -> list[list[float]]:
    """Train a quick tiny stage on 2 CPU processes (torch.distributed.run, gloo) through `multi_rank_run.py`.

    Returns:
        Each rank's logged losses of this run.
    """
    import os
    import subprocess
    import sys

    helper = Path(__file__).with_name("multi_rank_run.py")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(helper), str(tiny_root), str(catalog), str(out_dir), str(micro), str(ds), str(steps), config, *extra,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((Path(out_dir) / f"losses_rank{r}.json").read_text()) for r in (0, 1)]
