"""Metric models load from local files in their published formats; a missing one stops with one line naming the path
and its source; sha256 identifies the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from nextgpt.eval.metric_models import (
    check_metric_model,
    describe_metric_model,
    load_audio_classifier,
    load_inception,
)


@pytest.mark.parametrize(
    ("kind", "source"),
    [("inception", "pt_inception-2015-12-05"), ("clip", "huggingface-cli"), ("audio_classifier", "Cnn14_16k")],
)
def test_a_missing_model_names_the_path_and_where_it_comes_from(tmp_path: Path, kind: str, source: str):
    with pytest.raises(FileNotFoundError) as caught:
        check_metric_model(tmp_path / "absent", kind)
    message = str(caught.value)
    assert str(tmp_path / "absent") in message and source in message and "\n" not in message


def test_sha256_is_the_file_digest_and_is_logged(tiny_root: Path, caplog: pytest.LogCaptureFixture):
    path = tiny_root / "metrics" / "cnn14.pth"
    with caplog.at_level("INFO"):
        described = describe_metric_model(path, "audio_classifier")
    assert described["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert described["sha256"] in caplog.text


def test_files_of_another_kind_are_refused(tmp_path: Path):
    bad = tmp_path / "bad.pth"
    torch.save({"weights": {}}, bad)
    with pytest.raises(ValueError, match="key 'model'"):
        load_audio_classifier(bad)
    with pytest.raises(ValueError, match="not a pytorch-fid"):
        load_inception(bad)
