"""Input files are opened the way the loaders will open them, and every problem of a batch is named in one line."""

from __future__ import annotations

import builtins
import errno
import re
from pathlib import Path

import pytest

from nextgpt.constants import Modality
from nextgpt.inference.input_checks import check_name_part, check_request_media, probe_media_file
from nextgpt.inference.requests import ChatRequest, Message


@pytest.mark.parametrize(
    ("name", "modality", "message"),
    [
        ("missing.png", Modality.IMAGE, "not found; check the path"),
        ("empty.png", Modality.IMAGE, "is empty (0 bytes)"),
        ("folder.png", Modality.IMAGE, "is a folder; pass a image file"),
        ("garbage.png", Modality.IMAGE, "does not decode as image"),
        ("truncated.png", Modality.IMAGE, "does not decode as image"),
        ("wav_named.png", Modality.IMAGE, "does not decode as image"),
        ("notes.txt", Modality.IMAGE, "not a supported image format"),
        ("text_named.mp4", Modality.VIDEO, "does not decode as video"),
        ("truncated.mp4", Modality.VIDEO, "does not decode as video"),
        ("png_named.mp4", Modality.VIDEO, "does not decode as video"),
        ("garbage.wav", Modality.AUDIO, "does not decode as audio"),
        ("silent0.wav", Modality.AUDIO, "holds 0 ms of sound; ImageBind needs at least 25 ms, send a longer"),
        ("text_named.mp3", Modality.AUDIO, "does not decode as audio"),
        ("good.png", Modality.AUDIO, "not a supported audio format"),
    ],
)
def test_bad_file_is_named_with_the_fix(bad_files, name, modality, message):
    path = bad_files.get(name, bad_files["good_png"].parent / name)
    with pytest.raises((FileNotFoundError, ValueError), match=re.escape(message)) as caught:
        probe_media_file(path, modality)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_good_files_pass(bad_files):
    for key, modality in (("good_png", Modality.IMAGE), ("good_mp4", Modality.VIDEO), ("good_wav", Modality.AUDIO)):
        assert probe_media_file(bad_files[key], modality) == bad_files[key]


def test_unreadable_file_names_the_permission_fix(bad_files, monkeypatch):
    # The suite runs as root, where chmod 000 still reads; the operating system's answer is simulated instead.
    secret = bad_files["good_png"]
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        if Path(file) == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    with pytest.raises(ValueError, match=r"cannot read image file .*good.png \(permission denied\); make it readable"):
        probe_media_file(secret, Modality.IMAGE)


def test_oversized_upload_is_refused(bad_files):
    with pytest.raises(ValueError, match="over the 0.0 MB upload limit"):
        probe_media_file(bad_files["good_png"], Modality.IMAGE, max_bytes=10)


def test_every_bad_file_of_a_batch_in_one_line(bad_files):
    requests = [
        ChatRequest("q1", [Message("user", "a", {Modality.IMAGE: [bad_files["garbage.png"], bad_files["good_png"]]})]),
        ChatRequest("q2", [Message("user", "b", {Modality.AUDIO: [bad_files["silent0.wav"]]})]),
        ChatRequest("q3", [Message("user", "c", {Modality.IMAGE: [bad_files["garbage.png"]]})]),  # same file: once
    ]
    with pytest.raises(ValueError) as caught:
        check_request_media(requests)
    message = str(caught.value)
    assert message.startswith("2 bad input files: request q1: image file") and "request q2: audio file" in message
    assert message.count("garbage.png") == 1 and "\n" not in message
    check_request_media(requests[:0])  # nothing to check


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a/b", "cannot name output files"),
        ("..", "cannot name output files"),
        (".hidden", "cannot name output files"),
        ("-flag", "cannot name output files"),
        ("with space", "cannot name output files"),
        ("tab\there", "cannot name output files"),
        ("", "cannot name output files"),
        ("x" * 200, "200 characters long"),
        (["q1"], "must be a string"),
        (True, "must be a string"),
    ],
)
def test_unsafe_names_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        check_name_part(value, "'id'")


def test_safe_names_pass():
    assert check_name_part("q1_cat-2.v1", "'id'") == "q1_cat-2.v1"
    assert check_name_part(7, "'id'") == "7"
    assert check_name_part("chat_über", "'id'") == "chat_über"
