"""Training moves the held-out metrics the right way: trained checkpoints beat the same models untrained.

A reduced version of the quickstart's evaluation: a short stage-1 run on the session's small world writes captions
that name the held-out items' attributes far more often than the untrained input projector; a short stage-2 run on a
world with more captions raises the cosine between projected signal tokens and the caption embeddings and retrieves
held-out captions far above the untrained model; a short stage-3 run on its checkpoint switches to the requested
modality where the untrained model never does. The stage-3 check goes through the evaluate command
(nextgpt/cli/evaluate.py) and its JSON report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextgpt.constants import MODALITIES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _train(stage: int, out_dir: Path, tiny_root: Path, catalog: Path, *extra: str) -> Path:
    from nextgpt.config import load_config
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.training.loop import run

    overrides = [
        *tiny_path_overrides(tiny_root),
        f"data.catalog_path={catalog}",
        f"train.output_dir={out_dir}",
        "train.micro_batch_size=8",
        "train.save_every=100000",
        *extra,
    ]
    return run(load_config(REPO_ROOT / "configs" / f"tiny_stage_{stage}.yaml", overrides=overrides)).final_dir


@pytest.fixture(scope="module")
def stage_1_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_world: Path) -> Path:
    """A short stage-1 run (input projector + token rows, caption CE) on the small world's X -> caption records."""
    out_dir = tmp_path_factory.mktemp("stage_1")
    return _train(1, out_dir, tiny_root, tiny_world, "train.max_steps=80", "train.lr=1e-2")


@pytest.fixture(scope="module")
def caption_world(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_cfg_path: Path) -> Path:
    """A world with 48 training and 8 held-out captions per modality, and the decoders' embeddings of them.

    The session's small world has 8 training captions of the 48 possible image (and video) captions: too few for a
    projector to place captions it never saw, so stage 2 gets a world of its own.
    """
    from nextgpt.cli import preprocess_embeddings
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.tiny.data import write_synthetic_world

    catalog = write_synthetic_world(tmp_path_factory.mktemp("caption_world"), num_train=48, num_eval=8, seed=0)
    names = [f"{name}{split}" for name in ("cc3m_dec", "webvid_dec", "audiocap_dec") for split in ("", "_eval")]
    argv = ["--config", str(tiny_cfg_path), "--catalog", str(catalog), "--datasets", *names, "--device", "cpu"]
    assert preprocess_embeddings.main([*argv, *tiny_path_overrides(tiny_root)]) == 0
    return catalog


@pytest.fixture(scope="module")
def stage_2_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, caption_world: Path) -> Path:
    """A short stage-2 run (output projectors + token rows, CE + L2) on the caption world's generation records."""
    out_dir = tmp_path_factory.mktemp("stage_2")
    # 600 steps: after 450 held-out retrieval was 0.54-0.79 across instruction sets against a bar of about 0.51
    # (untrained + 0.3); after 600, 0.67 where 450 gave 0.54.
    return _train(2, out_dir, tiny_root, caption_world, "train.init_from=", "train.max_steps=600")


