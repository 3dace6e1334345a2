"""Where batch-1 7B decoding spends its step: attention of one query against a static cache by sdpa backend, and
`FastDecoder` under compile-option variants, on a plain random-weight LLaMA-7B shape (the settings behind
`nextgpt.inference.fast_decode.CUDA_COMPILE_OPTIONS` and `DECODE_ATTENTION`).

    python bench/decode_probe.py --out decode_probe.json --variants graphs autotune autotune+math

Variants (each compiles its own step in this process; 64-token prompt, 256 greedy tokens, cache of `--cache-len`):
`graphs` = CUDA graphs + coordinate-descent tuning (`CUDA_GRAPH_OPTIONS`) with sdpa's own backend choice,
`autotune` adds autotuned matrix-vector products, `+math` runs the step's attention through sdpa's math backend
(`DECODE_ATTENTION`), `+eager` through transformers' eager attention, `+freeze` compiles with the weights as constants
(inductor's freezing: parallel projections folded into one product), `+eagerprefill` turns the prefill's CUDA graphs
off. Each variant reports the whole call, a one-token call (the prefill) and the step, and also decodes 16 tokens and counts
how many equal HF `generate`'s greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.components import VICUNA_7B  # noqa: E402
from bench.run import _command  # noqa: E402


def graph_us(fn, reps: int = 100) -> float:
    """Microseconds per call of `fn`, ten calls captured in one CUDA graph and replayed `reps` times."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (reps * 10) * 1e6


def _masked_attention(q, k, v, mask):
    """Attention written out (what sdpa's math backend computes): (1, H, 1, d) against (1, H, C, d)."""
    weights = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (1, H, 1, C)
    weights = weights.masked_fill(~mask, float("-inf")).float().softmax(-1).to(q.dtype)
    return weights @ v  # (1, H, 1, d)


def _attention_at(cache_len: int, backends: dict, compiled) -> dict[str, float | str]:
    """Every backend's time for one query against a cache of `cache_len`, half of it written."""
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 32, cache_len, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.zeros(1, 1, 1, cache_len, dtype=torch.bool, device="cuda")
    mask[..., : cache_len // 2] = True
    out: dict[str, float | str] = {}
    for name, backend in backends.items():
        attn_mask = None if name == "flash" else mask  # flash takes no mask: a lower bound
        try:
            with sdpa_kernel([backend]):
                out[f"{name}_C{cache_len}_us"] = graph_us(
                    lambda m=attn_mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
                )
        except RuntimeError as err:
            out[f"{name}_C{cache_len}_us"] = str(err)[:120]
    out[f"written_out_C{cache_len}_us"] = graph_us(lambda: _masked_attention(q, k, v, mask))
    out[f"written_out_compiled_C{cache_len}_us"] = graph_us(lambda: compiled(q, k, v, mask))
    return out


def attention_microbench(cache_lens: list[int]) -> dict[str, float | str]:
    """One decode query of a 7B layer (32 heads of 128) against caches of `cache_lens`, by sdpa backend."""
    from torch.nn.attention import SDPBackend

    backends = {
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
    }
    compiled = torch.compile(_masked_attention, fullgraph=True)
    out: dict[str, float | str] = {}
    for cache_len in cache_lens:
        out.update(_attention_at(cache_len, backends, compiled))
    return out


def decode_variant(model, embeds: torch.Tensor, variant: str, cache_len: int, new_tokens: int) -> dict[str, float]:
    """FastDecoder tokens/s under one variant, its first-request time and its agreement with HF `generate`."""
    from torch.nn.attention import SDPBackend

    from nextgpt.inference import fast_decode

    parts = variant.split("+")
    torch._dynamo.reset()
    fast_decode.CUDA_COMPILE_OPTIONS = dict(fast_decode.CUDA_GRAPH_OPTIONS)
    if "autotune" in parts:
        fast_decode.CUDA_COMPILE_OPTIONS.update(max_autotune=True, max_autotune_gemm_backends="TRITON,ATEN")
    if "freeze" in parts:  # weights as constants: inductor folds q/k/v and gate/up into one matrix-vector product each
        fast_decode.CUDA_COMPILE_OPTIONS["freezing"] = True
    # sdpa's own choice (no restriction) unless `math`; `eager` swaps the attention function itself.
    fast_decode.DECODE_ATTENTION = (
        (SDPBackend.MATH,)
        if "math" in parts
        else tuple(
            getattr(SDPBackend, n) for n in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
        )
    )
    model.config._attn_implementation = "eager" if "eager" in parts else "sdpa"
    start = time.perf_counter()
    decoder = fast_decode.FastDecoder(model, cache_len, prefill_graphs="eagerprefill" not in parts)
    for _ in range(2):  # compile, record the CUDA graph
        decoder.generate(embeds, new_tokens)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.generate(embeds, new_tokens)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    one = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decoder.generate(embeds, 1)
        torch.cuda.synchronize()
        one.append(time.perf_counter() - start)
    ids = decoder.generate(embeds, 16).cpu()
    with torch.no_grad():
        reference = model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )[0, -16:].cpu()
    return {
        "tokens_per_s": new_tokens / sorted(times)[1],
        "call_ms": sorted(times)[1] * 1e3,
        "one_token_call_ms": sorted(one)[2] * 1e3,
        "step_ms": (sorted(times)[1] - sorted(one)[2]) * 1e3 / (new_tokens - 1),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "first_requests_s": first_s,
        "tokens_equal_to_hf_of_16": int((ids == reference).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["graphs", "autotune", "autotune+math"])
    parser.add_argument("--cache-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--attention-cache-lens", type=int, nargs="*", default=[320, 512, 1024])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this probe needs a CUDA GPU")
    from transformers import LlamaConfig, LlamaForCausalLM

    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": _command(sys.argv[1:], "bench/decode_probe.py"),
    }
    report["attention_us"] = attention_microbench(args.attention_cache_lens)
    config = LlamaConfig(**{**VICUNA_7B, "vocab_size": 32064})  # 32,000 + the signal tokens, padded
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    embeds = torch.randn(1, 64, 4096, device="cuda", dtype=torch.bfloat16) * 0.02  # (1, L, D)
    report["variants"] = {}
    for variant in args.variants:
        report["variants"][variant] = decode_variant(model, embeds, variant, args.cache_len, args.new_tokens)
        print(variant, report["variants"][variant], flush=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
