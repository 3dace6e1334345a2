"""One writer per run folder: a second trainer is refused naming the holder's pid; a trainer started by the real
`deepspeed` launcher stops when the launcher is killed, and the run then resumes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stage_helpers import QUICK_STAGE_2, REPO_ROOT, metric_steps, no_model_built, quick_cfg, stage_overrides

from nextgpt.training.checkpoint import latest_checkpoint
from nextgpt.training.launcher_watch import is_launcher, launcher_chain
from nextgpt.training.loop import run
from nextgpt.training.resume import read_meta
from nextgpt.training.run_lock import LOCK_FILE, RunLock, RunLockedError

DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _clean_env() -> dict[str, str]:
    """This test process's environment without the rendezvous variables it set for its own in-process runs."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _lock_is_free(run_dir: Path) -> bool:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the descriptor releases the probe's own lock
    return True


def _wait_for(condition, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def test_a_second_trainer_is_refused_naming_the_holder(tiny_root: Path, tiny_world: Path, tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "run"
    code = "import sys, time; from nextgpt.training.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
           "print('locked', flush=True); time.sleep(600)"  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], env=_clean_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        info = json.loads((run_dir / LOCK_FILE).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        no_model_built(monkeypatch)
        with pytest.raises(RunLockedError) as err:
            run(quick_cfg(tiny_root, tiny_world, run_dir, "train.max_steps=2"))
        message = str(err.value)
        assert f"is in use by another trainer (pid {holder.pid} on host {socket.gethostname()}" in message
        assert "train.output_dir" in message and "\n" not in message
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE], "the refused trainer wrote nothing"
    finally:
        holder.kill()
        holder.wait()
    # A killed holder leaves the file but never the lock.
    with RunLock(run_dir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_launcher_command_lines_are_recognised():
    assert is_launcher(["/venv/bin/python3", "/venv/bin/deepspeed", "--num_gpus", "1", "train.py"])
    assert is_launcher(["/venv/bin/python3", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x"])
    assert is_launcher(["/venv/bin/torchrun", "--nproc-per-node", "2", "train.py"])
    assert is_launcher(["python", "-m", "torch.distributed.run", "train.py"])
    assert not is_launcher(["python", "train.py", "--config", "deepspeed"])
    assert not is_launcher(["/bin/bash", "-c", "deepspeed train.py"])
    assert launcher_chain() == [], "pytest is not a launcher: in-process runs are not watched"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two DeepSpeed launches of the trainer, ~25 s each on 2 cores
@pytest.mark.parametrize("victim", ["runner", "launch"])
def test_killing_the_deepspeed_launcher_stops_the_trainer_and_the_run_resumes(
    tiny_root: Path, tiny_world: Path, tmp_path: Path, victim: str
):
    """`deepspeed` (runner) -> `python -m deepspeed.launcher.launch` -> train.py; SIGKILL the runner or the launch."""
    run_dir = tmp_path / "run"
    extra = ("train.save_every=3", "train.keep_last=1")
    # Far more steps than the trainer can take before the kill reaches it, however fast the machine: it is always
    # stopped mid-run; the resume below asks for a few steps past the checkpoint it left.
    overrides = stage_overrides(tiny_root, tiny_world, run_dir, *QUICK_STAGE_2, *extra, "train.max_steps=100000")
    deepspeed = Path(sys.executable).parent / "deepspeed"
    config = REPO_ROOT / "configs" / "tiny_stage_2.yaml"
    cmd = [str(deepspeed), "--num_gpus", "1", "--master_port", str(_free_port()), "train.py", "--config", str(config)]
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        runner = subprocess.Popen(
            [*cmd, *overrides], cwd=REPO_ROOT, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    trainer = None
    try:
        _wait_for(lambda: latest_checkpoint(run_dir) is not None or runner.poll() is not None, 300, "step-3", log)
        trainer = json.loads((run_dir / LOCK_FILE).read_text())["pid"]
        assert _alive(trainer) and "train.py" in Path(f"/proc/{trainer}/cmdline").read_text(), log.read_text()[-3000:]
        launch = int(Path(f"/proc/{trainer}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(runner.pid if victim == "runner" else launch, signal.SIGKILL)
        _wait_for(lambda: not _alive(trainer), 10, f"trainer {trainer} to stop after its {victim} died", log)
        # The main thread turns zombie first; the kernel drops the flock once the process's last thread is gone.
        _wait_for(lambda: _lock_is_free(run_dir), 30, f"the lock of the stopped trainer {trainer} to be released", log)
        runner.wait(timeout=60)
        assert not (run_dir / "final").exists(), "the trainer was stopped mid-run"
        assert "stopping this trainer" in log.read_text() or victim == "launch"
    finally:  # whatever happened, leave no process of this launch behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)
        if trainer is not None and _alive(trainer):
            os.kill(trainer, signal.SIGKILL)
        runner.wait()
    left = int(read_meta(latest_checkpoint(run_dir))["step"])
    result = run(quick_cfg(tiny_root, tiny_world, run_dir, *extra, f"train.max_steps={left + 6}"))
    assert len(result.losses) == 6 and metric_steps(run_dir) == list(range(1, left + 7))


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path: Path, monkeypatch, caplog):
    import errno
    import fcntl
    import logging

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="nextgpt"):
        RunLock(tmp_path / "run").acquire().release()
    assert "this file system cannot lock (No locks available)" in caplog.text
