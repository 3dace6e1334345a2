"""DeepSpeed state is read weights-only: every file DeepSpeed 0.19.8 writes on CPU (ZeRO 0-3, fp32 and bf16) passes
the allow-list and loads back exactly; anything else is refused without being executed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nextgpt.training.distributed import init_distributed
from nextgpt.training.safe_load import (
    UnsafeCheckpointError,
    check_pickles,
    load_weights_only,
    unsafe_globals,
    weights_only_loads,
)


def _engine(stage: int, precision: str, seed: int):
    import deepspeed

    init_distributed()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def _step(engine) -> torch.Tensor:
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    x = torch.arange(16, dtype=torch.float32).reshape(2, 8).div(16).to(dtype)
    loss = engine(x).float().pow(2).sum()
    engine.backward(loss)
    engine.step()
    return loss.detach()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_deepspeed_layout_loads_weights_only_and_resumes_exactly(
    tmp_path: Path, monkeypatch, stage: int, precision: str
):
    import nextgpt.training.safe_load as safe_load

    trained = _engine(stage, precision, seed=0)
    for _ in range(2):
        _step(trained)
    trained.save_checkpoint(str(tmp_path), tag="state")
    files = sorted((tmp_path / "state").glob("*.pt"))
    assert files and all(unsafe_globals(f) == [] for f in files), [unsafe_globals(f) for f in files]
    check_pickles(tmp_path)
    expected = [_step(trained) for _ in range(2)]  # what the trained engine does next

    fresh = _engine(stage, precision, seed=1)  # other initial weights: the load must bring everything back
    reads: list[tuple[str, bool]] = []
    real_load = safe_load._TORCH_LOAD

    def spy(path, **kwargs):
        reads.append((Path(path).name, kwargs["weights_only"]))
        return real_load(path, **kwargs)

    monkeypatch.setattr(safe_load, "_TORCH_LOAD", spy)
    original_engine = fresh.checkpoint_engine
    with weights_only_loads(fresh):
        load_path, _ = fresh.load_checkpoint(str(tmp_path), tag="state")
    assert load_path is not None and fresh.checkpoint_engine is original_engine
    assert {name for name, _ in reads} == {f.name for f in files}, "every state file went through the safe loader"
    assert all(weights_only for _, weights_only in reads)
    got = [_step(fresh) for _ in range(2)]
    assert torch.equal(torch.stack(got), torch.stack(expected))


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_outside_the_allow_list_is_refused_without_running(tmp_path: Path):
    marker = tmp_path / "pwned"
    state = tmp_path / "deepspeed" / "state"
    state.mkdir(parents=True)
    planted = state / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _Planted(marker)}, planted)
    assert unsafe_globals(planted) == ["posix.system"]
    with pytest.raises(UnsafeCheckpointError, match=r"\['posix.system'\].*train.trust_checkpoint_pickles=true"):
        check_pickles(tmp_path / "deepspeed")
    with pytest.raises(UnsafeCheckpointError, match="needs more than the allow-list"):
        load_weights_only(planted)
    assert not marker.exists()
    # Opting in skips the scan (for checkpoints one wrote oneself with another DeepSpeed setup).
    check_pickles(tmp_path / "deepspeed", trust=True)
    assert not marker.exists()


def test_torch_load_is_forced_weights_only_inside_the_block_and_restored_after(tmp_path: Path):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pt"
    torch.save(_Planted(marker), planted)

    class _Engine:
        checkpoint_engine = object()

    engine = _Engine()
    original = torch.load
    with weights_only_loads(engine):
        with pytest.raises(UnsafeCheckpointError):
            torch.load(planted, weights_only=False)  # a direct call inside DeepSpeed is forced weights-only too
        with pytest.raises(UnsafeCheckpointError):
            engine.checkpoint_engine.load(str(planted), map_location="cpu")
    assert torch.load is original and not marker.exists()
    with weights_only_loads(engine, trust=True):  # train.trust_checkpoint_pickles: DeepSpeed's own loads stay
        assert torch.load is original and engine.checkpoint_engine is _Engine.checkpoint_engine


def test_a_legacy_non_zip_file_is_still_read_weights_only(tmp_path: Path):
    marker = tmp_path / "pwned"
    legacy = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    check_pickles(tmp_path)  # not scannable: left to the load
    assert torch.equal(load_weights_only(legacy)["w"], torch.ones(2))
    torch.save(_Planted(marker), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError):
        load_weights_only(legacy)
    assert not marker.exists()
