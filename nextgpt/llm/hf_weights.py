"""Read tensors of a local HF model folder without loading the model (7B folders are 13 GB).

Handles the layouts `save_pretrained` writes: `model.safetensors`, sharded safetensors with an index, and the older
`pytorch_model.bin` (+ index), the latter memory-mapped with weights-only unpickling. Used by the Vicuna delta helper
(every tensor, shard by shard) and the converters (one matrix).

    lm_head = read_hf_tensor(Path("checkpoints/vicuna-7b-v1.5"), "lm_head.weight")  # (32000, 4096)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
"""Weight layouts of an HF folder, in the order they are looked for."""


class HFWeights:
    """Lazy access to the tensors of an HF folder: name -> file from its index, files opened on demand (a few kept)."""

    def __init__(self, folder: Path, what: str, skip_suffixes: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.skip_suffixes = skip_suffixes
        found = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{what} {folder} holds no weights ({' / '.join(WEIGHT_FILES)}); pass the folder of the HF checkpoint"
            )
        if found.name.endswith(".index.json"):
            try:
                weight_map = json.loads(found.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{found} is not a weight index ({err}); download the folder again") from err
            self.files = {name: folder / file for name, file in weight_map.items()}
        else:
            self.files = {name: found for name in self._names(found)}
        self._open: OrderedDict[Path, Any] = OrderedDict()

    @staticmethod
    def _load(path: Path) -> Any:
        if not path.is_file():
            raise FileNotFoundError(f"weight file {path} named by its index does not exist; download it again")
        if path.suffix == ".safetensors":
            return safe_open(str(path), framework="pt", device="cpu")
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # memory-mapped, read on use

    def _names(self, path: Path) -> list[str]:
        handle = self._load(path)
        return list(handle.keys())

    def _handle(self, name: str) -> tuple[Path, Any]:
        path = self.files[name]
        if path not in self._open:
            self._open[path] = self._load(path)
            if len(self._open) > 2:  # shards are read in order: the previous one may still be needed
                self._open.popitem(last=False)
        self._open.move_to_end(path)
        return path, self._open[path]

    def get(self, name: str) -> torch.Tensor:
        path, handle = self._handle(name)
        return handle.get_tensor(name) if path.suffix == ".safetensors" else handle[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, read without its data (safetensors header, or the memory-mapped pickle)."""
        path, handle = self._handle(name)
        return tuple(handle.get_slice(name).get_shape() if path.suffix == ".safetensors" else handle[name].shape)

    def names(self) -> list[str]:
        """Tensor names in file order (then index order), names ending with `skip_suffixes` left out."""
        order = {path: i for i, path in enumerate(dict.fromkeys(self.files.values()))}
        kept = [n for n in self.files if not (self.skip_suffixes and n.endswith(self.skip_suffixes))]
        return sorted(kept, key=lambda n: order[self.files[n]])


def read_hf_tensor(folder: Path, key: str) -> torch.Tensor:
    """One tensor of an HF folder by its state-dict key.

    Raises:
        FileNotFoundError: no weights file, or none of them holds `key`.
    """
    weights = HFWeights(Path(folder), "LLM folder")
    if key not in weights.files:
        raise FileNotFoundError(f"{folder} holds no tensor {key}; point model.llm.model_path at the base LLM folder")
    return weights.get(key).clone()
