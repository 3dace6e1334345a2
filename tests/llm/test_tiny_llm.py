"""The tiny LLM folder has Vicuna's files and loads through the plain transformers Auto classes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nextgpt.tiny.llm import VICUNA_SYSTEM, write_tiny_llm

VICUNA_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.model",
    "tokenizer_config.json",
}


def test_folder_has_exactly_the_vicuna_files(tiny_llm_dir: Path) -> None:
    assert {p.name for p in tiny_llm_dir.iterdir()} == VICUNA_FILES
    tokenizer_config = json.loads((tiny_llm_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer"
    assert tokenizer_config["add_bos_token"] is True and tokenizer_config["add_eos_token"] is False
    config = json.loads((tiny_llm_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] >= 1024
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_tokenizer_loads_like_vicuna(tiny_llm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_dir)
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert len(tokenizer) == 512
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token is None  # Vicuna v1 ships no pad token
    ids = tokenizer("USER: show me a red circle").input_ids
    assert ids[0] == 1 and 2 not in ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert "▁show" in pieces and "▁circle" in pieces  # the corpus words became whole pieces
    # byte fallback: characters never seen in the corpus still round-trip
    assert tokenizer.decode(tokenizer("ü 東京").input_ids, skip_special_tokens=True) == "ü 東京"


def test_model_loads_with_untied_random_weights(tiny_llm_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.get_input_embeddings().weight.shape == (512, 64)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert len(model.model.layers) == 2
    state = load_file(tiny_llm_dir / "model.safetensors")
    assert "lm_head.weight" in state and "model.embed_tokens.weight" in state
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, 512) and torch.isfinite(logits).all()


def _pieces(llm_dir: Path) -> list[str]:
    processor = spm.SentencePieceProcessor(model_file=str(llm_dir / "tokenizer.model"))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path) -> None:
    start = time.perf_counter()
    first = write_tiny_llm(tmp_path / "a", seed=3)
    assert time.perf_counter() - start < 5.0
    second = write_tiny_llm(tmp_path / "b", seed=3)
    third = write_tiny_llm(tmp_path / "c", seed=4)
    assert _pieces(first) == _pieces(second)
    a, b, c = (load_file(d / "model.safetensors") for d in (first, second, third))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_custom_sizes_and_corpus(tmp_path: Path) -> None:
    corpus = [VICUNA_SYSTEM] * 4 + [f"sample sentence number {i} about a green square" for i in range(50)]
    out_dir = write_tiny_llm(tmp_path / "llm", corpus=corpus, hidden_size=32, num_layers=1, num_heads=2, vocab_size=320)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert len(AutoTokenizer.from_pretrained(out_dir)) == 320


def test_bad_sizes_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        write_tiny_llm(tmp_path / "a", hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_llm(tmp_path / "b", vocab_size=100)
