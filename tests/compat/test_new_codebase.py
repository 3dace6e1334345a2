"""What the NEW NExT-GPT code saves between its stages, at tiny size in its key layout: every key is consumed, the
rows are restored as that code restores them, and its 2n-1-token signal spans feed the output projectors whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from nextgpt.checkpoints import load_model_from_folder
from nextgpt.cli import convert_checkpoint
from nextgpt.config import InputProjectorConfig, load_config
from nextgpt.constants import MODALITIES, Modality
from nextgpt.llm.conversation import Turn, build_training_example
from nextgpt.model import NextGPTBatch
from nextgpt.projectors.input_projector import GroupProjector
from nextgpt.tiny.build import tiny_path_overrides

MODULES = {Modality.IMAGE: "mm_output_img_projector", Modality.VIDEO: "mm_output_vid_projector"}
MODULES[Modality.AUDIO] = "mm_output_aud_projector"
OUT = {Modality.IMAGE: (77, 32), Modality.VIDEO: (77, 24), Modality.AUDIO: (1, 16)}
NUM_ADDED = 36


class TransformersProjector(nn.Module):
    """The NEW code's output projector semantics and parameter names (in_fc, tfm, out_fc, query_embs)."""

    def __init__(self, dim: int, out_dim: int, queries: int) -> None:
        super().__init__()
        self.in_fc = nn.Linear(dim, 64)
        self.tfm = nn.Transformer(
            batch_first=True, norm_first=True, d_model=64, num_encoder_layers=1, num_decoder_layers=1,
            dim_feedforward=128, dropout=0.0, nhead=4,
        )  # fmt: skip
        self.out_fc = nn.Linear(64, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, queries, 64))

    def forward(self, x: torch.Tensor, input_embs: torch.Tensor) -> torch.Tensor:
        return self.out_fc(self.tfm(self.in_fc(x + input_embs), self.query_embs.repeat(x.shape[0], 1, 1)))


@pytest.fixture(scope="module")
def new_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    overrides = [*tiny_path_overrides(tiny_root), "model.llm.dtype=float32", "model.encoder.dtype=float32"]
    tiny = load_config("tiny", overrides=overrides)
    llm = AutoModelForCausalLM.from_pretrained(tiny.model.llm.model_path)
    dim, vocab = llm.config.hidden_size, llm.get_input_embeddings().weight.shape[0]
    group_cfg = InputProjectorConfig(
        type="group", group_width=32, group_num_tokens=(16, 8), group_depths=(2, 1, 1), group_num_heads=2
    )
    group = GroupProjector(32, dim, 32, (16, 8), (2, 1, 1), 2)
    projectors = {m: TransformersProjector(dim, OUT[m][1], OUT[m][0]).eval() for m in MODALITIES}
    enc_embed = torch.randn(vocab + NUM_ADDED, dim)
    dec_embed, dec_head = torch.randn(vocab + NUM_ADDED, dim), torch.randn(vocab + NUM_ADDED, dim)
    root = tmp_path_factory.mktemp("new_code")
    (root / "pretrain_enc_1").mkdir()
    enc = {f"model.mm_input_projector.{k}": v for k, v in group.state_dict().items()}
    torch.save({**enc, "model.embed_tokens.weight": enc_embed}, root / "pretrain_enc_1" / "mm_input_projector.bin")
    (root / "pretrain_dec_1").mkdir()
    dec = {f"model.{MODULES[m]}.{k}": v for m, p in projectors.items() for k, v in p.state_dict().items()}
    dec.update({"model.embed_tokens.weight": dec_embed, "lm_head.weight": dec_head})
    torch.save(dec, root / "pretrain_dec_1" / "mm_output_projector.bin")
    finetune = root / "finetune_1"
    finetune.mkdir()
    lora = {}
    for i in range(llm.config.num_hidden_layers):
        for proj in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            width_in = llm.config.intermediate_size if proj == "mlp.down_proj" else dim
            lora[f"base_model.model.model.layers.{i}.{proj}.lora_A.weight"] = torch.randn(8, width_in) * 0.1
            lora[f"base_model.model.model.layers.{i}.{proj}.lora_B.weight"] = torch.randn(dim, 8) * 0.1
    torch.save(lora, finetune / "adapter_model.bin")
    adapter = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    (finetune / "adapter_config.json").write_text(json.dumps({**adapter, "peft_type": "LORA"}))
    # Stage 3 trained the input projector again: non_lora_trainables (prefixed base_model.model.) wins over stage 1.
    group2 = GroupProjector(32, dim, 32, (16, 8), (2, 1, 1), 2)
    non_lora = {f"base_model.model.model.mm_input_projector.{k}": v for k, v in group2.state_dict().items()}
    torch.save(non_lora, finetune / "non_lora_trainables.bin")
    out = root / "converted"
    argv = ["new", "--input-adapter", str(root / "pretrain_enc_1" / "mm_input_projector.bin")]
    argv += ["--output-adapter", str(root / "pretrain_dec_1" / "mm_output_projector.bin")]
    argv += ["--finetune-dir", str(finetune), "--output-dir", str(out), "--config", "tiny", *overrides]
    argv += ["model.input_projector.group_num_heads=2"]
    assert convert_checkpoint.main(argv) == 0
    model, cfg = load_model_from_folder(out)
    return model.eval(), cfg, group_cfg, group2, projectors, dec_embed, llm


