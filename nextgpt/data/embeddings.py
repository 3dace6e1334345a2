"""Cached caption embeddings: one naming rule, atomic float16 `.npy` writes and checked float32 reads.

The annotation records name each generation target's embedding (`"001312382.jpg.npy"`, `"mosit_i_0000002_00.jpg"`);
`caption_embedding_path` turns such a name into the file inside the dataset's `caption_embed_dir`. Both the datasets
and preprocess_embeddings.py use it, so a name written by one is always found by the other.

    path = caption_embedding_path(Path("data/embed"), "001312382.jpg.npy")   # data/embed/001312382.jpg.npy
    save_caption_embedding(path, text_encoder_output)                         # (77, 768) -> float16 file
    target = load_caption_embedding(path, expected_shape=(77, 768))           # float32 tensor
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

EMBEDDING_SUFFIX = ".npy"


def caption_embedding_name(name: str) -> str:
    """File name of a caption embedding: `x.npy` stays `x.npy`, any other name gets `.npy` appended.

    The original preprocessing removed the suffix with `str.strip('.npy')`, which also eats trailing `n`, `p`,
    `y` and `.` characters ("happy.npy" -> "ha"); this rule keeps every name intact.

    Args:
        name: the name given in an annotation record.

    Returns:
        The bare file name.

    Raises:
        ValueError: empty name, a path separator, or a name that is only dots.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"caption embedding name must be a non-empty string, got {name!r}; fix the annotation record")
    if "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(
            f"caption embedding name must be a bare file name, got {name!r}; "
            "remove the folder part (folders come from the catalog's caption_embed_dir)"
        )
    if set(name) == {"."}:
        raise ValueError(f"caption embedding name {name!r} is not a file name; fix the annotation record")
    return name if name.endswith(EMBEDDING_SUFFIX) else name + EMBEDDING_SUFFIX


def caption_embedding_path(embed_dir: Path, name: str) -> Path:
    """Path of the cached embedding called `name` inside `embed_dir` (see `caption_embedding_name`).

    Args:
        embed_dir: the dataset's `caption_embed_dir`.
        name: the name given in an annotation record.

    Returns:
        `embed_dir / caption_embedding_name(name)`.

    Raises:
        ValueError: if `name` is not a bare file name.
    """
    return Path(embed_dir) / caption_embedding_name(name)


def caption_embedding_shape(num_queries: int, out_dim: int) -> tuple[int, ...]:
    """Shape of one cached caption embedding for a decoder conditioned on `num_queries` x `out_dim`.

    Args:
        num_queries: conditioning tokens (77 for SD / ZeroScope, 1 for AudioLDM).
        out_dim: conditioning width.

    Returns:
        `(num_queries, out_dim)`, or `(out_dim,)` when `num_queries == 1` (AudioLDM's CLAP vector is stored 1-D).
    """
    return (out_dim,) if num_queries == 1 else (num_queries, out_dim)


def save_caption_embedding(path: Path, embedding: np.ndarray | torch.Tensor) -> Path:
    """Write one embedding as a float16 `.npy` file atomically (temporary file, then `os.replace`).

    A crash mid-write never leaves a truncated file under the final name, so a rerun that skips existing
    files stays correct.

    Args:
        path: destination, normally from `caption_embedding_path`.
        embedding: array or tensor of any float dtype.

    Returns:
        `path`.

    Raises:
        ValueError: if the embedding is empty or not finite.
    """
    path = Path(path)
    if isinstance(embedding, torch.Tensor):
        embedding = embedding.detach().float().cpu().numpy()
    array = np.asarray(embedding)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"caption embedding for {path} must be non-empty and finite, got shape {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array.astype(np.float16), allow_pickle=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_caption_embedding(path: Path, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Read one cached embedding as a float32 tensor and check its shape.

    Args:
        path: the `.npy` file.
        expected_shape: e.g. (77, 768) or (512,); None skips the check. For a 1-query decoder a stored
            (1, D) array is accepted as (D,).

    Returns:
        A float32 tensor of `expected_shape` (or the stored shape).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, non-finite values or a wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"caption embedding {path} does not exist; run preprocess_embeddings.py for this dataset"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"caption embedding {path} is not a readable .npy array ({err}); regenerate it") from err
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        if len(expected_shape) == 1 and tuple(array.shape) == (1, *expected_shape):
            array = array.reshape(expected_shape)  # (1, D) -> (D,)
        else:
            raise ValueError(
                f"caption embedding {path} has shape {tuple(array.shape)}, expected {tuple(expected_shape)}; "
                "regenerate the embeddings with the decoder the config uses (model.output_projectors.<modality>)"
            )
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise ValueError(f"caption embedding {path} must hold finite floats, got dtype {array.dtype}; regenerate it")
    return torch.from_numpy(array.astype(np.float32))
