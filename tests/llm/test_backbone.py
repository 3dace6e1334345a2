"""The frozen backbone with trainable new token rows: init, gradients, HF APIs, folding, checkpoints, export."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from numerics import assert_float32_paths_close
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from nextgpt.llm.backbone import (
    CAPTURE_HOOK_NAME,
    NUM_BASE_TOKENS_KEY,
    compile_decoder_layers,
    decoder_layers,
    fold_token_rows,
    get_num_base_tokens,
    load_llm,
    load_token_rows_state_dict,
    save_merged_llm,
    token_rows_state_dict,
)
from nextgpt.llm.token_rows import TokenRowsEmbedding, TokenRowsHead
from nextgpt.llm.tokenizer import load_tokenizer

BASE, NEW, DIM = 512, 36, 64
IDS = torch.tensor([[1, 300, 512, 47, 530, 547, 2], [1, 9, 10, 11, 515, 516, 2]])


def _randomise_new_rows(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            module.new_rows.copy_(torch.randn(module.new_rows.shape, generator=generator) * 0.1)


@pytest.mark.numerics
def test_base_rows_unchanged_new_rows_start_at_mean(llm, tiny_llm_dir: Path) -> None:
    original = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    embedding, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    assert isinstance(embedding, TokenRowsEmbedding) and isinstance(head, TokenRowsHead)
    for module, reference in ((embedding, original.get_input_embeddings().weight), (head, original.lm_head.weight)):
        assert torch.equal(module.base_weight, reference)
        assert module.new_rows.shape == (NEW, DIM)
        assert torch.allclose(module.new_rows, reference.mean(dim=0).expand(NEW, -1), atol=1e-7)
    assert llm.config.vocab_size == BASE + NEW
    assert get_num_base_tokens(llm) == BASE and getattr(llm.config, NUM_BASE_TOKENS_KEY) == BASE
    assert embedding.weight.shape == head.weight.shape == (BASE + NEW, DIM)


def test_only_new_rows_are_trainable_and_get_gradients(llm) -> None:
    trainable = {name: p for name, p in llm.named_parameters() if p.requires_grad}
    assert set(trainable) == {"model.embed_tokens.new_rows", "lm_head.new_rows"}
    assert sum(p.numel() for p in trainable.values()) == 2 * NEW * DIM
    llm.train()
    llm(input_ids=IDS, labels=IDS).loss.backward()
    for name, param in llm.named_parameters():
        if name not in trainable:
            assert param.grad is None, name
    embed_grad = llm.get_input_embeddings().new_rows.grad
    used = {i - BASE for i in IDS.flatten().tolist() if i >= BASE}
    for row in range(NEW):
        assert (embed_grad[row].abs().sum() > 0) == (row in used), row
    assert llm.get_output_embeddings().new_rows.grad.abs().sum(dim=1).gt(0).all()  # softmax reaches every row


@pytest.mark.numerics
def test_logits_equal_a_plainly_resized_model(llm, tiny_llm_dir: Path) -> None:
    _randomise_new_rows(llm)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    reference.resize_token_embeddings(BASE + NEW, mean_resizing=False)
    with torch.no_grad():
        reference.get_input_embeddings().weight[BASE:] = llm.get_input_embeddings().new_rows
        reference.lm_head.weight[BASE:] = llm.get_output_embeddings().new_rows
        expected = reference(IDS).logits
        # One head matmul vs base and new rows apart: float32 rounding only (tests/numerics.py).
        n = llm.config.intermediate_size
        assert_float32_paths_close(llm(IDS).logits, expected, n, "logits")
        embeds = llm.get_input_embeddings()(IDS)
        assert_float32_paths_close(llm(inputs_embeds=embeds).logits, expected, n, "logits from embeddings")


@pytest.mark.numerics
def test_generate_with_and_without_kv_cache(llm) -> None:
    _randomise_new_rows(llm)
    prompt = IDS[:1, :5]
    cached = llm.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = llm.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached) and cached.shape == (1, 11)
    embeds = llm.get_input_embeddings()(prompt)
    from_embeds = llm.generate(
        inputs_embeds=embeds, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert torch.equal(from_embeds, cached[:, 5:])  # only the new tokens come back


@pytest.mark.numerics
def test_gradient_checkpointing_gives_the_same_gradients(llm_cfg, tokenizer) -> None:
    grads = []
    for checkpointing in (False, True):
        model = load_llm(replace(llm_cfg, gradient_checkpointing=checkpointing), tokenizer)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) is checkpointing
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append(model.get_input_embeddings().new_rows.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _capture_hooks(module: nn.Module) -> list:
    return [h for h in module._forward_hooks.values() if getattr(h, "__name__", "") == CAPTURE_HOOK_NAME]


def test_compiled_layers_keep_only_the_hidden_state_hooks(llm_cfg, tokenizer) -> None:
    """Compiled layers lose the attention-capture hooks inside them (a graph break on some PyTorch versions) and
    keep the layer hooks, so `output_hidden_states` still returns every layer's output, as the eager model does."""
    eager, compiled = load_llm(llm_cfg, tokenizer), load_llm(llm_cfg, tokenizer)
    layers = decoder_layers(compiled)
    compile_decoder_layers(compiled)  # as the training build does: before any forward
    with torch.no_grad():
        want = eager(IDS, output_hidden_states=True)  # transformers installs its capture hooks in this forward
        got = compiled(IDS, output_hidden_states=True)
    assert all(_capture_hooks(layer.self_attn) for layer in decoder_layers(eager))
    assert not any(_capture_hooks(m) for layer in layers for m in layer.modules() if m is not layer)
    assert all(_capture_hooks(layer) for layer in layers)
    assert len(got.hidden_states) == len(want.hidden_states) == len(layers) + 1
    for a, b in zip(want.hidden_states, got.hidden_states, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # float32, inductor may reorder sums


def test_bfloat16_loading(llm_cfg, tokenizer) -> None:
    model = load_llm(replace(llm_cfg, dtype="bfloat16"), tokenizer)
    assert model.get_input_embeddings().new_rows.dtype == torch.bfloat16
    assert model(IDS).logits.dtype == torch.bfloat16


def test_sentinel_ids_cannot_reach_the_embedding(llm) -> None:
    with pytest.raises(IndexError):
        llm.get_input_embeddings()(torch.tensor([[1, -200, 5]]))
    with pytest.raises(IndexError):
        llm.get_input_embeddings()(torch.tensor([[BASE + NEW]]))


@pytest.mark.numerics
def test_fold_restores_plain_modules_with_the_same_logits(llm) -> None:
    _randomise_new_rows(llm)
    with torch.no_grad():
        before = llm(IDS).logits
    fold_token_rows(llm)
    assert type(llm.get_input_embeddings()) is nn.Embedding and type(llm.get_output_embeddings()) is nn.Linear
    assert llm.get_input_embeddings().weight.shape == (BASE + NEW, DIM)
    assert not any(p.requires_grad for p in llm.parameters())
    with torch.no_grad():
        assert_float32_paths_close(llm(IDS).logits, before, llm.config.intermediate_size, "folded logits")
    with pytest.raises(ValueError, match="no trainable token rows"):
        token_rows_state_dict(llm)


def test_token_rows_state_dict_round_trip(llm, llm_cfg, tokenizer, tmp_path: Path) -> None:
    _randomise_new_rows(llm, seed=1)
    state = token_rows_state_dict(llm)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "embed_tokens.new_rows": (NEW, DIM),
        "lm_head.new_rows": (NEW, DIM),
        "num_base_tokens": (1,),
    }
    save_file(state, tmp_path / "rows.safetensors")
    fresh = load_llm(llm_cfg, tokenizer)
    load_token_rows_state_dict(fresh, load_file(tmp_path / "rows.safetensors"))
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, llm(IDS).logits)
    bad_shape = dict(state, **{"lm_head.new_rows": state["lm_head.new_rows"][:4]})
    with pytest.raises(ValueError, match="signal_tokens"):
        load_token_rows_state_dict(fresh, bad_shape)
    with pytest.raises(ValueError, match="base vocabulary of 100 rows"):
        load_token_rows_state_dict(fresh, dict(state, num_base_tokens=torch.tensor([100])))
    with pytest.raises(ValueError, match="keys"):
        load_token_rows_state_dict(fresh, {"embed_tokens.new_rows": state["embed_tokens.new_rows"]})


