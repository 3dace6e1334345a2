"""train.py and merge_lora_weights.py: every bad input ends with exit code 2, one `error:` line naming the fix, no
traceback, and nothing previously written is lost or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from stage_helpers import QUICK_STAGE_2, REPO_ROOT, error_lines, quick_cfg, snapshot, stage_overrides

from nextgpt.training.loop import run

STAGE_2 = REPO_ROOT / "configs" / "tiny_stage_2.yaml"


@pytest.fixture(scope="module")
def finished_run(tiny_root: Path, tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    run(quick_cfg(tiny_root, tiny_world, out, "train.max_steps=2", "train.save_every=1"))
    return out


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _hold_lock(run_dir: Path):
    from nextgpt.training.run_lock import RunLock

    return RunLock(run_dir).acquire()  # a second open file: flock refuses it even in the same process


def _corrupt_all(run_dir: Path) -> None:
    for name in ("step-000001", "final"):
        _flip(run_dir / name / "trainable.safetensors")


def _plant(run_dir: Path) -> None:
    from nextgpt.manifest import write_manifest

    target = run_dir / "final" / "deepspeed" / "state" / "mp_rank_00_model_states.pt"
    torch.save({"module": shutil.rmtree}, target)  # a global outside the allow-list
    write_manifest(run_dir / "final")


TRAIN_CASES = {
    "missing_config": (["--config", "{t}/nope.yaml"], None, "config file not found: {t}/nope.yaml"),
    "override_without_value": (["train.lr"], None, "override 'train.lr' must look like key.sub=value"),
    "unknown_key": (["train.lrr=1"], None, "unknown config key 'train.lrr' (did you mean 'lr'?)"),
    "negative_lr": (["train.lr=-1"], None, "train.lr must be a finite number > 0, got -1.0"),
    "unknown_dataset": (["data.datasets=[cc3m_decc]"], None, "did you mean 'cc3m_dec'"),
    "missing_init_from": (["train.init_from={t}/stage_1"], None, "train.init_from {t}/stage_1 is not a folder"),
    "bad_deepspeed_json": (["train.deepspeed_config={t}/ds.json"], None, "is not readable JSON"),
    "changed_micro_batch": (["train.max_steps=4", "train.micro_batch_size=3"], None, "train.micro_batch_size was 2"),
    "locked_folder": ([], _hold_lock, "is in use by another trainer (pid"),
    "no_intact_checkpoint": (["train.max_steps=4"], _corrupt_all, "none of the 2 checkpoints in"),
    "planted_pickle": (["train.max_steps=4"], _plant, "train.trust_checkpoint_pickles=true"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_input_is_one_line(
    finished_run: Path, tiny_root: Path, tiny_world: Path, tmp_path: Path, capsys, case: str
):
    from nextgpt.cli import train

    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (tmp_path / "ds.json").write_text("{not json")
    extra, prepare, expected = TRAIN_CASES[case]
    held = prepare(run_dir) if prepare is not None else None
    before = snapshot(run_dir)
    argv = [a.replace("{t}", str(tmp_path)) for a in extra]
    config = ["--config", str(STAGE_2)] if "--config" not in argv else []
    overrides = stage_overrides(tiny_root, tiny_world, run_dir, *QUICK_STAGE_2, "train.max_steps=2")
    try:
        code = train.main([*config, *overrides, *argv])
    finally:
        if held is not None:
            held.release()
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.replace("{t}", str(tmp_path)) in lines[0]
    after = snapshot(run_dir)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before, "a failed command changed the run folder"


@pytest.fixture(scope="module")
def checkpoints(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stage-3 run folder (step-000001, final) and a stage-2 checkpoint, written by save_checkpoint."""
    from nextgpt.config import load_config
    from nextgpt.model import build_nextgpt
    from nextgpt.tiny.build import tiny_path_overrides
    from nextgpt.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("merge")
    folders = {}
    for stage in (2, 3):
        cfg = load_config(REPO_ROOT / "configs" / f"tiny_stage_{stage}.yaml", overrides=tiny_path_overrides(tiny_root))
        model = build_nextgpt(cfg.model, load_encoder=False)
        for name in ("step-000001", "final"):
            folders[f"stage_{stage}_{name}"] = save_checkpoint(root / f"stage_{stage}" / name, model, cfg, step=1)
    return folders


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file"


