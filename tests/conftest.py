"""Shared fixtures: tiny checkpoints in the real formats, built once per test session.

Every fixture writes files through the same builders as `scripts/build_tiny_checkpoints.py`, and the
code under test loads them through the same loaders as real checkpoints.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# TorchInductor's shared kernel cache is not keyed by the instruction set: kernels generated under one
# ATEN_CPU_CAPABILITY fail to compile when a run under another reuses them ("at::vec has not been declared").
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"torchinductor_{getpass.getuser()}_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
    ),
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def tiny_cfg_path() -> Path:
    """The CPU config whose paths point at checkpoints/tiny/."""
    return REPO_ROOT / "configs" / "tiny.yaml"


TINY_CACHE_DIR = Path(tempfile.gettempdir()) / f"nextgpt_tests_{getpass.getuser()}"
"""Where built tiny checkpoint trees are kept between test sessions (`tiny_root`); delete it to rebuild."""


def _tiny_build_key(cfg_path: Path) -> str:
    """What a tiny checkpoint tree is a function of: the package's and the config's sources, the version of every
    installed distribution (the tokenizer trainer and the image rendering shape it too, not only torch), and the CPU
    kernels its pretraining ran with (`make test-numerics` builds a tree under each instruction set it forces).
    The thread count is left out: it changes only the rounding of the pretraining's reductions, as another machine's
    would, and a run with one thread (beside other runs) can use the tree a run with two built."""
    import hashlib
    import sys
    from importlib import metadata

    import torch

    digest = hashlib.sha256()
    for path in [*sorted((REPO_ROOT / "nextgpt").rglob("*.py")), cfg_path]:
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    installed = sorted(f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions())
    for part in (sys.version, *installed, torch.backends.cpu.get_cpu_capability()):
        digest.update(part.encode())
    return digest.hexdigest()[:24]


TINY_CACHE_KEEP = 4
"""Built trees kept besides the newest (one per instruction set a run forces, and a few source versions)."""


def _prune_tiny_cache(keep: Path, max_idle_s: float = 3600.0) -> None:
    """Delete cached trees beyond the `TINY_CACHE_KEEP` most recently used ones (100 MB each; every change to the
    package makes a new key) and builds left half-written by a killed session, once idle for `max_idle_s`, so a tree
    another session is copying is not pulled away from it."""
    import shutil
    import time

    def last_used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # pruned by another session meanwhile
            return time.time()

    entries = sorted(TINY_CACHE_DIR.iterdir(), key=last_used, reverse=True)
    trees = [path for path in entries if path.name.startswith("tiny-") and path != keep]
    stale = trees[TINY_CACHE_KEEP:] + [path for path in entries if path.name.startswith("building-")]
    for path in stale:
        if time.time() - last_used(path) > max_idle_s:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory, tiny_cfg_path: Path) -> Path:
    """A complete tiny checkpoint tree (LLM, ImageBind, three decoders), a fresh copy per session.

    Building it pretrains three models (about 75 s on 2 cores), so the built tree is kept in `TINY_CACHE_DIR` under a
    key of everything it depends on (`_tiny_build_key`) and copied from there; a session whose key is new builds it.
    Sessions that build at the same time each build, and the first to finish keeps its tree.
    """
    import shutil

    from nextgpt.config import load_config
    from nextgpt.tiny.build import build_tiny_checkpoints

    cached = TINY_CACHE_DIR / f"tiny-{_tiny_build_key(tiny_cfg_path)}"
    if not cached.is_dir():
        TINY_CACHE_DIR.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="building-", dir=TINY_CACHE_DIR))
        build_tiny_checkpoints(staging, load_config(tiny_cfg_path))
        try:
            staging.rename(cached)  # atomic: a session never sees a half-written tree
        except OSError:  # another session finished first
            shutil.rmtree(staging, ignore_errors=True)
        _prune_tiny_cache(keep=cached)
    os.utime(cached)  # recently used: kept by the pruning of other sessions
    root = tmp_path_factory.mktemp("tiny")
    shutil.copytree(cached, root, dirs_exist_ok=True)
    return root


@pytest.fixture()
def tiny_cfg(tiny_root: Path, tiny_cfg_path: Path):
    """configs/tiny.yaml with every checkpoint path moved into the session's tiny tree."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides

    return load_config(tiny_cfg_path, overrides=tiny_path_overrides(tiny_root))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_cfg_path: Path) -> Path:
    """A small synthetic world in every format, with caption embeddings written by preprocess_embeddings.py."""
    from nextgpt.cli import preprocess_embeddings
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.tiny.data import write_synthetic_world

    root = tmp_path_factory.mktemp("world")
    catalog = write_synthetic_world(root, num_train=8, num_eval=2, seed=0)
    names = [n for n, e in _catalog_entries(catalog).items() if e.get("caption_embed_dir")]
    argv = ["--config", str(tiny_cfg_path), "--catalog", str(catalog), "--datasets", *names, "--device", "cpu"]
    assert preprocess_embeddings.main([*argv, *tiny_path_overrides(tiny_root)]) == 0
    return catalog


