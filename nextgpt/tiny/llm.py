"""Tiny Vicuna-format LLM folder: a locally trained sentencepiece tokenizer plus a random LLaMA.

The folder has the same files as a real Vicuna checkpoint (`tokenizer.model`, `tokenizer_config.json`,
`special_tokens_map.json`, `config.json`, `model.safetensors`, `generation_config.json`), so the
project's loaders read it through exactly the code paths they use for the 7B model.

    llm_dir = write_tiny_llm(Path("checkpoints/tiny/llm"))
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir)
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

logger = logging.getLogger(__name__)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
_SHAPES = ("circle", "square", "triangle", "star", "dot", "line")
_MOTIONS = ("left", "right", "up", "down")
_MEDIA = ("image", "picture", "photo", "video", "clip", "audio", "sound", "tone")
_PITCHES = ("high", "low", "rising", "falling")
_REQUESTS = ("show me", "generate", "draw", "make", "create", "play", "describe", "what is in")

_SPECIAL_TOKEN_ENTRY = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def build_default_corpus() -> list[str]:
    """Return the built-in training corpus: Vicuna template words plus simple caption English.

    Returns:
        Sentences covering the Vicuna v1 system prompt, the role words and short captions about
        coloured shapes, motion and tones, so that template text tokenises into multi-character pieces.
    """
    # The template text is repeated so that it tokenises into whole words, as it does with Vicuna's vocabulary.
    lines = [VICUNA_SYSTEM, "USER: hello ASSISTANT: Hello! How can I help you?"] * 16
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"a {colour} {shape} on a plain background")
        lines.append(f"USER: show me a {colour} {shape} ASSISTANT: Here is an image of a {colour} {shape}.")
    for colour, shape, motion in itertools.product(_COLOURS[:4], _SHAPES[:3], _MOTIONS):
        lines.append(f"a video of a {colour} {shape} moving {motion}")
    for pitch, medium in itertools.product(_PITCHES, _MEDIA):
        lines.append(f"a {medium} with a {pitch} pitch tone")
        lines.append(f"the sound is a {pitch} beep, then silence")
    for request, medium in itertools.product(_REQUESTS, _MEDIA):
        lines.append(f"{request} the {medium}, please.")
        lines.append(f"Sure, this {medium} shows shapes and colors. I can generate another one.")
    return lines


def _train_sentencepiece(corpus: list[str], model_prefix: Path, vocab_size: int) -> None:
    """Train a LLaMA-style BPE sentencepiece model (byte fallback, unk 0, bos 1, eos 2, no pad)."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.txt"
        corpus_path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus_path),
                model_prefix=str(model_prefix),
                vocab_size=vocab_size,
                model_type="bpe",
                byte_fallback=True,
                character_coverage=1.0,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                remove_extra_whitespaces=False,
                normalization_rule_name="identity",
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,
                num_threads=1,
                shuffle_input_sentence=False,
                minloglevel=2,
            )
        except RuntimeError as err:
            raise ValueError(
                f"sentencepiece could not train a {vocab_size}-piece vocabulary ({err}); "
                "pass a larger corpus or a smaller vocab_size (it must exceed 256 + the corpus' characters)"
            ) from err
    # Only the .model file belongs in a Vicuna folder.
    model_prefix.with_suffix(".vocab").unlink(missing_ok=True)


def _write_tokenizer_files(out_dir: Path, max_length: int) -> None:
    """Write tokenizer_config.json and special_tokens_map.json the way Vicuna v1.5 ships them."""
    tokens = {
        name: {"__type": "AddedToken", "content": text, **_SPECIAL_TOKEN_ENTRY}
        for name, text in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    }
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        **tokens,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": max_length,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    special_tokens_map = {name: {"content": value["content"], **_SPECIAL_TOKEN_ENTRY} for name, value in tokens.items()}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2) + "\n")


def write_tiny_llm(
    out_dir: Path,
    corpus: list[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny HF LLaMA folder laid out exactly like a Vicuna checkpoint.

    Args:
        out_dir: folder to create (or overwrite the files of).
        corpus: sentences for the sentencepiece training; None uses `build_default_corpus()`.
        hidden_size: model width (must be divisible by `num_heads`).
        num_layers: decoder layers.
        num_heads: attention heads (also the key/value heads, as in LLaMA-7B).
        vocab_size: sentencepiece pieces = embedding rows; must exceed 256 + the corpus' characters.
        seed: seed of the random weights (the tokenizer training is deterministic).

    Returns:
        `out_dir`.

    Raises:
        ValueError: `hidden_size` not divisible by `num_heads`, or a vocabulary the corpus cannot support.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size must be divisible by num_heads, got {hidden_size} and {num_heads}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_position_embeddings = 1024
    # 1. Tokenizer: sentencepiece BPE with LLaMA's special ids and byte fallback.
    _train_sentencepiece(corpus or build_default_corpus(), out_dir / "tokenizer", vocab_size)
    _write_tokenizer_files(out_dir, max_position_embeddings)
    # 2. Model: random LLaMA with untied embeddings, saved as config.json + model.safetensors.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir, safe_serialization=True)
    logger.info("wrote tiny LLM (%d layers, width %d, %d pieces) to %s", num_layers, hidden_size, vocab_size, out_dir)
    return out_dir
