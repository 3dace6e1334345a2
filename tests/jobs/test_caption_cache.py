"""preprocess_embeddings.py in parts: N processes each write their own share of the caption embedding files into one
folder; together they write exactly what one process writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from nextgpt.tiny.build import tiny_path_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET = "cc3m_dec"


def _run(tiny_root: Path, catalog: Path, *extra: str) -> int:
    from nextgpt.cli import preprocess_embeddings

    argv = ["--config", str(REPO_ROOT / "configs" / "tiny.yaml"), "--catalog", str(catalog), "--datasets", DATASET]
    return preprocess_embeddings.main([*argv, "--device", "cpu", *extra, *tiny_path_overrides(tiny_root)])


def _catalog_into(tmp: Path, world_catalog: Path, name: str) -> tuple[Path, Path]:
    """A copy of the world's catalog whose DATASET writes its embeddings into a fresh folder `name`."""
    from nextgpt.config_loader import to_dict
    from nextgpt.data.catalog import load_catalog

    entries = {n: to_dict(e) for n, e in load_catalog(world_catalog).items()}
    entries[DATASET]["caption_embed_dir"] = str(tmp / name)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path, tmp / name


def _files(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.rglob("*.npy"))}


def test_parts_write_disjoint_shares_of_the_single_run(tiny_root: Path, tiny_world: Path, tmp_path: Path):
    whole_catalog, whole_dir = _catalog_into(tmp_path, tiny_world, "whole")
    assert _run(tiny_root, whole_catalog) == 0
    parts_catalog, parts_dir = _catalog_into(tmp_path, tiny_world, "parts")
    shares = []
    for part in ("0/2", "1/2"):
        before = set(_files(parts_dir)) if parts_dir.exists() else set()
        assert _run(tiny_root, parts_catalog, "--part", part) == 0
        shares.append(set(_files(parts_dir)) - before)
    whole = _files(whole_dir)
    assert all(shares) and not shares[0] & shares[1] and shares[0] | shares[1] == set(whole)
    for name, embedding in _files(parts_dir).items():
        np.testing.assert_allclose(embedding, whole[name], atol=1e-3, rtol=0)  # float16 files, batched differently
