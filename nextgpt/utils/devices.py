"""Host-to-device copies that do not make the host wait.

A plain `tensor.to("cuda")` from pageable memory first waits for all the work queued on the GPU, so a small index
tensor built on the host in the middle of a step stops the host from queueing ahead. Copied from page-locked memory
it is queued like any kernel (PyTorch keeps the page-locked block until the copy has run).

    rows = copy_to_device(torch.tensor([[0, 3], [1, 5]]), hidden.device)  # no wait on CUDA
"""

from __future__ import annotations

import torch


def copy_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`: as it is when already there; from the CPU to CUDA through page-locked memory, queued
    without waiting; otherwise a plain copy."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