def test_rows_projectors_and_lora_are_restored_as_the_new_code_does(new_run) -> None:
    model, cfg, group_cfg, group2, projectors, dec_embed, llm = new_run
    assert cfg.model.input_projector.type == "group"
    assert tuple(cfg.model.input_projector.group_num_tokens) == (16, 8)
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.target_modules) == (
        8,
        16,
        ("down_proj", "q_proj", "v_proj"),
    )
    num_base = llm.get_input_embeddings().weight.shape[0]
    embed, head = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    assert torch.equal(embed.weight[num_base:], dec_embed[-NUM_ADDED:])  # output adapter's rows win
    assert torch.equal(embed.weight[:num_base], llm.get_input_embeddings().weight)  # base rows untouched
    base_head = llm.get_output_embeddings().weight
    assert torch.allclose(head.weight[num_base:], base_head.mean(dim=0).expand(NUM_ADDED, -1))  # never restored
    features = torch.randn(2, 32)
    group2.eval()
    with torch.no_grad():
        assert torch.equal(model.input_projector(features), group2(features))
        x, e = torch.randn(2, 7, llm.config.hidden_size), torch.randn(2, 7, llm.config.hidden_size)
        for modality, projector in projectors.items():
            assert torch.allclose(model.output_projectors[modality.value](x, e), projector(x, e), atol=1e-5)


def test_signal_spans_are_2n_minus_1_tokens_and_fed_whole(new_run) -> None:
    model, _, _, _, projectors, _, _ = new_run
    tok = model.tokenizer
    strings = ["<image_00>", "<image_01>", "<image_02>", "<image_03>"]
    reference = tok(" ".join(strings), add_special_tokens=False).input_ids  # what the NEW code tokenised
    span = model.signal_ids[Modality.IMAGE]
    assert span == reference and len(span) == 7 and span[0::2] == tok.convert_tokens_to_ids(strings)
    assert len(model.signal_ids[Modality.VIDEO]) == 47 and len(model.signal_ids[Modality.AUDIO]) == 15
    turns = [Turn("user", "Draw a cat."), Turn("assistant", "Here it is. <image>")]
    example = build_training_example(tok, turns, model.signal_ids, model.template)
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        out = model(NextGPTBatch(ids, torch.ones_like(ids)))
        start = example.input_ids.index(span[0])
        hidden = model.llm(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, start : start + 7]
        expected = projectors[Modality.IMAGE](hidden, model.llm.get_input_embeddings()(ids[:, start : start + 7]))
    assert out.spans.count(Modality.IMAGE) == 1 and not out.spans.problems
    assert torch.allclose(out.signal_embeds[Modality.IMAGE], expected, atol=1e-5)
