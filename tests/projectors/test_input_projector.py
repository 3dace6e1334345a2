"""Input projectors: shapes, values, the grouping projector's hard assignment, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nextgpt.config import InputProjectorConfig
from nextgpt.projectors import GroupProjector, build_input_projector
from nextgpt.projectors.group import compute_hard_assignment

IN_DIM, LLM_DIM = 24, 40


def tiny_group_cfg() -> InputProjectorConfig:
    """The grouping sizes of configs/tiny.yaml."""
    return InputProjectorConfig(
        type="group", group_width=32, group_num_tokens=(16, 8), group_depths=(2, 1, 1), group_num_heads=2
    )


@pytest.mark.numerics
def test_linear_projector_is_one_affine_token() -> None:
    projector = build_input_projector(InputProjectorConfig(type="linear"), IN_DIM, LLM_DIM)
    x = torch.randn(5, IN_DIM)
    out = projector(x)
    assert projector.num_tokens == 1
    assert out.shape == (5, 1, LLM_DIM)
    torch.testing.assert_close(out[:, 0], x @ projector.weight.T + projector.bias)
    assert set(projector.state_dict()) == {"weight", "bias"}


@pytest.mark.numerics
def test_mlp_projector_is_linear_gelu_linear() -> None:
    projector = build_input_projector(InputProjectorConfig(type="mlp", mlp_hidden_dim=16), IN_DIM, LLM_DIM)
    x = torch.randn(3, IN_DIM)
    first, second = projector.layer[0], projector.layer[2]
    expected = F.gelu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    assert projector.num_tokens == 1
    torch.testing.assert_close(projector(x), expected.unsqueeze(1))


@pytest.mark.parametrize("training", [True, False])
def test_group_projector_shape(training: bool) -> None:
    projector = build_input_projector(tiny_group_cfg(), IN_DIM, LLM_DIM).train(training)
    out = projector(torch.randn(4, IN_DIM))
    assert projector.num_tokens == 8
    assert out.shape == (4, 8, LLM_DIM)
    assert torch.isfinite(out).all()


def test_group_projector_eval_is_deterministic_and_train_is_stochastic() -> None:
    torch.manual_seed(0)
    projector = build_input_projector(tiny_group_cfg(), IN_DIM, LLM_DIM)
    x = torch.randn(6, IN_DIM)
    projector.eval()
    torch.manual_seed(1)
    first = projector(x)
    torch.manual_seed(2)
    torch.testing.assert_close(projector(x), first, rtol=0, atol=0)
    projector.train()
    torch.manual_seed(1)
    noisy_a = projector(x)
    torch.manual_seed(1)
    torch.testing.assert_close(projector(x), noisy_a, rtol=0, atol=0)
    torch.manual_seed(2)
    assert not torch.allclose(projector(x), noisy_a)


@pytest.mark.numerics
@pytest.mark.parametrize("training", [True, False])
def test_group_projector_gradients_pass_the_straight_through_assignment(training: bool) -> None:
    projector = build_input_projector(tiny_group_cfg(), IN_DIM, LLM_DIM).train(training)
    x = torch.randn(3, IN_DIM, requires_grad=True)
    projector(x).square().sum().backward()
    for stage in projector.layers[:2]:
        # q/k of the assignment attention only reach the output through the hard one-hot assignment.
        for name in ("q_proj", "k_proj"):
            grad = getattr(stage.downsample.assign, name).weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.numerics
def test_hard_assignment_is_one_hot_with_soft_gradient() -> None:
    logits = torch.randn(2, 5, 3, requires_grad=True)
    hard = compute_hard_assignment(logits, dim=-2, gumbel=False)
    expected = F.one_hot(logits.argmax(dim=-2), 5).transpose(1, 2).float()  # (2, 3, 5) -> (2, 5, 3)
    torch.testing.assert_close(hard, expected)
    weights = torch.randn(2, 5, 3)
    (hard * weights).sum().backward()
    soft_logits = logits.detach().clone().requires_grad_(True)
    (torch.softmax(soft_logits, dim=-2) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, soft_logits.grad)


def test_gumbel_assignment_is_one_hot() -> None:
    torch.manual_seed(0)
    hard = compute_hard_assignment(torch.zeros(4, 7, 9), dim=-2, gumbel=True)
    torch.testing.assert_close(hard.sum(dim=-2), torch.ones(4, 9))
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    # Zero logits: only the noise decides, so the chosen groups differ between columns.
    assert hard.argmax(dim=-2).unique().numel() > 1


def _attn_block_params(w: int, ratio: float) -> int:
    layer_norm, hidden = 2 * w, int(w * ratio)
    mlp = w * hidden + hidden + hidden * w + w
    return 2 * layer_norm + 3 * w * w + (w * w + w) + mlp


def _grouping_block_params(w: int, ratio: float, groups: int) -> int:
    layer_norm, hidden = 2 * w, int(w * ratio)
    mlp = w * hidden + hidden + hidden * w + w
    token_mlp = groups * (w // 2) + w // 2 + (w // 2) * groups + groups
    cross_block = 4 * (w * w + w) + layer_norm + mlp + layer_norm
    assign = 4 * (w * w + w)
    return 4 * layer_norm + token_mlp + cross_block + assign + mlp


def test_group_projector_default_size_and_keys() -> None:
    cfg = InputProjectorConfig(type="group")
    projector = build_input_projector(cfg, 1024, 4096)
    w, ratio = 512, 4.0
    mixer = 2 * w + 64 * (w // 2) + w // 2 + (w // 2) * 8 + 8
    expected = (
        (1024 * w + w)
        + 12 * _attn_block_params(w, ratio)
        + _grouping_block_params(w, ratio, 64)
        + _grouping_block_params(w, ratio, 8)
        + (64 + 8) * w
        + mixer
        + 2 * w
        + (w * 4096 + 4096)
    )
    assert sum(p.numel() for p in projector.parameters()) == expected
    assert projector.num_tokens == 8
    keys = set(projector.state_dict())
    for key in (
        "in_fc.weight",
        "layers.0.group_token",
        "layers.0.blocks.5.attn.qkv.weight",
        "layers.0.downsample.mlp_inter.fc1.weight",
        "layers.0.downsample.pre_assign_attn.attn.q_proj.bias",
        "layers.0.downsample.assign.proj.weight",
        "layers.1.group_projector.1.fc2.weight",
        "layers.2.blocks.2.mlp.fc2.bias",
        "norm.weight",
        "out_fc.weight",
    ):
        assert key in keys
    assert "layers.2.group_token" not in keys and "layers.0.blocks.0.attn.qkv.bias" not in keys


def test_later_group_tokens_start_at_zero() -> None:
    projector = build_input_projector(tiny_group_cfg(), IN_DIM, LLM_DIM)
    assert projector.layers[0].group_token.abs().sum() > 0
    assert torch.count_nonzero(projector.layers[1].group_token) == 0


def test_bad_inputs_raise() -> None:
    projector = build_input_projector(tiny_group_cfg(), IN_DIM, LLM_DIM)
    with pytest.raises(ValueError, match=r"\(N, 24\), got \(2, 1, 24\)"):
        projector(torch.randn(2, 1, IN_DIM))
    with pytest.raises(ValueError, match=r"got \(2, 30\)"):
        build_input_projector(InputProjectorConfig(type="linear"), IN_DIM, LLM_DIM)(torch.randn(2, 30))
    with pytest.raises(ValueError, match=r"one of \('linear', 'mlp', 'group'\)"):
        build_input_projector(InputProjectorConfig(type="qformer"), IN_DIM, LLM_DIM)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one more depth"):
        GroupProjector(IN_DIM, LLM_DIM, width=32, num_group_tokens=(16, 8), depths=(2, 1), num_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        GroupProjector(IN_DIM, LLM_DIM, width=30, num_group_tokens=(8,), depths=(1, 1), num_heads=4)