def _catalog_entries(catalog: Path) -> dict:
    import yaml

    return yaml.safe_load(catalog.read_text())["datasets"]


TEACH_DATASET_NAMES = [
    "image_instruction",
    "video_instruction",
    "audio_instruction",
    "mosit_instruction",
    "alpaca_instruction",
]
TEACH_DATASETS = f"[{','.join(TEACH_DATASET_NAMES)}]"
TEACH_ITEMS = 32
"""Training items per modality of the taught checkpoint's world.

With the session world's 8, the checkpoint learned its 8 requests by heart (which reply template follows which
caption) and whether a new request ("an image of a red circle on the left") got its signal span depended on rounding:
on some CPUs it answered "Here you go." and stopped. With 32 it answers every modality's request with its span, with
a logit margin of about 4 at the weakest token (tests/inference/test_taught_checkpoint.py)."""
TEACH_OVERRIDES = [
    "train.init_from=",
    "train.max_steps=400",
    "train.micro_batch_size=8",
    "train.lr=5e-3",
    "train.warmup_ratio=0.1",  # 40 warmup steps: the freshly initialised projectors and LoRA see no full-lr step
    "train.schedule=cosine",
    "train.grad_clip=1.0",
    "train.save_every=100000",
]


@pytest.fixture(scope="session")
def taught_world(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_cfg_path: Path) -> Path:
    """A synthetic world with `TEACH_ITEMS` training items per modality for the taught checkpoint; its catalog."""
    from nextgpt.cli import preprocess_embeddings
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.tiny.data import write_synthetic_world

    catalog = write_synthetic_world(tmp_path_factory.mktemp("taught_world"), TEACH_ITEMS, 2, seed=0)
    names = [n for n, e in _catalog_entries(catalog).items() if e.get("caption_embed_dir") and n in TEACH_DATASET_NAMES]
    argv = ["--config", str(tiny_cfg_path), "--catalog", str(catalog), "--datasets", *names, "--device", "cpu"]
    assert preprocess_embeddings.main([*argv, *tiny_path_overrides(tiny_root)]) == 0
    return catalog


@pytest.fixture(scope="session")
def taught_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, taught_world: Path) -> Path:
    """A stage-3 checkpoint (real training loop) that answers media requests with the right signal spans.

    Trained for 400 steps on a synthetic world's T2M requests ("Please generate an image of ..."), MosIT-style
    multi-turn dialogues and Alpaca-style text answers, so inference tests can ask for every output modality. The
    folder above it holds the run's metrics.jsonl (per-step loss terms).
    """
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.training.loop import run

    out_dir = tmp_path_factory.mktemp("taught")
    overrides = [
        *tiny_path_overrides(tiny_root),
        f"data.catalog_path={taught_world}",
        f"train.output_dir={out_dir}",
        f"data.datasets={TEACH_DATASETS}",
        *TEACH_OVERRIDES,
    ]
    result = run(load_config(REPO_ROOT / "configs" / "tiny_stage_3.yaml", overrides=overrides))
    return result.final_dir


TOOL_TRAIN_ITEMS = 12
"""Training requests per task of the tool world (11 tasks, about 190 records with the synonymous-tool copies)."""
TOOL_OVERRIDES = ["train.save_every=100000"]


@pytest.fixture(scope="session")
def tool_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic ToolMMBench (nextgpt.tiny.tool_world): its catalog; the tool library is `tools.json` beside it."""
    from nextgpt.tiny.tool_world import write_tool_world

    return write_tool_world(tmp_path_factory.mktemp("tool_world"), TOOL_TRAIN_ITEMS, 4, seed=0)


@pytest.fixture(scope="session")
def tool_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tool_world: Path) -> Path:
    """The tiny tool stage (configs/tiny_stage_tool.yaml) trained on the tool world with the real training loop."""
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.training.loop import run

    overrides = [
        *tiny_path_overrides(tiny_root),
        f"data.catalog_path={tool_world}",
        f"data.tool_library_path={tool_world.parent / 'tools.json'}",
        f"train.output_dir={tmp_path_factory.mktemp('tools')}",
        *TOOL_OVERRIDES,
    ]
    return run(load_config(REPO_ROOT / "configs" / "tiny_stage_tool.yaml", overrides=overrides)).final_dir
