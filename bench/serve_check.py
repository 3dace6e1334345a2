"""Text tokens/s of concurrent streams: the server's batched decoding against batch-1 decoding, on one GPU.

The LLM is the 7B shape with random bf16 weights and no LoRA (the merged export a deployment serves); speed does not
depend on weight values. Every stream is a Vicuna v1 generation prompt with one image (its feature spliced in), the
prompt texts of different lengths, and decodes exactly `--new-tokens` greedy tokens (no stop id, so every stream
does the same work). Measured in one process:

- `fast_batch1`: one request through `FastDecoder` (static cache, compiled step replayed as a CUDA graph): what
  `predict.py` and the demo use for a single request.
- `streams[N]`: N streams submitted at once to the server's `TextBatcher` (one `BatchDecoder`: static cache of
  `max_batch_size` rows, compiled step replayed as a CUDA graph) configured with `max_batch_size` 32 (N <= 32) or N:
  N concurrent clients of `serve.py`, the HTTP layer aside. N = 1 is the server's own batch-1.

tokens/s = streams x new tokens / wall time from the first submit to the last reply (prefill included), the median
of `--repeat` rounds after a warm-up round.

    python bench/serve_check.py --out bench/serve_check.json             # GPU: 7B shape
    python bench/serve_check.py --smoke --out /tmp/serve_smoke.json      # CPU: tiny shapes, a check of the script
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.components import FULL, SMOKE, build_nextgpt, build_tokenizer  # noqa: E402
from bench.decode import prompt_embeds  # noqa: E402
from bench.run import _command  # noqa: E402
from bench.timing import peak_gib, reset_peak, sync, time_calls  # noqa: E402

logger = logging.getLogger("bench.serve_check")

PROMPTS = (
    "<image>\nDescribe the picture in detail, then draw a similar one as an image.",
    "<image>\nWhat is in this picture?",
    "<image>\nWrite a short story about the scene in this photo, with a title, three paragraphs and a moral at the "
    "end, then show me the final scene as an image.",
    "<image>\nList every object you can see, with its colour.",
)
"""Stream i gets PROMPTS[i % 4]: prompt lengths differ as they do between real clients (left padding is paid)."""

STREAMS = (8, 16, 32, 64)
TARGET_STREAMS = 32
"""The headline figure of the docs: tokens/s at this many concurrent streams against batch-1 decoding."""


def _median_rate(run, tokens: int, repeat: int) -> dict[str, float]:
    """tokens/s of `run()` (median over `repeat` synchronised calls after one warm-up call)."""
    stats = time_calls(run, warmup=1, repeat=repeat)
    wall = stats["median_ms"] / 1e3
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


def concurrent_streams(batcher, prompts: list[torch.Tensor], new_tokens: int) -> int:
    """Submit every prompt to the server's `TextBatcher` at once and wait for every reply; returns the tokens decoded."""
    from nextgpt.inference.batch_decode import DecodeRow

    futures = [batcher.submit(DecodeRow(p, max_new_tokens=new_tokens)) for p in prompts]
    decoded = sum(len(f.result()) for f in futures)
    if decoded != len(prompts) * new_tokens:
        raise RuntimeError(f"expected {len(prompts) * new_tokens} tokens, decoded {decoded}")
    return decoded


def run(shapes, device: str, new_tokens: int, repeat: int, streams: tuple[int, ...], work: Path) -> dict[str, Any]:
    """Every measurement on one model; see the module docstring."""
    from nextgpt.inference.fast_decode import FastDecoder
    from nextgpt.serving.scheduler import TextBatcher

    tokenizer = build_tokenizer(work, shapes)
    model = build_nextgpt(shapes, tokenizer, device, lora=False, with_encoder=False, trainable=()).eval()
    feature_dim = shapes.encoder.out_embed_dim
    prompts = [prompt_embeds(model, feature_dim, text)[1] for text in PROMPTS]  # each (1, L_i, D)
    lengths = [p.shape[1] for p in prompts]
    cache_len = max(lengths) + new_tokens
    llm = model.llm
    out: dict[str, Any] = {"prompt_tokens": lengths, "new_tokens": new_tokens, "streams": {}, "compile_s": {}}

    decoder = FastDecoder(llm, max_cache_len=cache_len, compile=None)
    start = time.perf_counter()
    decoder.generate(prompts[0], new_tokens)
    sync()
    out["compile_s"]["fast_batch1"] = time.perf_counter() - start
    out["fast_batch1"] = _median_rate(partial(decoder.generate, prompts[0], new_tokens), new_tokens, repeat)
    logger.info("fast batch-1: %.1f tokens/s", out["fast_batch1"]["tokens_per_s"])
    del decoder  # its static cache and CUDA graph pool
    capacities = sorted({max(n, TARGET_STREAMS) for n in (1, *streams)})
    for capacity in capacities:  # one server configuration (serve.max_batch_size) per capacity, compiled once
        batcher = TextBatcher(llm, [], max_batch_size=capacity, window_s=0.01, max_cache_len=cache_len)
        try:
            start = time.perf_counter()
            concurrent_streams(batcher, prompts[:1], new_tokens)
            sync()
            out["compile_s"][f"max_batch_size_{capacity}"] = time.perf_counter() - start
            for n in (1, *streams):
                if max(n, TARGET_STREAMS) != capacity:
                    continue
                batch = [prompts[i % len(prompts)] for i in range(n)]
                reset_peak()
                entry = _median_rate(partial(concurrent_streams, batcher, batch, new_tokens), n * new_tokens, repeat)
                entry.update(peak_gib=peak_gib(), max_batch_size=capacity)
                out["streams"][str(n)] = entry
                logger.info(
                    "%d streams: %.1f tokens/s, peak %.1f GiB", n, entry["tokens_per_s"], entry["peak_gib"] or 0
                )
        finally:
            batcher.close()
    target, single = out["streams"].get(str(TARGET_STREAMS)), out["streams"]["1"]
    if target is not None:
        out["ratio_vs_fast_batch1"] = target["tokens_per_s"] / out["fast_batch1"]["tokens_per_s"]
        out["ratio_vs_batch1"] = target["tokens_per_s"] / single["tokens_per_s"]
    return out