def _unrelated(tmp_path: Path) -> Path:
    (tmp_path / "notes").mkdir(exist_ok=True)
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    return tmp_path / "notes"


MERGE_CASES = {
    "missing_checkpoint": (lambda c, t: (t / "nope", t / "out"), "--checkpoint-dir {t}/nope does not exist"),
    "checkpoint_is_a_file": (lambda c, t: (_file(t), t / "out"), "--checkpoint-dir {t}/a_file is a file"),
    "empty_checkpoint": (lambda c, t: ((t / "empty").mkdir() or t / "empty", t / "out"), "is not a checkpoint: it is empty"),
    "run_folder": (lambda c, t: (c["stage_3_final"].parent, t / "out"), "(a run folder: name one of its checkpoints)"),
    "output_is_input": (lambda c, t: (c["stage_3_final"], c["stage_3_final"]), "is inside the checkpoint being merged"),
    "output_inside_input": (lambda c, t: (c["stage_3_final"], c["stage_3_final"] / "m"), "is inside the checkpoint"),
    "output_contains_input": (lambda c, t: (c["stage_3_final"], c["stage_3_final"].parent), "contains the checkpoint"),
    "output_is_sibling_checkpoint": (
        lambda c, t: (c["stage_3_final"], c["stage_3_step-000001"]), "is a checkpoint of the run",
    ),
    "output_is_a_file": (lambda c, t: (c["stage_3_final"], _file(t)), "--output-dir {t}/a_file is a file"),
    "output_under_a_file": (lambda c, t: (c["stage_3_final"], _file(t) / "m"), "a part of that path is a file"),
    "output_not_a_merge": (lambda c, t: (c["stage_3_final"], _unrelated(t)), "pass --overwrite to replace it"),
    "stage_2_checkpoint": (lambda c, t: (c["stage_2_final"], t / "out"), "was trained without LoRA"),
    "corrupt_weights": (
        lambda c, t: (_flip(c["stage_3_final"] / "trainable.safetensors") or c["stage_3_final"], t / "out"),
        "trainable.safetensors (checksum differs)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MERGE_CASES))
def test_bad_merge_input_is_one_line(checkpoints: dict[str, Path], tmp_path: Path, capsys, case: str):
    from nextgpt.cli import merge

    folders = {k: Path(shutil.copytree(v.parent, tmp_path / "c" / v.parent.name, dirs_exist_ok=True)) / v.name
               for k, v in checkpoints.items()}  # fmt: skip
    make, expected = MERGE_CASES[case]
    source, target = make(folders, tmp_path)
    before = snapshot(tmp_path)
    code = merge.main(["--checkpoint-dir", str(source), "--output-dir", str(target)])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.replace("{t}", str(tmp_path)) in lines[0]
    assert snapshot(tmp_path) == before, "a failed merge changed files"


@pytest.mark.parametrize("override", ["model.llm.model_path={t}/vicuna", "model.lora.r"])
def test_bad_merge_overrides_are_one_line(checkpoints: dict[str, Path], tmp_path: Path, capsys, override: str):
    from nextgpt.cli import merge

    argv = ["--checkpoint-dir", str(checkpoints["stage_3_final"]), "--output-dir", str(tmp_path / "out")]
    assert merge.main([*argv, override.replace("{t}", str(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "Traceback" not in err and not (tmp_path / "out").exists()


def test_merge_replaces_only_previous_merges_unless_asked(checkpoints: dict[str, Path], tmp_path: Path, capsys):
    from nextgpt.cli import merge
    from nextgpt.manifest import verify_manifest

    argv = ["--checkpoint-dir", str(checkpoints["stage_3_final"]), "--output-dir"]
    out = tmp_path / "merged"
    assert merge.main([*argv, str(out)]) == 0
    assert verify_manifest(out, required=True) and json.loads((out / "meta.json").read_text())["merged_from"]
    (out / "stale.txt").write_text("from the previous merge")
    assert merge.main([*argv, str(out)]) == 0  # a previous merge is replaced whole, atomically
    assert not (out / "stale.txt").exists() and verify_manifest(out, required=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"], "no staging folder is left behind"
    notes = _unrelated(tmp_path)
    assert merge.main([*argv, str(notes)]) == 2 and (notes / "todo.txt").read_text() == "keep me"
    assert merge.main([*argv, str(notes), "--overwrite"]) == 0 and not (notes / "todo.txt").exists()
    capsys.readouterr()
