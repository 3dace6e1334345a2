"""Read single tensors from a local HF model folder without loading the model (7B folders are 13 GB).

Handles the layouts `save_pretrained` writes: `model.safetensors`, sharded safetensors with an index, and the older
`pytorch_model.bin` (+ index), the latter with weights-only unpickling.

    lm_head = read_hf_tensor(Path("checkpoints/vicuna-7b-v1.5"), "lm_head.weight")  # (32000, 4096)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def _file_holding(folder: Path, key: str) -> Path:
    for index_name, single_name in _LAYOUTS:
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            if key in weight_map:
                return folder / weight_map[key]
        if (folder / single_name).is_file():
            return folder / single_name
    raise FileNotFoundError(f"no weights holding {key} in {folder} (model.safetensors or pytorch_model.bin)")


def read_hf_tensor(folder: Path, key: str) -> torch.Tensor:
    """One tensor of an HF folder by its state-dict key.

    Raises:
        FileNotFoundError: no weights file, or none of them holds `key`.
    """
    path = _file_holding(Path(folder), key)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if key not in handle.keys():
                raise FileNotFoundError(f"{path} holds no tensor {key}")
            return handle.get_tensor(key)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if key not in state:
        raise FileNotFoundError(f"{path} holds no tensor {key}")
    return state[key].clone()
