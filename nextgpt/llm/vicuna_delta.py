"""Vicuna v0 from its released delta: target = LLaMA base + delta, tensor by tensor, streamed shard by shard.

Vicuna v0 (`lmsys/vicuna-7b-delta-v0`, the LLM of the released NExT-GPT checkpoint) ships as a LLaMA folder whose
weights are differences to LLaMA-7B, with its own tokenizer of 32,001 tokens (LLaMA's 32,000 plus a `[PAD]`). As in
FastChat's apply_delta, the base's `embed_tokens` and `lm_head` get zero rows up to the delta's vocabulary, and every
tensor is the sum of the two. Only one base and one delta tensor are materialised at a time (shards are memory-mapped)
and output shards are written as they fill, so a 7B merge needs a few GB of memory, not two copies of the model.

    result = apply_vicuna_delta(Path("checkpoints/llama-7b"), Path("checkpoints/vicuna-7b-delta-v0"),
                                Path("checkpoints/vicuna-7b-v0"))
    result.num_tensors, result.shard_files       # 291, ["model-00001-of-00003.safetensors", ...]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from nextgpt.llm.hf_weights import HFWeights
from nextgpt.utils.folders import replace_folder

logger = logging.getLogger(__name__)

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")
"""Tensors whose rows are vocabulary entries: the base's are padded with zero rows up to the delta's vocabulary."""

SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers old checkpoints saved but current LLaMA code recomputes from the config; they are not written."""

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


@dataclass
class DeltaResult:
    """What `apply_vicuna_delta` wrote."""

    output_dir: Path
    num_tensors: int
    shard_files: list[str]
    vocab_size: int
    padded_rows: int
    """Zero rows added to the base's vocabulary tensors (1 for Vicuna v0)."""


def _check_tensors(base: HFWeights, delta: HFWeights) -> list[str]:
    """The tensor names to merge, in delta file order, once names and shapes are known to fit (data is not read)."""
    base_names, delta_names = set(base.names()), delta.names()
    missing = [n for n in delta_names if n not in base_names]
    extra = sorted(base_names - set(delta_names))
    if missing or extra:
        raise ValueError(
            f"the base and the delta hold different tensors (only in the delta: {missing[:3]}, only in the base: "
            f"{extra[:3]}); the base must be the LLaMA the delta was made from"
        )
    for name in delta_names:
        base_shape, delta_shape = base.shape(name), delta.shape(name)
        vocab_padding = name in VOCAB_ROWS and base_shape[1:] == delta_shape[1:] and base_shape[0] <= delta_shape[0]
        if base_shape != delta_shape and not vocab_padding:
            raise ValueError(
                f"{name}: base shape {base_shape} does not match delta shape {delta_shape}; the base must be the "
                "LLaMA the delta was made from (and have no more vocabulary rows than the delta)"
            )
    return delta_names


def _merged(name: str, base: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """base + delta in float32, cast to `dtype`; vocabulary tensors of the base padded with zero rows first."""
    base, delta = base.float(), delta.float()
    padded = 0
    if name in VOCAB_ROWS and base.shape[1:] == delta.shape[1:] and base.shape[0] < delta.shape[0]:
        padded = delta.shape[0] - base.shape[0]
        base = torch.cat([base, base.new_zeros(padded, *base.shape[1:])])  # (V_base, D) -> (V_delta, D)
    assert base.shape == delta.shape, (name, base.shape, delta.shape)  # checked by _check_tensors
    return (base + delta).to(dtype).contiguous(), padded


class _ShardWriter:
    """Collects output tensors and writes a safetensors shard whenever `max_bytes` is reached."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.folder / f".shard-{len(self.written) + 1:05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Give the shards their final names and write the index; returns the shard file names."""
        self.flush()
        count = len(self.written)
        names = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        )
        weight_map = {}
        for (path, tensors), name in zip(self.written, names, strict=True):
            os.replace(path, self.folder / name)
            weight_map.update(dict.fromkeys(tensors, name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


def _copy_side_files(delta_dir: Path, staging: Path) -> None:
    """Config, tokenizer and generation files of the delta (its 32,001-token tokenizer is the target's)."""
    for path in sorted(delta_dir.iterdir()):
        weights = path.suffix in (".bin", ".safetensors", ".pt", ".pth") or path.name.endswith(".index.json")
        if path.is_file() and not weights and not path.name.startswith("."):
            shutil.copy2(path, staging / path.name)


def apply_vicuna_delta(
    base_dir: Path,
    delta_dir: Path,
    output_dir: Path,
    dtype: torch.dtype = torch.float16,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> DeltaResult:
    """Write the target model `base + delta` as an HF LLaMA folder (safetensors shards, index, the delta's config and
    tokenizer), atomically.

    Args:
        base_dir: the HF LLaMA-7B folder the delta was made from (`.bin` or `.safetensors` weights).
        delta_dir: the delta folder (`lmsys/vicuna-7b-delta-v0` layout).
        output_dir: the folder to write; an existing one is replaced only once the new one is complete.
        dtype: dtype of the written weights (the sums are computed in float32).
        max_shard_bytes: size at which an output shard is closed.

    Returns:
        Counts and file names of what was written.

    Raises:
        FileNotFoundError: a folder without weights or config.json.
        ValueError: different tensor names or shapes in base and delta (a wrong base), a base with more vocabulary
            rows than the delta, or an output folder inside an input folder.
    """
    base_dir, delta_dir, output_dir = Path(base_dir), Path(delta_dir), Path(output_dir)
    # 1. Check the inputs before writing anything.
    for folder, what in ((base_dir, "base"), (delta_dir, "delta")):
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{what} folder {folder} has no config.json; pass the folder of the HF checkpoint")
        if output_dir.resolve() in (folder.resolve(), *folder.resolve().parents):
            raise ValueError(f"output {output_dir} would replace the {what} folder {folder}; choose another output")
    base = HFWeights(base_dir, "base folder", SKIPPED_SUFFIXES)
    delta = HFWeights(delta_dir, "delta folder", SKIPPED_SUFFIXES)
    names = _check_tensors(base, delta)
    # 2. Sum tensor by tensor into a staging folder, closing shards as they fill.
    staging = output_dir.with_name(f".{output_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer = _ShardWriter(staging, max_shard_bytes)
    padded_rows, vocab_size = 0, 0
    try:
        for i, name in enumerate(names):
            merged, padded = _merged(name, base.get(name), delta.get(name), dtype)
            padded_rows = max(padded_rows, padded)
            if name in VOCAB_ROWS:
                vocab_size = merged.shape[0]
            writer.add(name, merged)
            if (i + 1) % 50 == 0:
                logger.info("merged %d / %d tensors", i + 1, len(names))
        shard_files = writer.finish()
        # 3. The delta's config and tokenizer, then the atomic swap.
        _copy_side_files(delta_dir, staging)
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "wrote %d tensors in %d shard(s) to %s (%d zero rows padded)",
        len(names),
        len(shard_files),
        output_dir,
        padded_rows,
    )
    return DeltaResult(output_dir, len(names), shard_files, vocab_size, padded_rows)
