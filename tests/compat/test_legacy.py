"""The legacy release (`7b_tiva_v0/pytorch_model.pt`) at tiny size, in exactly its key layout: conversion consumes
every key, and the converted checkpoint computes what the legacy model computes on the same weights.

The reference is written from the legacy code's semantics, not from ours: a plain HF LLaMA with the LoRA deltas
added to q/k/v/o (scale alpha/r), the whole 32038-style vocabulary matrices, `llama_proj` as one Linear, a
`TextFcLayer` (fc -> nn.Transformer(src, query_embs) -> model), and the legacy demo's prompt built by hand:
BOS "### Human:" <Img> [item] </Img> BOS " {text}\\n### Assistant:".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

from nextgpt.checkpoints import load_model_from_folder
from nextgpt.cli import convert_checkpoint, predict
from nextgpt.compat.legacy import convert_legacy_state, read_legacy_weights
from nextgpt.config import load_config
from nextgpt.constants import MODALITIES, Modality
from nextgpt.inference.generation import generate_reply
from nextgpt.inference.media_io import save_image
from nextgpt.llm.conversation import Turn, build_prompt
from nextgpt.llm.tokenizer import load_tokenizer
from nextgpt.model import NextGPTBatch
from nextgpt.tiny.build import tiny_path_overrides

ADDED = ["<Img>", "</Img>", *[f"[IMG{i}]" for i in range(4)], *[f"[VID{i}]" for i in range(24)]]
ADDED += [f"[AUD{i}]" for i in range(8)]
OUT_DIMS = {Modality.IMAGE: (77, 32), Modality.VIDEO: (77, 24), Modality.AUDIO: (1, 16)}
PREFIX = {Modality.IMAGE: "gen_text_hidden_fcs", Modality.VIDEO: "gen_text_hidden_fcs_video"}
PREFIX[Modality.AUDIO] = "gen_text_hidden_fcs_audio"
RANK, ALPHA, HIDDEN = 4, 32, 64
PROMPT = "Draw a cat"


class TextFcLayer(nn.Module):
    """The legacy output projector (`TextFcLayer(mode='transformer')`), with its parameter names."""

    def __init__(self, llm_dim: int, out_dim: int, num_queries: int) -> None:
        super().__init__()
        self.fc = nn.Linear(llm_dim, HIDDEN)
        self.tfm = nn.Transformer(
            batch_first=True, norm_first=True, d_model=HIDDEN, num_encoder_layers=1, num_decoder_layers=1,
            dim_feedforward=HIDDEN * 2, dropout=0.0, nhead=4,
        )  # fmt: skip
        self.model = nn.Linear(HIDDEN, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, num_queries, HIDDEN))

    def forward(self, x: torch.Tensor, input_embs: torch.Tensor) -> torch.Tensor:
        x = self.fc(x + input_embs)
        return self.model(self.tfm(x, self.query_embs.repeat(x.shape[0], 1, 1)))


class Legacy:
    """A fake legacy release built on the tiny LLM, plus the reference computation on its weights."""

    def __init__(self, llm_dir: Path, tokenizer, encoder_dim: int) -> None:
        torch.manual_seed(0)
        self.tokenizer, self.llm_dir = tokenizer, llm_dir
        base = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
        self.num_base = base.get_input_embeddings().weight.shape[0]
        self.num_layers, dim = base.config.num_hidden_layers, base.config.hidden_size
        state: dict[str, torch.Tensor] = {
            "llama_proj.weight": torch.randn(dim, encoder_dim) * 0.2,
            "llama_proj.bias": torch.randn(dim) * 0.1,
        }
        self.projectors = {}
        for modality, (queries, out_dim) in OUT_DIMS.items():
            layer = TextFcLayer(dim, out_dim, queries)
            self.projectors[modality] = layer.eval()
            state.update({f"{PREFIX[modality]}.0.{k}": v for k, v in layer.state_dict().items()})
        embed = torch.cat([base.get_input_embeddings().weight.detach(), torch.randn(len(ADDED), dim) * 0.02])
        head = torch.cat([base.get_output_embeddings().weight.detach(), torch.randn(len(ADDED), dim) * 0.02])
        embed[: self.num_base] += 0.01 * torch.randn(self.num_base, dim)  # legacy trained the base rows too
        head[: self.num_base] += 0.01 * torch.randn(self.num_base, dim)
        for i in range(self.num_layers):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                key = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}"
                state[f"{key}.lora_A.default.weight"] = torch.randn(RANK, dim) * 0.1
                state[f"{key}.lora_B.default.weight"] = torch.randn(dim, RANK) * 0.1
        self.base, self.embed, self.head, self.state = base, embed, head, state

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.num_base + ADDED.index(t) for t in tokens]

    def reference_llm(self) -> nn.Module:
        """HF LLaMA + the legacy matrices + LoRA added to the weights (peft: W + B A * alpha / r)."""
        ref = AutoModelForCausalLM.from_pretrained(self.llm_dir, dtype=torch.float32)
        ref.resize_token_embeddings(self.num_base + len(ADDED))
        with torch.no_grad():
            ref.get_input_embeddings().weight.copy_(self.embed.half().float())
            ref.get_output_embeddings().weight.copy_(self.head.half().float())
            for i, layer in enumerate(ref.model.layers):
                for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    key = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}"
                    a = self.state[f"{key}.lora_A.default.weight"].half().float()
                    b = self.state[f"{key}.lora_B.default.weight"].half().float()
                    getattr(layer.self_attn, proj).weight += b @ a * (ALPHA / RANK)
        return ref.eval()

    def rig_signal_reply(self, prompt_ids: list[int]) -> None:
        """Set signal rows so that greedy decoding after `prompt_ids` answers exactly [IMG0] … [IMG3] EOS.

        Each signal token gets a large input row (the residual stream then points along it) and the next token's
        LM-head row is aligned with the hidden state that follows, as the legacy matrices are free to be.
        """
        targets = [*self.ids(["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]), self.tokenizer.eos_token_id]
        for token in targets[:-1]:
            self.embed[token] = 40 * torch.nn.functional.normalize(torch.randn(self.embed.shape[1]), dim=0)
        ids = list(prompt_ids)
        for target in targets:
            ref = self.reference_llm()
            with torch.no_grad():
                hidden = ref.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # (D,)
            self.head[target] = 60 * hidden / hidden.norm()  # its logit there: 60 |h|
            ids.append(target)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        state = dict(self.state)
        state["llama_model.base_model.model.model.embed_tokens.weight"] = self.embed
        state["llama_model.base_model.model.lm_head.weight"] = self.head
        torch.save({k: v.half() for k, v in state.items()}, folder / "pytorch_model.pt")
        self.tokenizer.save_pretrained(folder)  # the legacy agent saved its tokenizer and LLaMA config beside it
        self.base.config.save_pretrained(folder)
        return folder


@pytest.fixture(scope="module")
def legacy(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config("nextgpt_7b_tiva_v0", overrides=_overrides(tiny_root))
    tokenizer = load_tokenizer(cfg.model.llm.model_path, cfg.model.signal_tokens, "vicuna_v0")
    fake = Legacy(cfg.model.llm.model_path, tokenizer, cfg.model.encoder.out_embed_dim)
    prompt = build_prompt(tokenizer, [Turn("user", PROMPT)], template="vicuna_v0").input_ids
    fake.rig_signal_reply(prompt)
    source = fake.write(tmp_path_factory.mktemp("7b_tiva_v0"))
    out = tmp_path_factory.mktemp("converted") / "nextgpt-legacy"
    argv = ["legacy", "--checkpoint-dir", str(source), "--output-dir", str(out), *_overrides(tiny_root)]
    assert convert_checkpoint.main(argv) == 0
    model, _ = load_model_from_folder(out)
    return fake, model.eval(), out, source


def _overrides(tiny_root: Path) -> list[str]:
    """Tiny component paths and sizes on top of the shipped legacy config (the architecture comes from the weights)."""
    tiny = load_config("tiny")
    enc = tiny.model.encoder
    sizes = [f"model.encoder.{k}={getattr(enc, k)}" for k in ("out_embed_dim", "vision_embed_dim", "vision_num_blocks")]
    sizes += [f"model.encoder.{k}={getattr(enc, k)}" for k in ("vision_num_heads", "audio_embed_dim")]
    sizes += [f"model.encoder.{k}={getattr(enc, k)}" for k in ("audio_num_blocks", "audio_num_heads")]
    sizes += ["model.llm.dtype=float32", "model.encoder.dtype=float32", "model.llm.max_length=256"]
    for m in MODALITIES:
        sizes += [f"model.decoders.{m.value}.num_inference_steps=2", f"model.decoders.{m.value}.dtype=float32"]
    sizes += ["model.decoders.image.height=32", "model.decoders.image.width=32", "model.decoders.video.height=32"]
    sizes += [
        "model.decoders.video.width=32",
        "model.decoders.video.num_frames=4",
        "model.decoders.audio.audio_seconds=1.0",
    ]
    return [*tiny_path_overrides(tiny_root), *sizes, "generation.max_new_tokens=12"]


def test_every_key_is_consumed_and_a_foreign_key_is_named(legacy, tiny_root: Path) -> None:
    fake, model, out, source = legacy
    state = read_legacy_weights(source)
    assert len(state) == 2 + 3 * len(fake.projectors[Modality.IMAGE].state_dict()) + 2 + fake.num_layers * 8
    cfg = load_config("nextgpt_7b_tiva_v0", overrides=_overrides(tiny_root))
    with pytest.raises(ValueError, match=r"1 tensors no part consumes, e.g. \['llama_model.extra'\]"):
        convert_legacy_state({**state, "llama_model.extra": torch.zeros(1)}, cfg)
    del state["gen_text_hidden_fcs_audio.0.query_embs"]
    with pytest.raises(ValueError, match=r"gen_text_hidden_fcs_audio.0.query_embs is missing"):
        convert_legacy_state(state, cfg)
    saved = json.loads((out / "meta.json").read_text())
    assert saved["num_base_tokens"] == fake.num_base and saved["format"].startswith("nextgpt-legacy")
    # The converted model holds the file's numbers: changed base rows, added rows, LoRA, projectors.
    embed = model.llm.get_input_embeddings()
    assert torch.equal(embed.weight, fake.embed.half().float())
    assert torch.equal(model.llm.get_output_embeddings().weight, fake.head.half().float())
    assert torch.equal(model.input_projector.weight, fake.state["llama_proj.weight"].half().float())
    cfg_model = load_config(out / "config.yaml").model
    assert (cfg_model.llm.template, cfg_model.signal_tokens.style, cfg_model.lora.r) == ("vicuna_v0", "legacy", RANK)


def test_legacy_vocabulary_ids(legacy) -> None:
    fake, model, _, _ = legacy
    assert model.tokenizer.convert_tokens_to_ids(ADDED) == list(range(fake.num_base, fake.num_base + 38))
    assert model.signal_ids[Modality.IMAGE] == fake.ids(["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"])
    assert model.signal_ids[Modality.AUDIO] == fake.ids([f"[AUD{i}]" for i in range(8)])


def test_projectors_logits_and_spans_equal_the_legacy_computation(legacy) -> None:
    fake, model, _, _ = legacy
    tok = fake.tokenizer
    ref = fake.reference_llm()
    # 1. Output projectors: the legacy TextFcLayer on its own weights.
    x, e = torch.randn(3, 4, model.llm.config.hidden_size), torch.randn(3, 4, model.llm.config.hidden_size)
    for modality, layer in fake.projectors.items():
        with torch.no_grad():
            layer.load_state_dict({k: v.half().float() for k, v in layer.state_dict().items()})
            ours, theirs = model.output_projectors[modality.value](x, e), layer(x, e)
        assert torch.allclose(ours, theirs, atol=1e-5), modality
    # 2. Image -> text prompt: BOS "### Human:" <Img> [llama_proj(item)] </Img> BOS " {text}\n### Assistant:".
    features = torch.randn(1, model.cfg.encoder.out_embed_dim)
    turns = [Turn("user", "<image>\nWhat is in the image?")]
    prompt = build_prompt(tok, turns, model.signal_ids, model.template)
    text_ids = tok(" What is in the image?\n### Assistant:", add_special_tokens=False).input_ids
    head_ids = tok("### Human:", add_special_tokens=False).input_ids
    img, img_end = fake.ids(["<Img>", "</Img>"])
    assert prompt.input_ids == [1, *head_ids, img, -200, img_end, 1, *text_ids]
    w, b = fake.state["llama_proj.weight"].half().float(), fake.state["llama_proj.bias"].half().float()
    item = features @ w.T + b  # (1, D)
    embed = ref.get_input_embeddings()
    ref_embeds = torch.cat(
        [embed(torch.tensor([1, *head_ids, img])), item, embed(torch.tensor([img_end, 1, *text_ids]))]
    )[None]
    batch = NextGPTBatch(
        input_ids=torch.tensor([prompt.input_ids]),
        attention_mask=torch.ones(1, len(prompt.input_ids), dtype=torch.long),
        media_features={Modality.IMAGE: features},
    )
    with torch.no_grad():
        ours = model(batch)
        theirs = ref(inputs_embeds=ref_embeds, output_hidden_states=True)
    # float32, merged vs unmerged LoRA: rounding only, relative to the logits' size (rigged rows reach ~200).
    scale = theirs.logits.abs().max()
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5 * scale
    # 3. Several images of one turn are summed into the one token between <Img> and </Img>.
    two = build_prompt(tok, [Turn("user", "<image><image> Compare.")], model.signal_ids, model.template)
    assert two.input_ids.count(-200) == 1 and two.media_groups == [(Modality.IMAGE, 2)]
    pair = torch.randn(2, model.cfg.encoder.out_embed_dim)
    two_ids = torch.tensor([two.input_ids])
    grouped = NextGPTBatch(
        two_ids,
        torch.ones_like(two_ids),
        media_features={Modality.IMAGE: pair},
        media_group_sizes={Modality.IMAGE: [2]},
    )
    with torch.no_grad():
        summed = model.encode_media(grouped)[Modality.IMAGE]  # (1, 1, D)
    assert torch.allclose(summed[0, 0], (pair @ w.T + b).sum(dim=0), atol=1e-5)


def test_generated_signal_span_equals_the_legacy_computation(legacy) -> None:
    fake, model, _, _ = legacy
    ref = fake.reference_llm()
    prompt = build_prompt(fake.tokenizer, [Turn("user", PROMPT)], model.signal_ids, model.template).input_ids
    # The legacy prompt of a text-only first turn: "### Human:  {text}\n### Assistant:" in one piece.
    assert prompt == [1, *fake.tokenizer(f"### Human:  {PROMPT}\n### Assistant:", add_special_tokens=False).input_ids]
    ids = list(prompt)
    for _ in range(8):  # legacy greedy decoding on the reference
        with torch.no_grad():
            ids.append(int(ref(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] == fake.tokenizer.eos_token_id:
            break
    expected_reply = [*fake.ids(["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]), fake.tokenizer.eos_token_id]
    assert ids[len(prompt) :] == expected_reply
    result = generate_reply(model, [Turn("user", PROMPT)], {}, _greedy(), decoders=None)
    assert result.token_ids == expected_reply
    assert "1 image span(s) not rendered" in result.problems[0]
    # The span's conditioning: hidden states at the signal positions (+ their input rows) through TextFcLayer.
    with torch.no_grad():
        hidden = ref(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        span = slice(len(prompt), len(prompt) + 4)
        span_ids = torch.tensor([ids[span]])
        layer = fake.projectors[Modality.IMAGE]
        layer.load_state_dict({k: v.half().float() for k, v in layer.state_dict().items()})
        theirs = layer(hidden[:, span], ref.get_input_embeddings()(span_ids))
        ours = model(NextGPTBatch(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))
    assert (ours.signal_embeds[Modality.IMAGE] - theirs).abs().max() <= 1e-5 * theirs.abs().max().clamp(min=1)


def _greedy():
    from nextgpt.config import GenerationConfig

    return GenerationConfig(max_new_tokens=12, temperature=0.0)


def test_predict_text_to_image_and_image_to_text_on_the_converted_folder(legacy, tmp_path: Path) -> None:
    _, _, out, _ = legacy
    image = save_image(np.full((24, 24, 3), 120, np.uint8), tmp_path / "in.png")
    base = ["--checkpoint-dir", str(out), "--output-dir", str(tmp_path / "outputs"), "--temperature", "0"]
    assert predict.main([*base, "--run-name", "t2i", "--prompt", PROMPT, "--no-stream"]) == 0
    assert sorted(p.suffix for p in (tmp_path / "outputs" / "t2i").iterdir()) == [".json", ".png"]
    assert predict.main([*base, "--run-name", "i2t", "--image", str(image), "--prompt", "What is it?"]) == 0
    assert (tmp_path / "outputs" / "i2t" / "summary.json").is_file()


def test_merge_keeps_the_legacy_rows_and_reply(legacy, tmp_path: Path) -> None:
    from nextgpt.training.merge import merge_checkpoint

    fake, model, out, _ = legacy
    merged = merge_checkpoint(out, tmp_path / "merged")
    assert not any(k.endswith("base_weight") for k in load_file(str(merged / "trainable.safetensors")))
    merged_model, cfg = load_model_from_folder(merged)
    assert not cfg.model.lora.enabled and cfg.model.llm.template == "vicuna_v0"
    assert torch.equal(merged_model.llm.get_input_embeddings().weight, fake.embed.half().float())
    result = generate_reply(merged_model.eval(), [Turn("user", PROMPT)], {}, _greedy(), decoders=None)
    assert result.token_ids == [*fake.ids(["[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]"]), fake.tokenizer.eos_token_id]
