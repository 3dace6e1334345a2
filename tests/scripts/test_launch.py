"""The stage scripts hand the DeepSpeed launcher the right arguments for one machine and for several nodes, and stop
with one line naming the fix for an incomplete multi-node setup. A `deepspeed` on PATH that prints its arguments
stands in for the launcher (DeepSpeed's own, and what it does with them, is not ours to test)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_KEYS = (
    "GPUS",
    "HOSTFILE",
    "MASTER_ADDR",
    "NNODES",
    "GPUS_PER_NODE",
    "LAUNCHER",
    "PORT",
    "OUTPUT_DIR",
    "FEATURE_CACHE",
)
"""What the scripts read from the environment; the caller's values are dropped so only the test's count."""
SCRIPTS = {"pretrain_enc.sh": "stage_1", "pretrain_dec.sh": "stage_2", "finetune.sh": "stage_3"}


@pytest.fixture()
def fake_launcher(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("deepspeed", "python"):
        tool = bin_dir / name
        tool.write_text(f'#!/usr/bin/env bash\nprintf "{name}\\n"; printf "%s\\n" "$@"\n')
        tool.chmod(0o755)
    return bin_dir


def _launch(script: str, bin_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script), *args],
        env={**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_one_machine_uses_the_listed_gpus(script, fake_launcher):
    done = _launch(script, fake_launcher, {"GPUS": "0,1", "PORT": "29511"}, "train.lr=1e-4")
    assert done.returncode == 0, done.stderr
    stage = SCRIPTS[script]
    assert done.stdout.split("\n")[:-1] == [
        "deepspeed", "--include", "localhost:0,1", "--master_port", "29511", "train.py",
        "--config", f"configs/{stage}.yaml", f"train.output_dir=runs/{stage}", "train.lr=1e-4",
    ]  # fmt: skip


def test_several_nodes_go_through_the_hostfile(fake_launcher, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=8\nnode1 slots=8\n")
    env = {"HOSTFILE": str(hostfile), "MASTER_ADDR": "node0", "NNODES": "2", "GPUS_PER_NODE": "8"}
    done = _launch("finetune.sh", fake_launcher, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [
        "deepspeed", "--hostfile", str(hostfile), "--master_addr", "node0", "--num_nodes", "2", "--num_gpus", "8",
        "--master_port", "29500", "train.py", "--config", "configs/stage_3.yaml", "train.output_dir=runs/stage_3",
    ]  # fmt: skip


def test_the_feature_cache_runs_first_on_the_first_gpu(fake_launcher, tmp_path):
    done = _launch("pretrain_enc.sh", fake_launcher, {"GPUS": "3,4", "FEATURE_CACHE": str(tmp_path / "features")})
    assert done.returncode == 0, done.stderr
    # The fake `python` returns at once; exec then hands over to the launcher with the cache switched on.
    lines = done.stdout.split("\n")
    assert lines[:2] == ["python", "preprocess_features.py"]
    assert f"data.feature_cache_dir={tmp_path / 'features'}" in lines[lines.index("deepspeed") :]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOSTFILE": "/no/such/hostfile", "MASTER_ADDR": "node0"}, "HOSTFILE=/no/such/hostfile does not exist"),
        ({"HOSTFILE": "{hostfile}"}, "needs MASTER_ADDR"),
        ({"HOSTFILE": "{hostfile}", "MASTER_ADDR": "node0", "GPUS": "0,1"}, "GPUS picks GPUs of this machine only"),
    ],
)
def test_an_incomplete_multi_node_setup_stops_naming_the_fix(fake_launcher, tmp_path, env, message):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=8\n")
    done = _launch("finetune.sh", fake_launcher, {k: v.format(hostfile=hostfile) for k, v in env.items()})
    assert done.returncode == 2 and "deepspeed" not in done.stdout
    assert done.stderr.count("\n") == 1 and message in done.stderr
