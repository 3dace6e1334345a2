"""The whole harness on the tiny world, in the real formats: evaluate.py --tasks all on a trained stage-3 checkpoint,
split over two ranks, resumed after a lost sample, scored with the tiny metric models, written as an eval card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nextgpt.eval.protocol import TASK_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_OF = {"coco": "image", "msrvtt": "video", "audiocaps": "audio"}


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world with 4 held-out items per modality (FID needs a few samples); its benchmarks/ folder is what is read."""
    from nextgpt.tiny.data import write_synthetic_world

    return write_synthetic_world(tmp_path_factory.mktemp("bench_world"), num_train=1, num_eval=4, seed=3).parent


def _argv(checkpoint: Path, out_dir: Path, world: Path, tiny_root: Path, switch_catalog: Path, *extra: str) -> list:
    per_task = [
        f"{task}.annotation_path={world / 'benchmarks' / (BENCHMARK_OF[task.split('_')[0]] + '.json')}"
        for task in TASK_NAMES
        if task != "switching"
    ]
    metrics = tiny_root / "metrics"
    return [
        "--tasks", "all", "--protocol-dir", str(REPO_ROOT / "configs" / "eval" / "tiny"),
        "--checkpoint-dir", str(checkpoint), "--output-dir", str(out_dir), *extra,
        *per_task, f"media_dir={world}", "num_samples=4", "switching.num_samples=2",
        f"metric_models.inception={metrics / 'inception.pth'}", f"metric_models.clip={metrics / 'clip'}",
        f"metric_models.audio_classifier={metrics / 'cnn14.pth'}", f"switching.switching.catalog_path={switch_catalog}",
    ]  # fmt: skip


@pytest.mark.slow  # about a minute: every task, twice over, and Java for the caption metrics
def test_every_task_runs_sharded_and_resumes(
    taught_checkpoint: Path, bench_world: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path
):
    from nextgpt.cli import evaluate
    from nextgpt.eval.media_scores import inception_features
    from nextgpt.eval.metric_models import load_inception
    from nextgpt.eval.sample_store import SampleStore

    out_dir = tmp_path / "eval"
    argv = _argv(taught_checkpoint, out_dir, bench_world, tiny_root, tiny_world)
    # Rank 1 of 2 writes its half and no card; rank 0 then writes the other half and scores everything.
    assert evaluate.main([*argv, "--rank", "1", "--world-size", "2"]) == 0
    assert not (out_dir / "eval_card.json").exists()
    assert sorted(p.stem for p in (out_dir / "coco_t2i" / "samples").glob("*.npz")) == [
        "eval_img_00001",
        "eval_img_00003",
    ]
    assert evaluate.main([*argv, "--rank", "0", "--world-size", "2"]) == 0
    card = json.loads((out_dir / "eval_card.json").read_text())
    assert list(card["tasks"]) == list(TASK_NAMES)
    for name in ("coco_caption", "msrvtt_caption", "audiocaps_caption"):
        assert set(card["tasks"][name]["scores"]) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
        assert card["tasks"][name]["scores"]["ROUGE-L"] > 0  # the taught checkpoint names shapes and colours
    expected = {"coco_t2i": {"FID", "CLIP"}, "msrvtt_t2v": {"FID", "CLIPSIM"}, "audiocaps_t2a": {"FD", "KL", "IS"}}
    for name, metrics in expected.items():
        task = card["tasks"][name]
        assert set(task["scores"]) == metrics and all(math.isfinite(v) for v in task["scores"].values()), task
        assert {m["sha256"] for m in task["metric_models"]} and (out_dir / task["grid"]).is_file()
    switching = card["tasks"]["switching"]["scores"]
    assert 0 <= switching["switch"] <= 1 and set(switching) >= {"switch.image", "switch.text", "cosine.audio"}
    assert "| coco_t2i | tiny world images (eval) | 4 | FID |" in (out_dir / "eval_card.md").read_text()

    # FID from the stored samples and the reference PNGs, read here, equals the card's.
    samples = SampleStore(out_dir / "coco_t2i" / "samples").read_all([f"eval_img_{k:05d}" for k in range(4)])
    references = [
        np.asarray(Image.open(p).convert("RGB")) for p in sorted(bench_world.glob("T_X_pair_data/cc3m/images/eval_*"))
    ]
    inception = load_inception(tiny_root / "metrics" / "inception.pth")
    generated = inception_features(inception, [s.media["image"] for s in samples]).double().numpy()
    real = inception_features(inception, references).double().numpy()
    from pytorch_fid.fid_score import calculate_frechet_distance

    fid = calculate_frechet_distance(
        generated.mean(0), np.cov(generated, rowvar=False), real.mean(0), np.cov(real, rowvar=False)
    )
    assert card["tasks"]["coco_t2i"]["scores"]["FID"] == pytest.approx(fid, rel=1e-6)

    # A lost sample is generated again, alone; the others are reused and the numbers do not move.
    lost = out_dir / "coco_t2i" / "samples" / "eval_img_00002.npz"
    lost.unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out_dir / "coco_t2i" / "samples").glob("*.npz")}
    assert evaluate.main(argv) == 0
    again = json.loads((out_dir / "eval_card.json").read_text())
    assert lost.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in lost.parent.glob("*.npz") if p.name in mtimes} == mtimes
    for name in expected:
        assert again["tasks"][name]["scores"] == pytest.approx(card["tasks"][name]["scores"], rel=1e-6)


def test_a_missing_metric_model_stops_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nextgpt.cli import evaluate

    world = tmp_path / "world"
    from nextgpt.tiny.data import write_synthetic_world

    write_synthetic_world(world, num_train=1, num_eval=2, seed=0)
    argv = ["--tasks", "coco_t2i", "--protocol-dir", str(REPO_ROOT / "configs" / "eval" / "tiny"),
            "--checkpoint-dir", str(tmp_path / "no-checkpoint"), "--output-dir", str(tmp_path / "eval"),
            f"annotation_path={world / 'benchmarks' / 'image.json'}", f"media_dir={world}", "num_samples=2",
            f"metric_models.inception={tmp_path / 'pt_inception.pth'}"]  # fmt: skip
    assert evaluate.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # logs aside
    assert len(errors) == 1 and "inception file not found" in errors[0] and "pytorch-fid" in errors[0]
