"""prepare_data.py: a run prints each dataset's report; bad input exits 2 with one `error:` line naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_downloads import cc3m_download, write_json

from nextgpt.cli import prepare_data


def test_run_prints_the_report_and_saves_it(tmp_path: Path, capsys):
    root = cc3m_download(tmp_path / "cc3m")
    code = prepare_data.main(
        ["--dataset", "cc3m", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "cc3m: 12 found, 9 skipped; written: cc3m_comprehension.json 3, cc3m_generation.json 3" in stdout
    assert "skipped unsafe_path: 2 (e.g. 007, 008)" in stdout
    assert f"catalog: {tmp_path / 'out' / 'datasets.yaml'}" in stdout
    assert (tmp_path / "out" / "report.json").is_file()


CASES = {
    "root_missing": (lambda t: ["--root", f"{t}/nope"], "--root {t}/nope is not a folder"),
    "unknown_dataset": (lambda t: ["--dataset", "coco"], "--dataset must be one of cc3m, webvid"),
    "bad_split": (lambda t: ["--split", "comprehension,captions"], "--split must be a comma-separated subset"),
    "zero_limit": (lambda t: ["--limit", "0"], "--limit must be >= 1, got 0"),
    "annotation_missing": (
        lambda t: ["--annotation", f"{t}/raw/none.json"], "{t}/raw/none.json does not exist; download it",
    ),
    "unreadable_json": (
        lambda t: ["--annotation", str(_text(t / "raw" / "bad.json", "[{"))], "bad.json is not valid JSON",
    ),
    "not_a_list": (lambda t: ["--annotation", str(_text(t / "raw" / "d.json", "{}"))], "must hold a JSON list"),
    "media_folder_missing": (lambda t: ["--media-dir", f"{t}/pics"], "folder {t}/pics does not exist"),
    "foreign_catalog_in_out": (
        lambda t: ["--out", str(_text(t / "o" / "datasets.yaml", "a: 1").parent)], "is not a prepare_data.py output",
    ),
    "all_with_media_dir": (lambda t: ["--dataset", "all", "--media-dir", str(t)], "pass a single --dataset"),
}  # fmt: skip


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(tmp_path: Path, capsys, case: str):
    root = cc3m_download(tmp_path / "raw")
    extra, expected = CASES[case]
    argv = ["--dataset", "cc3m", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress"]
    code = prepare_data.main(argv + extra(tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(t=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o" / "cc3m").exists()


def test_missing_official_file_names_it(tmp_path: Path, capsys):
    write_json(tmp_path / "llava" / "other.json", [])
    (tmp_path / "llava" / "train2017").mkdir()
    code = prepare_data.main(["--dataset", "llava", "--root", str(tmp_path / "llava"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "none of llava_instruct_150k.json is in" in capsys.readouterr().err
