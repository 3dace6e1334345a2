"""Output folders: usable before any model loads, one new folder per run, and a summary that a failure cannot lose."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from nextgpt.inference import outputs
from nextgpt.inference.outputs import RunSummary, create_run_dir, prepare_output_dir, write_json_atomic


def test_prepare_output_dir_creates_and_test_writes(tmp_path):
    folder = prepare_output_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output folder .*file is a file; pass a folder path"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match=r"cannot create output folder .*file/sub \(Not a directory\)"):
        prepare_output_dir(tmp_path / "file" / "sub")


def test_unwritable_output_dir_is_refused(tmp_path, monkeypatch):
    # As root, chmod cannot make a folder unwritable; the operating system's answer is simulated at the probe write.
    def refuse(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(ValueError, match=r"cannot write in output folder .* \(Permission denied\); make it writable"):
        prepare_output_dir(tmp_path)


def test_each_run_gets_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.time, "strftime", lambda fmt: "20260101-120000")  # two runs in the same second
    first, second = create_run_dir(tmp_path), create_run_dir(tmp_path)
    assert (first.name, second.name) == ("20260101-120000", "20260101-120000-2")
    named = create_run_dir(tmp_path, "trial")
    assert named == tmp_path / "trial" and named.is_dir()
    assert create_run_dir(tmp_path, "trial") == named  # still empty: reusable
    (named / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="run folder .*trial already exists; choose another run name"):
        create_run_dir(tmp_path, "trial")
    with pytest.raises(ValueError, match="run name '../up' cannot name output files"):
        create_run_dir(tmp_path, "../up")


def test_summary_is_rewritten_after_each_request_and_survives_a_failed_write(tmp_path, monkeypatch):
    summary = RunSummary(tmp_path / "summary.json", {"checkpoint": "ck"}, num_requests=3)
    assert json.loads(summary.path.read_text())["results"] == []  # present from the start
    summary.add({"id": "q1"})
    data = json.loads(summary.path.read_text())
    assert data["results"] == [{"id": "q1"}] and data["complete"] is False and data["checkpoint"] == "ck"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        summary.add({"id": "q2"})
    assert json.loads(summary.path.read_text())["results"] == [{"id": "q1"}]  # the last good version
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind
    monkeypatch.undo()
    summary.add({"id": "q3"})
    summary.add({"id": "q4"})
    data = json.loads(summary.path.read_text())
    assert [r["id"] for r in data["results"]] == ["q1", "q3", "q4"] and data["complete"] is True


def test_write_json_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
