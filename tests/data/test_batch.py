"""NextGPTBatch.to keeps the CPU batch it was copied from (`host`), where the model reads positions without waiting
for the GPU."""

from __future__ import annotations

import torch

from nextgpt.data.batch import NextGPTBatch


def _batch() -> NextGPTBatch:
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    return NextGPTBatch(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]), labels=ids.clone())


def test_a_batch_copied_off_the_cpu_remembers_its_host_batch():
    cpu = _batch()
    moved = cpu.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.host is cpu
    assert moved.host_view is cpu and moved.host_view.input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert moved.to("meta").host is cpu  # a copy between devices keeps the original CPU batch
    assert cpu.host is None and cpu.host_view is cpu
    assert cpu.to("cpu").host is None  # a batch on the CPU is its own host batch
    assert "host" not in repr(moved)
