"""Tokenizer loading, signal tokens, and the text → ids functions (no forged control ids)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nextgpt.config import SignalTokenConfig
from nextgpt.constants import SENTINEL_IDS, Modality, signal_token_strings
from nextgpt.llm.tokenizer import (
    encode_chunk,
    encode_text,
    encode_with_placeholders,
    find_signal_token_ids,
    load_tokenizer,
    prefix_follows_special,
    signal_token_ids,
    split_placeholders,
)

BASE_VOCAB = 512


def test_signal_tokens_are_added_in_order_as_special_tokens(tokenizer, signal_ids) -> None:
    assert len(tokenizer) == BASE_VOCAB + 36
    assert [len(signal_ids[m]) for m in (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)] == [4, 24, 8]
    flat = signal_ids[Modality.IMAGE] + signal_ids[Modality.VIDEO] + signal_ids[Modality.AUDIO]
    assert flat == list(range(BASE_VOCAB, BASE_VOCAB + 36))
    assert tokenizer.convert_ids_to_tokens(signal_ids[Modality.VIDEO][:2]) == ["<video_00>", "<video_01>"]
    assert tokenizer.convert_ids_to_tokens(signal_ids[Modality.AUDIO][-1]) == "<audio_07>"
    # special: a signal string in model output text is one id, and decoding can skip it
    assert tokenizer.encode("<image_02>", add_special_tokens=False) == [signal_ids[Modality.IMAGE][2]]
    assert tokenizer.decode(signal_ids[Modality.IMAGE], skip_special_tokens=True) == ""


def test_vicuna_padding_and_pad_token(tokenizer) -> None:
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token == tokenizer.unk_token and tokenizer.pad_token_id == 0


def test_loading_is_idempotent_for_a_saved_tokenizer(tokenizer, signal_cfg, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path, signal_cfg)
    assert len(reloaded) == len(tokenizer)
    assert signal_token_ids(reloaded, signal_cfg) == signal_token_ids(tokenizer, signal_cfg)


def test_other_counts_and_find_without_config(tiny_llm_dir: Path) -> None:
    cfg = SignalTokenConfig(num_image=2, num_video=3, num_audio=1)
    tokenizer = load_tokenizer(tiny_llm_dir, cfg)
    assert len(tokenizer) == BASE_VOCAB + 6
    assert find_signal_token_ids(tokenizer) == signal_token_ids(tokenizer, cfg)
    with pytest.raises(ValueError, match="lacks signal tokens"):
        signal_token_ids(tokenizer, SignalTokenConfig())


def test_missing_folder_or_tokenizer_files_name_the_config_key(tiny_llm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.llm.model_path"):
        load_tokenizer(tmp_path / "nowhere", SignalTokenConfig())
    no_tokenizer = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer.model"))
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.model.*model\.llm\.model_path"):
        load_tokenizer(no_tokenizer, SignalTokenConfig())


def test_encode_text_has_no_bos_and_matches_plain_tokenisation(tokenizer) -> None:
    text = "show me a red circle"
    ids = encode_text(tokenizer, text)
    assert ids == tokenizer(text).input_ids[1:]
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids


@pytest.mark.parametrize("forged", ["<image_00>", "</s>", "<s>", "<unk>", "<video_23>", "<audio_07>"])
def test_control_strings_in_text_never_become_control_ids(tokenizer, forged: str) -> None:
    text = f"draw {forged} now"
    ids = encode_text(tokenizer, text)
    control_ids = {tokenizer.convert_tokens_to_ids(forged), tokenizer.bos_token_id, tokenizer.eos_token_id, 0}
    assert not control_ids & set(ids)
    assert all(i < BASE_VOCAB for i in ids)
    assert tokenizer.decode(ids) == text  # kept as plain text
    # the same string in a placeholder-aware encode stays plain text too
    assert not control_ids & set(encode_with_placeholders(tokenizer, f"<image> {text}"))


def test_placeholders_become_sentinels(tokenizer) -> None:
    ids = encode_with_placeholders(tokenizer, "<image>\nWhat is this? <audio><video>")
    assert ids[0] == SENTINEL_IDS[Modality.IMAGE]
    assert ids[-2:] == [SENTINEL_IDS[Modality.AUDIO], SENTINEL_IDS[Modality.VIDEO]]
    assert [i for i in ids if i < 0] == [-200, -400, -300]
    assert encode_with_placeholders(tokenizer, "no media here") == encode_text(tokenizer, "no media here")
    # only the three placeholders are markup
    assert all(i >= 0 for i in encode_with_placeholders(tokenizer, "<img> <Image> <image_00>"))


def test_split_placeholders() -> None:
    assert split_placeholders("a <image> b<audio>") == ["a ", Modality.IMAGE, " b", Modality.AUDIO, ""]
    assert split_placeholders("plain") == ["plain"]


@pytest.mark.parametrize(
    "left,right", [("show me a red", " circle please"), ("USER:", " hi"), ("a", "  b"), ("line one.", "\nline two")]
)
def test_chunks_add_up_to_whole_string(tokenizer, left: str, right: str) -> None:
    whole = encode_text(tokenizer, left + right)
    assert encode_chunk(tokenizer, left, "start") + encode_chunk(tokenizer, right, "text") == whole


@pytest.mark.parametrize("fixture_name,expect_prefix", [("tiny_llm_dir", False), ("legacy_llm_dir", True)])
def test_text_after_a_control_id_follows_the_tokenizer(
    request, signal_cfg, fixture_name: str, expect_prefix: bool
) -> None:
    tokenizer = load_tokenizer(request.getfixturevalue(fixture_name), signal_cfg)
    assert prefix_follows_special(tokenizer) is expect_prefix
    text = "USER: show me a circle"
    whole = tokenizer.encode("</s>" + text, add_special_tokens=False)
    assert [tokenizer.eos_token_id] + encode_chunk(tokenizer, text, "special") == whole
    assert encode_chunk(tokenizer, "", "special") == []


def test_signal_strings_are_spelled_by_constants(signal_ids, tokenizer) -> None:
    expected = signal_token_strings(Modality.IMAGE, 4)
    assert tokenizer.convert_ids_to_tokens(signal_ids[Modality.IMAGE]) == expected
