"""Output projectors: shapes for Q=77 and Q=1, the GILL sum, query init and input errors."""

from __future__ import annotations

import pytest
import torch

from nextgpt.config import OutputProjectorConfig, OutputProjectorsConfig
from nextgpt.projectors import OutputProjector, build_output_projectors

LLM_DIM = 40


def tiny_cfg(num_queries: int, out_dim: int) -> OutputProjectorConfig:
    """Sizes of configs/tiny.yaml."""
    return OutputProjectorConfig(
        num_queries=num_queries,
        out_dim=out_dim,
        hidden_dim=32,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        ff_dim=64,
    )


@pytest.mark.parametrize(("num_queries", "out_dim", "span_len"), [(77, 32, 7), (1, 16, 15)])
def test_output_shape(num_queries: int, out_dim: int, span_len: int) -> None:
    projector = OutputProjector(tiny_cfg(num_queries, out_dim), LLM_DIM)
    out = projector(torch.randn(3, span_len, LLM_DIM), torch.randn(3, span_len, LLM_DIM))
    assert out.shape == (3, num_queries, out_dim)


@pytest.mark.numerics
def test_input_is_sum_of_hidden_and_embeds() -> None:
    projector = OutputProjector(tiny_cfg(77, 32), LLM_DIM).eval()
    hidden, embeds = torch.randn(2, 4, LLM_DIM), torch.randn(2, 4, LLM_DIM)
    torch.testing.assert_close(projector(hidden, embeds), projector(hidden + embeds, torch.zeros_like(embeds)))


def test_queries_are_small_random_so_outputs_differ() -> None:
    torch.manual_seed(0)
    projector = OutputProjector(tiny_cfg(77, 32), LLM_DIM)
    assert 0.01 < projector.query_embs.std().item() < 0.03
    out = projector(torch.randn(1, 4, LLM_DIM), torch.randn(1, 4, LLM_DIM))
    # Zero-initialised queries would make all 77 output rows identical (spec §7.6).
    assert (out[0] - out[0, :1]).abs().amax() > 1e-3


def test_gradients_reach_queries_and_inputs() -> None:
    projector = OutputProjector(tiny_cfg(1, 16), LLM_DIM)
    hidden = torch.randn(2, 5, LLM_DIM, requires_grad=True)
    projector(hidden, torch.randn(2, 5, LLM_DIM)).sum().backward()
    assert projector.query_embs.grad is not None and projector.query_embs.grad.abs().sum() > 0
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_bad_shapes_raise() -> None:
    projector = OutputProjector(tiny_cfg(77, 32), LLM_DIM)
    with pytest.raises(ValueError, match=r"\(N, T, 40\), got \(2, 4, 41\)"):
        projector(torch.randn(2, 4, 41), torch.randn(2, 4, 41))
    with pytest.raises(ValueError, match=r"got \(4, 40\)"):
        projector(torch.randn(4, LLM_DIM), torch.randn(4, LLM_DIM))
    with pytest.raises(ValueError, match=r"shaped like signal_hidden \(2, 4, 40\), got \(2, 3, 40\)"):
        projector(torch.randn(2, 4, LLM_DIM), torch.randn(2, 3, LLM_DIM))
    with pytest.raises(ValueError, match="not divisible"):
        OutputProjector(OutputProjectorConfig(hidden_dim=30, num_heads=4), LLM_DIM)


def test_build_output_projectors_follows_config() -> None:
    cfg = OutputProjectorsConfig(image=tiny_cfg(77, 32), video=tiny_cfg(77, 24), audio=tiny_cfg(1, 16))
    projectors = build_output_projectors(cfg, LLM_DIM)
    assert sorted(projectors.keys()) == ["audio", "image", "video"]
    shapes = {
        name: tuple(p(torch.randn(1, 3, LLM_DIM), torch.randn(1, 3, LLM_DIM)).shape) for name, p in projectors.items()
    }
    assert shapes == {"image": (1, 77, 32), "video": (1, 77, 24), "audio": (1, 1, 16)}


def test_state_dict_layout_matches_a_plain_transformer_projector() -> None:
    cfg = tiny_cfg(77, 32)
    projector = OutputProjector(cfg, LLM_DIM)
    plain = torch.nn.Transformer(
        d_model=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64, batch_first=True
    )
    expected = {f"tfm.{k}" for k in plain.state_dict()} | {
        "in_fc.weight",
        "in_fc.bias",
        "out_fc.weight",
        "out_fc.bias",
        "query_embs",
    }
    assert set(projector.state_dict()) == expected
