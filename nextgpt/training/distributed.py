"""Process-group setup and rank helpers that work under `deepspeed`, `torchrun` and plain `python`.

init_distributed()          # sets single-process defaults when no launcher did
if is_rank_zero(): ...
"""

from __future__ import annotations

import importlib
import os
import random

import numpy as np
import torch

SINGLE_PROCESS_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def init_distributed() -> None:
    """Make `deepspeed.initialize` work in every launch mode.

    Plain `python train.py` gets single-process rendezvous variables (DeepSpeed would otherwise try MPI discovery).
    On CPU-only machines the shared-memory communication op is not built: a single process never uses it and building
    it costs about a minute of compilation on first use.
    """
    if "RANK" not in os.environ:
        for key, value in SINGLE_PROCESS_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", _free_port())
    if not torch.cuda.is_available():
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """True on the process that logs and writes shared files."""
    return rank() == 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) identically on every rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, torch.Tensor]:
    """RNG state of torch (CPU and CUDA) as tensors, so it saves with safetensors / weights_only loads."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Undo `capture_rng_state` (resumed runs replay the same dropout / Gumbel noise)."""
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