@pytest.mark.numerics
def test_exported_folder_reloads_without_adding_rows(llm, tokenizer, signal_cfg, llm_cfg, tmp_path: Path) -> None:
    _randomise_new_rows(llm, seed=2)
    with torch.no_grad():
        expected = llm(IDS).logits
    rows = token_rows_state_dict(llm)
    out_dir = save_merged_llm(llm, tokenizer, tmp_path / "export")
    assert json.loads((out_dir / "config.json").read_text())[NUM_BASE_TOKENS_KEY] == BASE
    reloaded_tokenizer = load_tokenizer(out_dir, signal_cfg)
    assert len(reloaded_tokenizer) == BASE + NEW
    reloaded = load_llm(replace(llm_cfg, model_path=out_dir), reloaded_tokenizer)
    assert get_num_base_tokens(reloaded) == BASE
    assert torch.equal(token_rows_state_dict(reloaded)["lm_head.new_rows"], rows["lm_head.new_rows"])
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {
        "model.embed_tokens.new_rows",
        "lm_head.new_rows",
    }
    with torch.no_grad():
        assert_float32_paths_close(reloaded(IDS).logits, expected, reloaded.config.intermediate_size, "reloaded logits")


def test_missing_paths_raise_with_the_config_key(llm_cfg, tokenizer, tmp_path: Path, tiny_llm_dir: Path) -> None:
    with pytest.raises(ValueError, match="model.llm.model_path is not set"):
        load_llm(replace(llm_cfg, model_path=None), tokenizer)
    with pytest.raises(FileNotFoundError, match="model.llm.model_path"):
        load_llm(replace(llm_cfg, model_path=tmp_path / "nowhere"), tokenizer)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_llm_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"no weights in .*model\.llm\.model_path"):
        load_llm(replace(llm_cfg, model_path=no_weights), tokenizer)


def test_tokenizer_that_does_not_fit_the_checkpoint_raises(llm_cfg, tiny_llm_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_llm_dir)  # no signal tokens: nothing to train
    with pytest.raises(ValueError, match="lacks nextgpt_num_base_tokens"):
        load_llm(llm_cfg, plain)
    plain.add_tokens(["<image_00>"], special_tokens=True)
    model = load_llm(llm_cfg, plain)
    save_merged_llm(model, plain, tmp_path / "export")
    with pytest.raises(ValueError, match="has 513 embedding rows but the tokenizer has only 512"):
        load_llm(replace(llm_cfg, model_path=tmp_path / "export"), AutoTokenizer.from_pretrained(tiny_llm_dir))
