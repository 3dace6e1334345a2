"""Vicuna v0 from a delta: every tensor is base + delta, the base's vocabulary rows are padded with zeros, the output is
an HF folder (safetensors shards + index + the delta's config and tokenizer) that transformers loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextgpt.llm.vicuna_delta import apply_vicuna_delta

REPO_ROOT = Path(__file__).resolve().parents[2]
INV_FREQ = "model.layers.0.self_attn.rotary_emb.inv_freq"


def _base_tensors(base_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(base_dir / "model.safetensors")


def write_delta(base_dir: Path, delta_dir: Path, extra_rows: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    """A delta folder in the v0 layout: two `.bin` shards with an index, the config and a tokenizer with `[PAD]`."""
    from transformers import AutoTokenizer, LlamaConfig

    delta_dir.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.save_pretrained(delta_dir)
    config = LlamaConfig.from_pretrained(base_dir)
    vocab = config.vocab_size + extra_rows
    config.vocab_size, config.pad_token_id = vocab, vocab - 1
    config.save_pretrained(delta_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, base in _base_tensors(base_dir).items():
        shape = (vocab, *base.shape[1:]) if name in ("model.embed_tokens.weight", "lm_head.weight") else base.shape
        tensors[name] = (0.01 * torch.randn(shape, generator=generator)).half()
    names = list(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2]}
    shards["pytorch_model-00002-of-00002.bin"] = names[len(names) // 2 :]
    for file, members in shards.items():
        state = {n: tensors[n] for n in members}
        if file.startswith("pytorch_model-00001"):
            state[INV_FREQ] = torch.ones(4)  # an old checkpoint's saved buffer
        torch.save(state, delta_dir / file)
    weight_map = {n: f for f, members in shards.items() for n in members} | {
        INV_FREQ: "pytorch_model-00001-of-00002.bin"
    }
    (delta_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def _expected(base_dir: Path, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = {}
    for name, base in _base_tensors(base_dir).items():
        base = base.float()
        if base.shape[0] < delta[name].shape[0]:
            base = torch.cat([base, base.new_zeros(delta[name].shape[0] - base.shape[0], *base.shape[1:])])
        expected[name] = (base + delta[name].float()).half()
    return expected


def _output_tensors(out: Path) -> dict[str, torch.Tensor]:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(out / file))
    assert set(tensors) == set(index["weight_map"])
    return tensors


def test_target_is_base_plus_delta_with_padded_vocabulary(tiny_llm_dir: Path, tmp_path: Path):
    delta = write_delta(tiny_llm_dir, tmp_path / "delta")
    out = tmp_path / "vicuna"
    result = apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", out, max_shard_bytes=64 * 1024)
    assert result.vocab_size == 513 and result.padded_rows == 1 and result.num_tensors == len(delta)
    assert (
        len(result.shard_files) > 2
        and result.shard_files[0] == f"model-00001-of-{len(result.shard_files):05d}.safetensors"
    )
    written = _output_tensors(out)
    expected = _expected(tiny_llm_dir, delta)
    assert set(written) == set(expected) and INV_FREQ not in written
    for name, tensor in expected.items():
        assert written[name].dtype == torch.float16 and torch.equal(written[name], tensor), name
    # the new row of the vocabulary is the delta's own row (the base contributes zeros)
    assert torch.equal(written["lm_head.weight"][512], delta["lm_head.weight"][512])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delta", "vicuna"]  # no staging folder left


def test_output_loads_with_transformers_and_the_deltas_tokenizer(tiny_llm_dir: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    delta = write_delta(tiny_llm_dir, tmp_path / "delta")
    out = tmp_path / "vicuna"
    apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", out, max_shard_bytes=64 * 1024)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 513 and tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 512
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16)
    expected = _expected(tiny_llm_dir, delta)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in expected.items())
    logits = model.float()(torch.tensor([tokenizer("a red circle").input_ids])).logits
    assert logits.shape[-1] == 513 and torch.isfinite(logits).all()


def test_rerun_replaces_the_output_with_the_same_bytes(tiny_llm_dir: Path, tmp_path: Path):
    write_delta(tiny_llm_dir, tmp_path / "delta")
    out = tmp_path / "vicuna"
    apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "model.safetensors" in first and "model.safetensors.index.json" not in first  # one shard: no index
    side_files = {p.name for p in (tmp_path / "delta").iterdir() if p.suffix != ".bin" and "index" not in p.name}
    assert {"config.json", "tokenizer_config.json"} <= side_files and set(first) == side_files | {"model.safetensors"}
    result = apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", out)
    assert result.shard_files == ["model.safetensors"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_a_wrong_base_is_refused_before_anything_is_written(tiny_llm_dir: Path, tmp_path: Path):
    write_delta(tiny_llm_dir, tmp_path / "delta", extra_rows=-1)  # a delta with fewer rows than the base
    with pytest.raises(ValueError, match=r"base shape \(512, 64\) does not match delta shape \(511, 64\)"):
        apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()
    tensors = torch.load(tmp_path / "delta" / "pytorch_model-00002-of-00002.bin", weights_only=True)
    tensors["model.extra.weight"] = torch.zeros(2)
    torch.save(tensors, tmp_path / "delta" / "pytorch_model-00002-of-00002.bin")
    index = json.loads((tmp_path / "delta" / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.extra.weight"] = "pytorch_model-00002-of-00002.bin"
    (tmp_path / "delta" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"only in the delta: \['model.extra.weight'\]"):
        apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        apply_vicuna_delta(tmp_path / "nowhere", tmp_path / "delta", tmp_path / "out")
    with pytest.raises(ValueError, match="would replace the delta folder"):
        apply_vicuna_delta(tiny_llm_dir, tmp_path / "delta", tmp_path)


def _script():
    spec = importlib.util.spec_from_file_location("apply_vicuna_delta", REPO_ROOT / "scripts" / "apply_vicuna_delta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_the_model_and_reports_bad_input_in_one_line(tiny_llm_dir: Path, tmp_path: Path, capsys):
    script = _script()
    write_delta(tiny_llm_dir, tmp_path / "delta")
    args = ["--base", str(tiny_llm_dir), "--delta", str(tmp_path / "delta"), "--output", str(tmp_path / "out")]
    assert script.main([*args, "--dtype", "bfloat16"]) == 0
    assert load_file(tmp_path / "out" / "model.safetensors")["lm_head.weight"].dtype == torch.bfloat16
    assert script.main([*args[:2], "--delta", str(tmp_path / "missing"), *args[4:]]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: delta folder {tmp_path / 'missing'} has no config.json; pass the folder of the HF checkpoint"
    ]
