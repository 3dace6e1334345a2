"""predict.py for people: runs never overwrite each other, a late failure keeps the summary, decoders load only when
needed, progress is visible, --help does not pretend the real model's defaults, and a moved merged folder works."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

from nextgpt.cli import predict
from nextgpt.config import load_config
from nextgpt.inference import decoder_pool, media_io

IMAGE_REQUEST = "Please generate an image of a red circle on the left."
AUDIO_REQUEST = "Please generate a sound of a steady low tone."


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = predict.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / predict.SUMMARY_FILE).read_text())


def _base(checkpoint: Path, out_dir: Path) -> list[str]:
    return ["--checkpoint-dir", str(checkpoint), "--output-dir", str(out_dir), "--temperature", "0", "--no-stream"]


def test_two_runs_with_the_same_prompt_keep_both_outputs(taught_checkpoint, tmp_path, capsys):
    argv = [*_base(taught_checkpoint, tmp_path), "--prompt", IMAGE_REQUEST]
    assert _run([*argv, "--run-name", "first"], capsys)[0] == 0
    first = tmp_path / "first" / "reply-image-0.png"
    first_bytes = first.read_bytes()
    code, _, err = _run([*argv, "--seed", "5"], capsys)  # default run name: the start time
    assert code == 0, err
    (second_dir,) = [p for p in tmp_path.iterdir() if p.name != "first"]
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", second_dir.name)
    assert first.read_bytes() == first_bytes and (second_dir / "reply-image-0.png").is_file()
    assert _summary(tmp_path / "first")["results"][0]["outputs"][0]["path"] == str(first)
    assert f"summary: {second_dir / 'summary.json'}" in err


def test_summary_survives_a_write_failure_in_a_later_request(taught_checkpoint, tmp_path, capsys, monkeypatch):
    batch = tmp_path / "requests.jsonl"
    batch.write_text(
        json.dumps({"id": "one", "prompt": IMAGE_REQUEST}) + "\n" + json.dumps({"id": "two", "prompt": AUDIO_REQUEST})
    )
    real_save_audio = media_io.save_audio

    def full_disk(waveform, path, sample_rate):
        real_save_audio(waveform, path, sample_rate)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(media_io, "save_audio", full_disk)
    code, _, err = _run([*_base(taught_checkpoint, tmp_path / "out"), "--batch", str(batch), "--run-name", "r"], capsys)
    run_dir = tmp_path / "out" / "r"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "request two failed: No space left on device" in errors[0] and "free space" in errors[0]
    assert f"the 1 finished request(s) are listed in {run_dir / 'summary.json'}" in errors[0]
    summary = _summary(run_dir)
    assert [r["id"] for r in summary["results"]] == ["one"] and summary["complete"] is False
    assert Path(summary["results"][0]["outputs"][0]["path"]).is_file()


def test_image_to_text_loads_no_decoder(taught_checkpoint, bad_files, tmp_path, capsys, monkeypatch):
    loaded = []
    real_load = decoder_pool.load_decoder
    monkeypatch.setattr(decoder_pool, "load_decoder", lambda m, *a, **k: loaded.append(m) or real_load(m, *a, **k))
    argv = [
        *_base(taught_checkpoint, tmp_path),
        "--prompt",
        "Describe the image.",
        "--image",
        str(bad_files["good_png"]),
    ]
    code, out, err = _run([*argv, "--max-new-tokens", "12"], capsys)
    assert code == 0, err
    assert loaded == [] and "loading the" not in err and out.strip()
    code, _, err = _run([*_base(taught_checkpoint, tmp_path), "--prompt", AUDIO_REQUEST], capsys)
    assert code == 0, err
    assert [m.value for m in loaded] == ["audio"]  # a sound request loads AudioLDM only


def test_progress_bars_for_diffusion_steps_and_batches(taught_checkpoint, tmp_path, capsys):
    batch = tmp_path / "requests.jsonl"
    batch.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": IMAGE_REQUEST}) for i in range(2)))
    argv = [*_base(taught_checkpoint, tmp_path / "out"), "--batch", str(batch), "--progress", "on"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    steps = load_config(taught_checkpoint / "config.yaml").model.decoders.image.num_inference_steps
    assert re.search(rf"image decoder: 100%.*{steps}/{steps}", err), err
    assert re.search(r"requests: 100%.*2/2", err), err
    code, _, err = _run([*argv[:-2], "--progress", "off", "--run-name", "quiet"], capsys)
    assert code == 0 and not re.search(r"(image decoder|requests): +\d+%", err)


def test_help_defers_to_the_checkpoint_and_the_log_shows_its_values(taught_checkpoint, tmp_path, capsys):
    assert predict.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "default: the checkpoint's config" in help_text
    for real_model_default in ("default 512", "default 0.2", "default 7.5", "default 50", "default 320", "default 16"):
        assert real_model_default not in help_text
    cfg = load_config(taught_checkpoint / "config.yaml")
    code, _, err = _run([*_base(taught_checkpoint, tmp_path), "--prompt", "Hi", "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    (settings,) = [line for line in err.splitlines() if "nextgpt.predict: settings:" in line]
    assert "max_new_tokens=4*" in settings and f"top_p={cfg.generation.top_p} " in settings
    assert f"num_frames={cfg.model.decoders.video.num_frames}" in settings and "checkpoint's config" in settings


def test_moved_merged_folder_predicts_from_another_working_directory(taught_checkpoint, tmp_path, capsys, monkeypatch):
    from nextgpt.training.merge import merge_checkpoint

    merged = merge_checkpoint(taught_checkpoint, tmp_path / "built" / "merged")
    moved = tmp_path / "elsewhere" / "nextgpt-merged"
    moved.parent.mkdir()
    shutil.move(merged, moved)
    assert not merged.exists()
    work = tmp_path / "somewhere" / "else"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    argv = ["--checkpoint-dir", "../../elsewhere/nextgpt-merged", "--prompt", IMAGE_REQUEST, "--temperature", "0"]
    code, _, err = _run([*argv, "--output-dir", "out", "--run-name", "moved"], capsys)
    assert code == 0, err
    (record,) = _summary(work / "out" / "moved")["results"]
    (image,) = [o for o in record["outputs"] if o["modality"] == "image"]
    assert (work / image["path"]).is_file()