@pytest.fixture(scope="module")
def stage_3_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_root: Path, tiny_world: Path, stage_2_checkpoint: Path
) -> Path:
    """A short stage-3 run on the stage-2 checkpoint: text -> X requests and text-only instructions."""
    datasets = "data.datasets=[image_instruction,video_instruction,audio_instruction,alpaca_instruction]"
    out_dir = tmp_path_factory.mktemp("stage_3")
    init = f"train.init_from={stage_2_checkpoint}"
    return _train(3, out_dir, tiny_root, tiny_world, init, datasets, "train.max_steps=300", "train.lr=1e-2")


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.numerics
def test_stage_1_training_names_the_heldout_attributes_better_than_chance(stage_1_checkpoint: Path):
    from nextgpt.eval.report import evaluate_checkpoint

    report = evaluate_checkpoint(stage_1_checkpoint, baseline=True)
    trained, untrained = report["metrics"]["captioning"], report["untrained"]["captioning"]
    assert trained["num_scored"] == untrained["num_scored"] == 2 * (3 + 3 + 2)  # 2 held-out items per modality
    assert trained["accuracy"] > untrained["accuracy"]
    assert trained["accuracy"] > trained["chance"] + 0.2


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.numerics
def test_stage_2_training_brings_projections_closer_to_the_caption_embeddings(stage_2_checkpoint: Path):
    from nextgpt.eval.report import evaluate_checkpoint

    report = evaluate_checkpoint(stage_2_checkpoint, baseline=True)
    assert report["stage"] == 2 and list(report["metrics"]) == ["alignment"]
    trained, untrained = report["metrics"]["alignment"], report["untrained"]["alignment"]
    for modality in MODALITIES:
        after, before = trained["per_modality"][modality.value], untrained["per_modality"][modality.value]
        assert after["num_items"] == 8 and 0 < after["chance"] <= 1
        assert after["mean_cosine"] > before["mean_cosine"] + 0.2, modality
    assert trained["mean_cosine"] > 0.5 > untrained["mean_cosine"]
    assert trained["retrieval_accuracy"] > untrained["retrieval_accuracy"] + 0.3


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.numerics
def test_instruction_tuning_beats_untrained_on_modality_switching(stage_3_checkpoint: Path, tmp_path: Path):
    from nextgpt.cli import evaluate

    report_path = tmp_path / "eval.json"
    argv = ["--checkpoint-dir", str(stage_3_checkpoint), "--metrics", "switching", "--baseline"]
    assert evaluate.main([*argv, "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (run,) = report["runs"]
    trained, untrained = run["metrics"]["switching"], run["untrained"]["switching"]
    for modality in MODALITIES:
        assert trained["per_output"][modality.value]["accuracy"] > untrained["per_output"][modality.value]["accuracy"]
    assert trained["modality_switch_accuracy"] > untrained["modality_switch_accuracy"]
    assert [t["name"] for t in report["targets"]] == ["stage-3 modality-switch accuracy"]


def test_evaluate_refuses_a_folder_without_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from nextgpt.cli import evaluate

    assert evaluate.main(["--checkpoint-dir", str(tmp_path), "--output", str(tmp_path / "eval.json")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.slow
@pytest.mark.numerics
def test_tool_stage_chooses_tools_for_heldout_requests_far_above_untrained(tool_checkpoint: Path, tmp_path: Path):
    """Held-out requests (new media, wordings never trained on) of the tiny tool world, through the evaluate command."""
    from nextgpt.cli import evaluate

    report_path = tmp_path / "eval.json"
    argv = ["--checkpoint-dir", str(tool_checkpoint), "--baseline", "--max-items", "6", "--output", str(report_path)]
    assert evaluate.main(argv) == 0
    (run,) = json.loads(report_path.read_text())["runs"]
    trained, untrained = run["metrics"]["tools"], run["untrained"]["tools"]
    assert trained["overall"]["num_examples"] == untrained["overall"]["num_examples"] == 24
    assert set(trained["by_modality"]) == {"text", "image", "video", "audio"}
    assert set(trained["by_ambiguity"]) == {"none", "type_1"}
    chance = trained["overall"]["chance"]
    assert trained["overall"]["accuracy"] >= max(chance, untrained["overall"]["accuracy"]) + 0.4
    assert trained["overall"]["hallucination_rate"] <= 0.125 < untrained["overall"]["hallucination_rate"]
    assert trained["overall"]["format_accuracy"] >= 0.9 > untrained["overall"]["format_accuracy"]
    table = report_path.with_suffix(".md").read_text()
    assert "| trained | overall | 24 |" in table and "| untrained | input: audio | 6 |" in table


@pytest.mark.slow
@pytest.mark.numerics
def test_predict_runs_the_chosen_tool_on_the_users_media(tool_checkpoint: Path, tool_world: Path, tmp_path: Path):
    """A request of the training set: the model chooses the shape counter, which counts the shapes of the image."""
    from nextgpt.cli import predict
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.records import load_records
    from nextgpt.data.tool_records import group_tool_records
    from nextgpt.tiny.tools import count_shapes

    entry = load_catalog(tool_world)["tool_image"]
    examples, _ = group_tool_records(load_records(entry.annotation_path), entry)
    example = next(e for e in examples if e.right_tools == ["tiny/shape-counter"])
    argv = ["--checkpoint-dir", str(tool_checkpoint), "--tools", str(tool_world.parent / "tools.json")]
    argv += ["--image", str(example.media), "--prompt", example.request, "--output-dir", str(tmp_path)]
    assert predict.main([*argv, "--run-name", "tool", "--temperature", "0", "--no-stream"]) == 0
    (result,) = json.loads((tmp_path / "tool" / "summary.json").read_text())["results"]
    assert result["text"] == "{'api_name': tiny/shape-counter}"
    assert result["tool"]["tool"] == "tiny/shape-counter" and result["tool"]["status"] == "ran"
    assert result["tool"]["text"] == count_shapes("", [example.media])
