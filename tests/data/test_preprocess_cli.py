"""preprocess_embeddings.py and preprocess_features.py: every bad input ends with exit code 2, one `error:` line
naming the fix, no traceback, and nothing previously written (caption embeddings, feature caches) is changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nextgpt.tiny.build import tiny_path_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _catalog_with(t: Path, world_catalog: Path, name: str, **fields: str) -> Path:
    from nextgpt.config_loader import to_dict
    from nextgpt.data.catalog import load_catalog

    entries = {n: to_dict(e) for n, e in load_catalog(world_catalog).items()}
    entries[name].update(fields)
    path = t / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return path


def _a_file(t: Path) -> Path:
    (t / "a_file").write_text("x")
    return t / "a_file"


def _empty_dir(t: Path) -> Path:
    (t / "empty").mkdir(exist_ok=True)
    return t / "empty"


EMBEDDING_CASES = {
    "missing_config": (lambda t, w: ["--config", f"{t}/nope.yaml"], "config file not found: {t}/nope.yaml"),
    "missing_catalog": (lambda t, w: ["--catalog", f"{t}/nope.yaml"], "dataset catalog (data.catalog_path) not found"),
    "catalog_is_a_folder": (lambda t, w: ["--catalog", str(t)], "dataset catalog (data.catalog_path) not found: {t}"),
    "unknown_dataset": (lambda t, w: ["--datasets", "cc3m_decc"], "did you mean 'cc3m_dec'"),
    "no_caption_embed_dir": (lambda t, w: ["--datasets", "cc3m_enc"], "cc3m_enc has no caption_embed_dir"),
    "zero_batch_size": (lambda t, w: ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "part_out_of_range": (lambda t, w: ["--part", "2/2"], "--part must be I/N with 0 <= I < N (e.g. 0/4), got '2/2'"),
    "not_a_device": (lambda t, w: ["--device", "gpu0"], "--device 'gpu0' is not a device name"),
    "absent_gpu": (lambda t, w: ["--device", "cuda:99"], "--device cuda:99 but"),
    "override_without_value": (lambda t, w: ["model.llm.max_length"], "must look like key.sub=value"),
    "missing_decoder": (
        lambda t, w: [f"model.decoders.image.pipeline_path={t}/sd"], "model.decoders.image.pipeline_path = {t}/sd",
    ),
    "embed_dir_is_a_file": (
        lambda t, w: ["--catalog", str(_catalog_with(t, w, "cc3m_dec", caption_embed_dir=str(_a_file(t))))],
        "cc3m_dec: caption_embed_dir {t}/a_file is a file",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EMBEDDING_CASES))
def test_bad_embedding_input_is_one_line(tiny_root: Path, tiny_world: Path, tmp_path: Path, capsys, case: str):
    from nextgpt.cli import preprocess_embeddings

    extra, expected = EMBEDDING_CASES[case]
    base = ["--config", str(REPO_ROOT / "configs" / "tiny.yaml"), "--catalog", str(tiny_world)]
    base += ["--datasets", "cc3m_dec", "--device", "cpu", *tiny_path_overrides(tiny_root)]
    argv = [*base, *extra(tmp_path, tiny_world)]
    before = _snapshot(tiny_world.parent)
    code = preprocess_embeddings.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(t=tmp_path) in lines[0]
    assert _snapshot(tiny_world.parent) == before, "the cached embeddings changed"


FEATURE_CASES = {
    "missing_config": (lambda t, w: ["--config", f"{t}/nope.yaml"], "config file not found: {t}/nope.yaml"),
    "no_cache_dir": (None, "no cache folder: pass --cache-dir or set data.feature_cache_dir"),
    "cache_dir_is_a_file": (lambda t, w: ["--cache-dir", str(_a_file(t))], "cache folder {t}/a_file is a file"),
    "cache_dir_under_a_file": (
        lambda t, w: ["--cache-dir", f"{_a_file(t)}/cache"], "{t}/a_file/cache/cc3m_enc; a part of that path is a file",
    ),
    "negative_workers": (lambda t, w: ["--num-workers", "-1"], "--num-workers must be >= 0"),
    "zero_shard_size": (lambda t, w: ["--shard-size", "0"], "--shard-size >= 1"),
    "part_not_a_fraction": (lambda t, w: ["--part", "1"], "--part must be I/N with 0 <= I < N (e.g. 0/4), got '1'"),
    "missing_encoder": (
        lambda t, w: [f"model.encoder.checkpoint_path={t}/ib.pth"], "model.encoder.checkpoint_path = {t}/ib.pth",
    ),
    "unknown_dataset": (lambda t, w: ["--datasets", "webvid"], "dataset 'webvid' is not in the catalog"),
    "wrong_image_dir": (
        lambda t, w: ["--catalog", str(_catalog_with(t, w, "cc3m_enc", image_dir=str(_empty_dir(t))))],
        "cc3m_enc: none of the first 8 files its records name exists under image_dir {t}/empty",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_bad_feature_input_is_one_line(tiny_root: Path, tiny_world: Path, tmp_path: Path, capsys, case: str):
    from nextgpt.cli import preprocess_features

    extra, expected = FEATURE_CASES[case]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "kept.txt").write_text("an earlier cache")
    options = ["--config", str(REPO_ROOT / "configs" / "tiny_stage_1.yaml"), "--catalog", str(tiny_world)]
    options += ["--datasets", "cc3m_enc", "--device", "cpu", "--num-workers", "0"]
    if extra is not None:
        options += ["--cache-dir", str(cache)]
    changes = extra(tmp_path, tiny_world) if extra is not None else []
    overrides = [a for a in changes if "=" in a and not a.startswith("-")]  # positionals go after the options
    argv = [*options, *[a for a in changes if a not in overrides], *tiny_path_overrides(tiny_root), *overrides]
    before = _snapshot(tmp_path), _snapshot(tiny_world.parent)
    code = preprocess_features.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(t=tmp_path) in lines[0]
    assert (_snapshot(tmp_path), _snapshot(tiny_world.parent)) == before, "a failed run changed files"
