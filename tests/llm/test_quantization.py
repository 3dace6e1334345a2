"""bitsandbytes loading of the frozen LLM (`model.llm.quantization`): layer types, weight error and memory against
the float weights, logits, QLoRA gradients and training, and what refuses a quantized model.

The tolerances come from the quantizers themselves:
* NF4 stores each weight as one of 16 levels times its 64-weight block's largest |w| (`absmax`), so a weight is off by
  at most half the widest gap between neighbouring levels (0.152, between -1 and -0.696) times absmax; double
  quantization stores absmax itself in 8 bits, which adds |absmax - stored absmax| (the level is at most 1).
* LLM.int8 stores each float16-rounded weight as an int8 times its output row's largest |w| / 127: off by at most
  half a step plus half a float16 ulp.
* Logits: each of the L quantized matrices perturbs the logits by about its relative weight error eps_w (a linear map
  whose weights change by eps_w relative changes its output by about eps_w relative, and the residual stream passes
  that on with gain about 1); the matrices are quantized independently, so their errors add like a random walk:
  relative logit error <= sqrt(L) * eps_w (measured on the tiny LLM: 0.12 for 4-bit at eps_w = 0.092, bound 0.34).
* A quantized layer computes exactly the float layer with the dequantized weights, so a float32 model holding those
  weights must agree to float32 rounding (tests/numerics.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, dequantize_blockwise, get_4bit_type
from numerics import assert_float32_paths_close, rounding_bound
from torch import nn

from nextgpt.config import ConfigError, LLMConfig, LoRAConfig, load_config
from nextgpt.llm.backbone import load_llm, save_merged_llm
from nextgpt.llm.lora import apply_lora
from nextgpt.llm.quantization import NOT_QUANTIZED, is_quantized, quantized_weight_bytes
from nextgpt.llm.token_rows import TokenRowsEmbedding, TokenRowsHead

IDS = torch.tensor([[1, 300, 512, 47, 530, 547, 2, 100, 200, 400, 5, 511]])
NUM_LINEARS = 2 * 7  # two decoder layers of q, k, v, o, gate, up, down
NF4_BLOCK = 64
LORA = LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj"))


def _decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder layers' linear modules by name (peft's wrappers skipped: their base_layer is listed instead)."""
    return {
        n.replace(".base_layer", ""): m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in n and "lora_" not in n
    }


def _nf4_dequantized(module: nn.Module) -> torch.Tensor:
    return dequantize_4bit(module.weight.data, module.weight.quant_state).float()  # (out, in)


def _int8_dequantized(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    return weight.data.float() * weight.SCB.float().unsqueeze(1) / 127  # (out, in)


def _with_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """`model` with the named linears' weights replaced, in place."""
    modules = _decoder_linears(model)
    with torch.no_grad():
        for name, weight in weights.items():
            modules[name].weight.copy_(weight)
    return model


def _assert_grads_float32_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], num_terms: int) -> None:
    """Two float32 computations of the same gradients agree to rounding (`assert_float32_paths_close`), relative to
    the model's largest gradient: a parameter whose gradient is near zero still carries the rounding of the large
    activations it depends on (tests/numerics.py)."""
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    scale = max(float(g.abs().max()) for g in want.values())
    bound = 2 * rounding_bound(scale, num_terms)
    for name, grad in want.items():
        assert float((got[name] - grad).abs().max()) <= bound, name


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.fixture()
def llm4(llm_cfg, tokenizer):
    return load_llm(replace(llm_cfg, quantization="4bit"), tokenizer)


@pytest.fixture()
def llm8(llm_cfg, tokenizer):
    return load_llm(replace(llm_cfg, quantization="8bit"), tokenizer)


