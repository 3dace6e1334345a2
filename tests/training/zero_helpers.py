"""A two-branch model under a one-process DeepSpeed ZeRO engine on the CPU, for the ZeRO step and reduction tests."""

from __future__ import annotations

from typing import Any

import torch

from nextgpt.training.distributed import init_distributed


class TwoBranches(torch.nn.Module):
    """A used and an unused branch: ZeRO-1/2 fills the unused one's gradients with zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
        self.unused = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def dtype_of(engine) -> torch.dtype:
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def zero_engine(
    stage: int,
    precision: str,
    clip: float,
    seed: int = 0,
    device: str = "cpu",
    grad_accum: int = 1,
    **zero: Any,
):
    """A DeepSpeed engine over `TwoBranches` with torch AdamW, as DeepSpeed builds it (nothing of ours applied).

    Args:
        zero: zero_optimization settings besides the stage (default: no overlap, no contiguous buffers, as the
            training loop sets for one process).
    """
    import deepspeed

    init_distributed()
    torch.manual_seed(seed)
    model = TwoBranches().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": clip,
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": False, **zero},
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": False},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def micro_backward(engine, scale: float, shift: float = 0.0) -> None:
    """One micro-batch's forward and `engine.backward` (inputs moved by `shift`, loss scaled by `scale`)."""
    x = (torch.linspace(-1, 1, 16).reshape(2, 8) + shift).to(dtype_of(engine))
    engine.backward(engine(x).float().pow(2).sum() * scale)
