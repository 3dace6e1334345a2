"""train.py / nextgpt.training.loop on the tiny checkpoints: resume is exact, stages chain and merge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from numerics import assert_float32_paths_close
from stage_helpers import REPO_ROOT, read_metrics, stage_overrides

from nextgpt.config import load_config
from nextgpt.training.checkpoint import latest_checkpoint
from nextgpt.training.loop import run


def _cfg(stage: int, tiny_root: Path, catalog: Path, out_dir: Path, *extra: str):
    overrides = stage_overrides(tiny_root, catalog, out_dir, *extra)
    return load_config(REPO_ROOT / "configs" / f"tiny_stage_{stage}.yaml", overrides=overrides)


def _train_cmd(config: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config), *overrides]


@pytest.mark.numerics
def test_killed_run_resumes_with_the_same_losses(tiny_root: Path, tiny_world: Path, tmp_path: Path):
    extra = ["train.max_steps=6", "train.save_every=2", "train.init_from=", "train.micro_batch_size=2"]
    reference = run(_cfg(3, tiny_root, tiny_world, tmp_path / "reference", *extra))
    assert len(reference.losses) == 6
    # Interrupted run: a separate process, killed (SIGKILL) once its step-2 checkpoint is complete.
    interrupted = tmp_path / "interrupted"
    config = REPO_ROOT / "configs" / "tiny_stage_3.yaml"
    log = (tmp_path / "interrupted.log").open("w")
    # A fresh single-process run: not the rendezvous variables this test process set for itself.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.Popen(
        _train_cmd(config, stage_overrides(tiny_root, tiny_world, interrupted, *extra)),
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while latest_checkpoint(interrupted) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "interrupted.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(interrupted) is not None, "the interrupted run never wrote a checkpoint"
    assert not (interrupted / "final").exists()
    resumed = run(_cfg(3, tiny_root, tiny_world, interrupted, *extra))
    expected = read_metrics(tmp_path / "reference")
    got = read_metrics(interrupted)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert len(resumed.losses) < 6  # it really continued instead of starting over


@pytest.mark.numerics
def test_stages_chain_and_merge_gives_the_same_logits(tiny_root: Path, tiny_world: Path, tmp_path: Path):
    from nextgpt.constants import Modality
    from nextgpt.llm.conversation import Turn, build_training_example
    from nextgpt.model import NextGPTBatch
    from nextgpt.training.merge import load_model_from_folder, merge_checkpoint

    finals = {}
    for stage in (1, 2, 3):
        init = [] if stage == 1 else [f"train.init_from={finals[stage - 1]}"]
        result = run(_cfg(stage, tiny_root, tiny_world, tmp_path / f"stage_{stage}", "train.max_steps=3", *init))
        finals[stage] = result.final_dir
    merged_dir = merge_checkpoint(finals[3], tmp_path / "merged")
    unmerged, _ = load_model_from_folder(finals[3])
    merged, merged_cfg = load_model_from_folder(merged_dir)
    assert not merged_cfg.model.lora.enabled
    turns = [Turn("user", "<image>\nMake a video of this."), Turn("assistant", "Sure. <video>")]
    example = build_training_example(merged.tokenizer, turns, merged.signal_ids)
    ids = torch.tensor([example.input_ids])
    batch = NextGPTBatch(ids, torch.ones_like(ids), media_features={Modality.IMAGE: torch.randn(1, 32)})
    with torch.no_grad():
        a, b = unmerged.eval()(batch), merged.eval()(batch)
    # LoRA folded into the weights changes float32 summation order only (tests/numerics.py); n: the widest dot
    # product (the LLM's MLP).
    n = merged.llm.config.intermediate_size
    assert_float32_paths_close(b.logits, a.logits, n, "merged logits")
    assert_float32_paths_close(
        b.signal_embeds[Modality.VIDEO], a.signal_embeds[Modality.VIDEO], n, "merged conditioning"
    )


def test_stage_2_with_the_denoising_loss(tiny_root: Path, tiny_world: Path, tmp_path: Path):
    extra = ["train.max_steps=3", "train.init_from=", "model.loss.denoise_weight=1.0", "train.log_every=1"]
    result = run(_cfg(2, tiny_root, tiny_world, tmp_path / "run", *extra))
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    records = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any('"denoise_' in line for line in records), "the denoising term is logged"