DOC_INTRO = """\
Text decoding of concurrent clients of `serve.py`, the HTTP layer aside: N greedy streams submitted at once to the
server's `TextBatcher` (one `BatchDecoder`: left-padded prefill, then one token for every row per step, from a static
KV cache of `max_batch_size` rows through a step compiled and replayed as a CUDA graph), 7B shape, random bf16
weights, no LoRA, image prompts of four lengths, every stream decoding the same number of tokens. tokens/s = streams
x new tokens / wall time from the first submit to the last reply, prefill included. Batch-1 is measured twice:
`FastDecoder` (`predict.py`'s single request) and the server with one client."""


DOC_FINDINGS = """A step reads every weight once whatever the rows, so tokens/s grow almost linearly with the streams up to 32 (the
step stays near 8 ms); at 64 the attention over 64 rows' caches starts to count. One client of a server still pays
the step of all `max_batch_size` rows (the server's batch-1 row against `FastDecoder`'s): a deployment that mostly
serves one user at a time sets `--max-batch-size` low, one that serves many sets it to `--max-concurrent`. The first
batch of a server waits for the compilation (`compile_s` in the report: 83 s on the H200 here)."""


CPU_LOAD_TEST = """### Through HTTP on a CPU (`tests/serving/test_api_load.py`)

`pytest -m slow tests/serving/test_api_load.py -s` sends 64 concurrent text requests (48-token replies: `ignore_eos`)
to a server of the tiny taught checkpoint through the `openai` client, once with `max_batch_size` 64 and once with 1,
after three rounds of 64 mixed requests (text, streamed text, image->text, text->image) that must end without an error
and without memory growth. On a 2-core x86 CPU (three runs): batched 73.8-83.6 requests/s against 14.4-15.7 one at
a time, 4.7x-5.8x (the test requires 3x). Not shared by batching: each request's HTTP, JSON and client work and the
splicing of its prompt (about 9 ms a request here), and the first request of a burst, decoded alone while the others
are still being prepared (dynamic, not continuous, batching)."""


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def doc_section(report: dict[str, Any]) -> str:
    """docs/benchmarks.md's "Serving" section from a report of this script."""
    lines = [
        "## Serving: concurrent streams (`bench/serve_check.py`)",
        "",
        DOC_INTRO,
        "",
        f"`{report['command']}` on {report['gpu']} (torch {report['torch']}, transformers {report['transformers']}); "
        f"prompts of {', '.join(map(str, report['prompt_tokens']))} tokens, {report['new_tokens']} new tokens each.",
        "",
        "| decoding | streams | server max_batch_size | tokens/s | peak GiB |",
        "|---|---|---|---|---|",
        f"| `FastDecoder` (batch-1) | 1 | - | {_num(report['fast_batch1']['tokens_per_s'])} | - |",
    ]
    for n, entry in report["streams"].items():
        lines.append(
            f"| server (`BatchDecoder`) | {n} | {entry['max_batch_size']} | {_num(entry['tokens_per_s'])} "
            f"| {_num(entry.get('peak_gib'), 1)} |"
        )
    if "ratio_vs_fast_batch1" in report:
        lines += [
            "",
            f"At {TARGET_STREAMS} concurrent streams: {report['ratio_vs_fast_batch1']:.1f}x the compiled batch-1 "
            f"decode and {report['ratio_vs_batch1']:.1f}x the server with one client.",
        ]
    lines += ["", DOC_FINDINGS, "", CPU_LOAD_TEST]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("serve_check.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script, not speed")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per stream (default: 128; smoke: 4)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default: 3; smoke: 1)")
    parser.add_argument(
        "--streams", default=None, help="comma-separated stream counts (default: 8,16,32,64; smoke: 2,3)"
    )
    args = parser.parse_args(argv)
    args.new_tokens = args.new_tokens or (4 if args.smoke else 128)
    args.repeat = args.repeat or (1 if args.smoke else 3)
    args.streams = (
        tuple(int(n) for n in args.streams.split(",")) if args.streams else ((2, 3) if args.smoke else STREAMS)
    )
    if min(args.streams) < 1 or args.new_tokens < 1 or args.repeat < 1:
        parser.error("--streams, --new-tokens and --repeat take numbers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import transformers

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("serve_check: no CUDA device; pass --smoke for the CPU check of the script", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        report = run(SMOKE if args.smoke else FULL, device, args.new_tokens, args.repeat, args.streams, Path(work))
    report.update(
        gpu=torch.cuda.get_device_name() if device == "cuda" else "CPU",
        torch=torch.__version__,
        transformers=transformers.__version__,
        command=_command(argv if argv is not None else sys.argv[1:], "bench/serve_check.py"),
    )
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(doc_section(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
