"""DeepSpeed resume state read without unpickling code: `torch.load(weights_only=True)` with an allow-list.

DeepSpeed 0.19.8 reads its checkpoint files through `engine.checkpoint_engine.load`, which calls
`torch.load(weights_only=False)`: a planted `*.pt` file in a run folder would run arbitrary code on resume. Here every
load of a resume goes through the weights-only unpickler, which builds tensors, containers and exactly the classes
in `DEEPSPEED_SAFE_GLOBALS`; a file needing anything else is refused before it is read (`check_pickles`, a scan of
the pickle's GLOBAL opcodes that executes nothing) and again by the unpickler while it is read.

    check_pickles(ckpt_dir / "deepspeed", trust=cfg.train.trust_checkpoint_pickles)   # before the model is built
    with weights_only_loads(engine, trust=False):
        engine.load_checkpoint(str(ckpt_dir / "deepspeed"), tag="state")
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

TRUST_FLAG = "train.trust_checkpoint_pickles=true"
_TORCH_LOAD = torch.load
"""torch's own `load`, kept before `weights_only_loads` swaps the module attribute."""


def _deepspeed_safe_globals() -> list[Any]:
    """The non-torch classes DeepSpeed's own state files hold (ZeRO 0-3, fp32 and bf16, as saved by 0.19.8).

    Each is plain data rebuilt by setting attributes or calling an Enum with a value; none runs code of the file's
    choosing: `fragment_address` (a two-int dataclass), `LossScaler` (a scale and a flag), `ZeroStageEnum` (an int).
    """
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, LossScaler, ZeroStageEnum]


class UnsafeCheckpointError(ValueError):
    """A checkpoint file needs classes outside the allow-list; it was not unpickled."""


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def allowed_global_names() -> set[str]:
    """Dotted names of the classes the weights-only loader accepts beyond torch's own safe set."""
    return {_qualified(cls) for cls in _deepspeed_safe_globals()}


def _refusal(path: Path, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} needs {what}, which a weights-only load does not build; it was not unpickled. If you wrote this "
        f"checkpoint yourself with a DeepSpeed setup the allow-list misses, set {TRUST_FLAG} (unpickling runs any "
        "code the file holds); otherwise delete the checkpoint"
    )


def unsafe_globals(path: Path) -> list[str]:
    """Globals the pickle of a `torch.save` file names that neither torch nor the allow-list accepts.

    Reads only the pickle's opcodes (nothing is executed or built). Files in torch's legacy (non-zip) format cannot be
    scanned and give []: their load is weights-only all the same, which refuses them then.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        logger.debug("%s cannot be scanned (%s); its weights-only load will check it", path, err)
        return []
    allowed = allowed_global_names()
    return sorted(n for n in names if n not in allowed)


def check_pickles(state_dir: Path, trust: bool = False) -> None:
    """Refuse a DeepSpeed state folder any of whose `*.pt` files names a class outside the allow-list.

    Args:
        state_dir: a checkpoint's `deepspeed/` folder.
        trust: `train.trust_checkpoint_pickles`; True skips the check (a warning is logged).

    Raises:
        UnsafeCheckpointError: naming the file, the classes and the opt-in flag.
    """
    if trust:
        logger.warning("%s=true: DeepSpeed state in %s is unpickled without the allow-list", TRUST_FLAG, state_dir)
        return
    for path in sorted(Path(state_dir).rglob("*.pt")):
        bad = unsafe_globals(path)
        if bad:
            raise _refusal(path, f"classes {bad}")


def load_weights_only(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load` that builds tensors, containers and the allow-listed DeepSpeed classes only.

    Raises:
        UnsafeCheckpointError: the file needs anything else (nothing of it was executed).
    """
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
        raise _refusal(Path(path), f"more than the allow-list ({detail})") from None


class _WeightsOnlyLoads:
    """Stands in for a DeepSpeed checkpoint engine: loads are weights-only, everything else is delegated."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, map_location=map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def weights_only_loads(engine: Any, trust: bool = False) -> Iterator[None]:
    """Route the engine's checkpoint reads through `load_weights_only` for the duration of the block.

    DeepSpeed also calls `torch.load` directly in a few paths (universal checkpoints, some optimizers); those are
    forced to weights-only as well while the block runs.

    Args:
        engine: a DeepSpeed engine.
        trust: `train.trust_checkpoint_pickles`; True leaves DeepSpeed's own loads unchanged.
    """
    if trust:
        yield
        return
    original_engine = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyLoads(original_engine)
    try:
        with weights_only_torch_load():
            yield
    finally:
        engine.checkpoint_engine = original_engine


@contextlib.contextmanager
def weights_only_torch_load(trust: bool = False) -> Iterator[None]:
    """Make every `torch.load` call in the block `load_weights_only`, whatever its arguments (DeepSpeed's own code
    passes `weights_only=False`); `trust` leaves torch.load unchanged."""
    if trust:
        yield
        return
    original = torch.load

    def forced(path: Any, map_location: Any = None, **_: Any) -> Any:
        return load_weights_only(path, map_location=map_location)

    torch.load = forced
    try:
        yield
    finally:
        torch.load = original