@pytest.mark.parametrize("quantization,layer_type", [("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)])
def test_decoder_linears_are_quantized_and_the_vocabulary_stays_float(llm_cfg, tokenizer, quantization, layer_type):
    model = load_llm(replace(llm_cfg, quantization=quantization), tokenizer)
    linears = _decoder_linears(model)
    assert len(linears) == NUM_LINEARS
    assert all(type(m) is layer_type for m in linears.values()), {n: type(m) for n, m in linears.items()}
    assert is_quantized(model)
    assert NOT_QUANTIZED == ["lm_head"]
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, TokenRowsEmbedding) and isinstance(head, TokenRowsHead)
    for rows in (embedding, head):
        assert rows.base_weight.dtype == rows.new_rows.dtype == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.embed_tokens.new_rows", "lm_head.new_rows"}


def test_unquantized_loading_is_unchanged(llm) -> None:
    assert not is_quantized(llm)
    assert all(type(m) is nn.Linear for m in _decoder_linears(llm).values())


def test_nf4_weights_are_within_half_a_level_of_the_float_weights(llm, llm4) -> None:
    code = get_4bit_type("nf4", device="cpu")
    half_gap = float((code.sort().values.diff() / 2).max())  # 0.152
    floats = _decoder_linears(llm)
    for name, module in _decoder_linears(llm4).items():
        weight = floats[name].weight.detach().reshape(-1, NF4_BLOCK)  # (blocks, 64): bnb's blocks, row-major
        state = module.weight.quant_state
        assert state.nested, "double quantization"
        stored_absmax = dequantize_blockwise(state.absmax, state.state2) + state.offset  # (blocks,)
        absmax = weight.abs().amax(dim=1)  # (blocks,)
        bound = half_gap * absmax + (absmax - stored_absmax).abs() + 1e-6  # (blocks,)
        error = (_nf4_dequantized(module).reshape(-1, NF4_BLOCK) - weight).abs().amax(dim=1)
        assert (error <= bound).all(), (name, float((error / bound).max()))


def test_int8_weights_are_within_half_a_step_of_the_float_weights(llm, llm8) -> None:
    floats = _decoder_linears(llm)
    for name, module in _decoder_linears(llm8).items():
        weight = floats[name].weight.detach()  # (out, in)
        step = weight.abs().amax(dim=1, keepdim=True) / 127  # (out, 1)
        # bitsandbytes quantizes the float16-rounded weights: half a float16 ulp (2**-11 relative) on top.
        bound = step / 2 + weight.abs() * 2**-11 + 1e-7  # (out, in)
        assert ((_int8_dequantized(module) - weight).abs() <= bound).all(), name


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_weights_take_a_quarter_or_half_of_bf16(llm_cfg, tokenizer, quantization):
    model = load_llm(replace(llm_cfg, quantization=quantization), tokenizer)
    linears = _decoder_linears(model)
    bf16_bytes = sum(2 * m.in_features * m.out_features for m in linears.values())
    ratio = quantized_weight_bytes(model) / bf16_bytes
    sizes = [(m.in_features * m.out_features, m.out_features) for m in linears.values()]
    if quantization == "4bit":
        # Half a byte per weight, one 8-bit absmax per 64 weights, one float32 scale per 256 absmax values and a
        # float32 offset per layer: (0.5 + 1/64 + 4/16384) / 2 = 0.258 of bf16 on Vicuna-7B's large layers.
        expected = sum(n / 2 + n / 64 + 4 * math.ceil(n / 64 / 256) + 4 for n, _ in sizes) / bf16_bytes
    else:
        # One byte per weight and one float32 scale per output row: 0.5005 of bf16 on Vicuna-7B.
        expected = sum(n + 4 * rows for n, rows in sizes) / bf16_bytes
    assert ratio == pytest.approx(expected, rel=1e-6), ratio
    assert ratio < (0.26 if quantization == "4bit" else 0.54)


@pytest.mark.numerics
def test_4bit_layers_compute_the_float_layers_of_their_dequantized_weights(llm, llm4) -> None:
    # Train mode keeps bitsandbytes' eval-only CPU repacking out of this comparison (it is covered below).
    reference = _with_weights(llm, {n: _nf4_dequantized(m) for n, m in _decoder_linears(llm4).items()})
    with torch.no_grad():
        got, want = llm4.train()(IDS).logits, reference.train()(IDS).logits
    assert_float32_paths_close(got, want, llm.config.intermediate_size, "4-bit vs dequantized logits")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_logits_are_within_the_weight_error_of_the_float_logits(llm, llm_cfg, tokenizer, quantization):
    model = load_llm(replace(llm_cfg, quantization=quantization), tokenizer)
    floats = _decoder_linears(llm)
    dequantize = _nf4_dequantized if quantization == "4bit" else _int8_dequantized
    pairs = [(dequantize(m), floats[n].weight.detach()) for n, m in _decoder_linears(model).items()]
    weight_error = math.sqrt(
        sum(float((q - w).pow(2).sum()) for q, w in pairs) / sum(float(w.pow(2).sum()) for _, w in pairs)
    )
    assert weight_error < (0.1 if quantization == "4bit" else 0.01), weight_error
    with torch.no_grad():
        got, want = model.eval()(IDS).logits, llm.eval()(IDS).logits
    # 8-bit matmuls take float16 inputs: a float16 rounding (2**-11) per matrix on top.
    input_rounding = 0.0 if quantization == "4bit" else 2**-11
    bound = math.sqrt(NUM_LINEARS) * (weight_error + input_rounding)
    assert _relative_error(got, want) <= bound, (_relative_error(got, want), bound)


@pytest.mark.numerics
def test_qlora_gradients_are_those_of_the_dequantized_model(llm, llm4) -> None:
    reference = _with_weights(llm, {n: _nf4_dequantized(m) for n, m in _decoder_linears(llm4).items()})
    torch.manual_seed(0)
    qlora = apply_lora(llm4, LORA)
    float_lora = apply_lora(reference, LORA)
    generator = torch.Generator().manual_seed(0)
    lora_state = {
        n: torch.randn(p.shape, generator=generator) * 0.05 for n, p in qlora.named_parameters() if "lora_" in n
    }
    grads = []
    for model in (qlora, float_lora):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in lora_state:
                    param.copy_(lora_state[name])
        model.train()(input_ids=IDS, labels=IDS).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    got, want = grads
    assert any("lora_" in n for n in got)
    _assert_grads_float32_close(got, want, llm.config.intermediate_size)


@pytest.mark.numerics
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_lora_on_the_quantized_llm_overfits_a_batch_with_only_lora_and_token_rows_trained(
    llm_cfg, tokenizer, quantization
):
    torch.manual_seed(0)
    model = apply_lora(load_llm(replace(llm_cfg, quantization=quantization), tokenizer), LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.endswith("new_rows") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        for name, param in model.named_parameters():
            assert (param.grad is not None) == (name in trainable), name
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    # ln(548) = 6.3 at the start: a falling loss shows the LoRA and row gradients through the quantized layers work.
    assert losses[-1] < 0.7 * losses[0], losses
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), f"{name} changed"


def test_merging_into_a_quantized_llm_is_refused(llm4, tokenizer, tmp_path) -> None:
    model = apply_lora(llm4, LORA)
    with pytest.raises(ValueError, match="model.llm.quantization=none"):
        save_merged_llm(model, tokenizer, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_quantization_config_values(tiny_llm_dir) -> None:
    assert LLMConfig().quantization == "none"
    assert load_config(None, overrides=["model.llm.quantization=4bit"]).model.llm.quantization == "4bit"
    with pytest.raises(ConfigError, match="quantization"):
        load_config(None, overrides=["model.llm.quantization=3bit"])


@pytest.mark.numerics
def test_gradient_checkpointing_on_the_4bit_llm_gives_the_same_gradients(llm_cfg, tokenizer) -> None:
    # The QLoRA preset recomputes each layer in the backward pass (non-reentrant: no input-grad hook needed).
    grads = []
    for checkpointing in (False, True):
        cfg = replace(llm_cfg, quantization="4bit", gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = apply_lora(load_llm(cfg, tokenizer), LORA)
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.01)
        model.train()(input_ids=IDS, labels=IDS).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys()
    for name, grad in plain.items():
        # The recomputed forward repeats the same operations in the same order: the same numbers.
        torch.testing.assert_close(recomputed[name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.numerics
def test_compiled_layers_on_the_4bit_llm_give_the_eager_loss_and_gradients(llm_cfg, tokenizer) -> None:
    # model.llm.compile_layers is allowed with quantization: bitsandbytes' 4-bit matmul traces under torch.compile.
    from nextgpt.llm.backbone import compile_decoder_layers, uncompile_decoder_layers

    cfg = replace(llm_cfg, quantization="4bit")
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = apply_lora(load_llm(cfg, tokenizer), LORA)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.01)
        models.append(model.train())
    eager, compiled = models
    compile_decoder_layers(compiled)
    try:
        results = []
        for model in (eager, compiled):
            loss = model(input_ids=IDS, labels=IDS).loss
            loss.backward()
            results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    finally:
        uncompile_decoder_layers(compiled)
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    n = eager.config.intermediate_size
    assert_float32_paths_close(compiled_loss, eager_loss, n, "compiled loss")
    _assert_grads_float32_close(compiled_grads, eager_grads, n)  # fused kernels change the summation order only
