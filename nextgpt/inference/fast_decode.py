"""Batch-1 text decoding, the only one inference uses: a static KV cache and one compiled decode step.

HF `generate` with a dynamic cache spends most of a 7B decode step launching kernels from Python (about 25 tokens/s
on an H100, a tenth of the memory-bandwidth limit). Here the cache is a `transformers.StaticCache` allocated once,
the prompt is prefilled eagerly (on CUDA, replayed as a CUDA graph per prompt length once that length was seen,
`PrefillGraphs`), and every later token goes through one step of fixed shapes (as litgpt's `next_token`): forward,
float32 logits and the greedy token, compiled on CUDA with `torch.compile(fullgraph=True)` as a CUDA graph
(`CUDA_COMPILE_OPTIONS`; eager on CPU). Sampling
draws outside it with HF's logits warpers, so greedy decoding gives HF `generate`'s tokens and seeded sampling draws
the same ones.

    decoder = FastDecoder(model.llm, max_cache_len=1024)          # compiled on CUDA, eager on CPU
    new_ids = decoder.generate(inputs_embeds, max_new_tokens=64, eos_token_ids=[tokenizer.eos_token_id])  # (T,)
    decode_tokens_per_second(model.llm, prompt_len=128, new_tokens=256, fast=True)  # e.g. 180.0
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LogitsProcessorList, StaticCache, TemperatureLogitsWarper, TopPLogitsWarper

from nextgpt.decoders.cancel import raise_if_cancelled

logger = logging.getLogger(__name__)

CACHE_LEN_MULTIPLE = 256
"""`reserve` grows the cache to a multiple of this, so a slightly longer request does not recompile again."""

STOP_CHECK_INTERVAL = 16
"""Tokens decoded on an accelerator between end-of-sequence checks (and streamer updates). A check reads tokens on the
host and so waits for the GPU, which then idles until the next step is queued (about 2 ms for a 7B step on an H100;
checking every 8 tokens cost 4% of the speed). At most this many - 1 steps past the end are computed and discarded.
On the CPU nothing runs ahead of the host, so it checks (and streams) every token."""


CUDA_GRAPH_OPTIONS = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
"""Inductor options of a compiled decode step on CUDA: what `mode="reduce-overhead"` sets (replay as a CUDA graph)
plus coordinate-descent tuning of the block sizes of the kernels inductor generates (norms, rotary, the cache write,
the fused pointwise work between the matmuls). `BatchDecoder`'s step uses these."""

CUDA_COMPILE_OPTIONS = {**CUDA_GRAPH_OPTIONS, "max_autotune": True, "max_autotune_gemm_backends": "TRITON,ATEN"}
"""Inductor options of `FastDecoder`'s batch-1 step on CUDA: `CUDA_GRAPH_OPTIONS` plus autotuned matrix-vector
products (Triton templates timed against cuBLAS, the faster kept). `bench/decode_probe.py` on an H200 (7B shape,
64-token prompt, 256 new tokens, cache of 512; one variant per process): 200 tokens/s with `CUDA_GRAPH_OPTIONS`, 214
with autotuning, 221-223 with autotuning and `DECODE_ATTENTION` (`bench/decode_probe.json`); the first request
(compilation, CUDA-graph capture) takes about 100-130 s instead of about 70-100."""

DECODE_ATTENTION = (SDPBackend.MATH,)
"""sdpa backends of the compiled decode step on CUDA. One query against the static cache: the memory-efficient
kernel (sdpa's pick under a mask) runs one block per head, 32 blocks on a 132-SM GPU, and takes 25 us a layer for a
512-token cache on an H200 (0.8 ms of a 5 ms 7B step); the math form, which inductor fuses into its own reductions
spread over the cache, takes 9 us (`bench/decode_probe.json`, `attention_us`). The same attention up to bf16
rounding: where two logits nearly tie (as with random weights) greedy tokens can part from HF `generate`'s, which
runs the memory-efficient kernel; the CPU tests compare tokens exactly."""


PREFILL_GRAPHS = 16
"""Prompt lengths whose prefill `FastDecoder` keeps as a CUDA graph on CUDA (the least recently used beyond are
dropped). A 7B prefill launches about a thousand kernels from Python: eagerly, a one-token call (prefill + first token)
of a 60-token prompt took 25.9 ms on an H200, replayed as a graph 9.5 ms (`docs/benchmarks.md`, decode). Capturing
costs about one eager prefill plus a synchronisation and a release of cached GPU blocks (what entering
`torch.cuda.graph` does), so a length is captured when it comes a second time: prompts of lengths never seen again
(a chat server's) prefill eagerly at no extra cost, lengths that repeat (a fixed system prompt and template, an
evaluation of same-length items, a benchmark) replay."""


class PrefillGraphs:
    """The eager prefill of each recent prompt length that repeats, captured once as a CUDA graph and replayed.

    A graph reads its prompt from a static (1, L, D) buffer and writes the static KV cache exactly as the eager
    prefill does (the same kernels, so the same numbers); its outputs are overwritten by its next replay, so they are
    consumed before the next prefill. All graphs share one memory pool: they never run concurrently. Any failure to
    capture (a model whose forward reads values on the host) turns the graphs off for good, with a warning, and the
    prefill stays eager.

    Args:
        prefill: the eager prefill, (1, L, D) embeddings -> greedy (1,) and scores (1, V); it writes the cache.
        capacity: lengths kept (`PREFILL_GRAPHS`).
    """

    def __init__(self, prefill, capacity: int = PREFILL_GRAPHS):
        self.prefill = prefill
        self.capacity = capacity
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.seen: dict[int, None] = {}  # lengths prefilled eagerly once, oldest first
        self.pool = None
        self.enabled = capacity > 0

    def __call__(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill `inputs_embeds` (1, L, D): eagerly the first time L comes, then through L's graph (captured at
        its second time)."""
        length = inputs_embeds.shape[1]
        entry = self.graphs.pop(length, None)
        if entry is None and self.enabled and self.seen.pop(length, False) is None:
            entry = self._capture(inputs_embeds)
        if entry is None:
            self.seen[length] = None
            while len(self.seen) > 4 * self.capacity:
                self.seen.pop(next(iter(self.seen)))
            return self.prefill(inputs_embeds)
        self.graphs[length] = entry  # most recently used last
        graph, static_embeds, outputs = entry
        static_embeds.copy_(inputs_embeds)
        graph.replay()
        return outputs

    def _capture(self, inputs_embeds: torch.Tensor):
        if len(self.graphs) >= self.capacity:
            self.graphs.pop(next(iter(self.graphs)))
        static_embeds = inputs_embeds.clone()  # (1, L, D)
        graph = torch.cuda.CUDAGraph()
        try:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            # thread_local: CUDA work of other threads (a server's other requests) does not break the capture
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                outputs = self.prefill(static_embeds)
        except Exception as err:  # noqa: BLE001 - any capture failure means: prefill eagerly
            self.enabled = False
            self.graphs.clear()
            logger.warning("text decoding: the prefill cannot run as a CUDA graph (%s); it stays eager", err)
            return None
        return graph, static_embeds, outputs


def prepare_cuda_graph_thread() -> None:
    """Give the calling thread the state inductor's CUDA-graph trees keep per thread, if it has none yet.

    PyTorch creates that state in the thread that imports inductor (and copies it into autograd's threads); up to
    2.11 a compiled step replayed as a CUDA graph from any other thread (the server's text batcher, a Gradio worker)
    fails on an assertion in `cudagraph_trees.get_obj`. Later versions create it on first use, as done here.
    """
    from torch._inductor import cudagraph_trees

    if hasattr(cudagraph_trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    cudagraph_trees.local.tree_manager_containers = {}
    cudagraph_trees.local.tree_manager_locks = defaultdict(threading.Lock)


def _causal_lm(llm: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (its LoRA layers stay in place), or the model itself.

    Calling it directly skips peft's forward-hook context, which only matters for mixed-adapter batches, and keeps
    the compiled graph free of it.
    """
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def compiles_on(device: torch.device, compile: bool | None) -> bool:
    """Whether a decoder on `device` compiles its step: `compile`, or for None only on CUDA (CUDA graphs)."""
    return device.type == "cuda" if compile is None else compile


def build_logits_warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    """The warpers HF `generate(do_sample=True, temperature=..., top_p=..., top_k=0)` applies, in its order.

    Args:
        temperature: > 0 (0 means greedy and needs no warper).
        top_p: nucleus mass in (0, 1]; 1 keeps every token.

    Returns:
        The processor list (empty for temperature 1 and top_p 1, as in HF).
    """
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers


def select_next_token(
    scores: torch.Tensor,
    warpers: LogitsProcessorList | None = None,
    generated: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy (no warpers) or sampled next token, chosen exactly as HF `generate` chooses it.

    The one token selection of text decoding: the compiled step calls it for the greedy token, `FastDecoder.generate`
    for sampled ones (a draw stays outside the compiled graph: inductor would make its own random numbers and could
    round the softmax differently, so seeded sampling would no longer give HF's tokens).

    Args:
        scores: (1, V) float32 logits of the last position.
        warpers: from `build_logits_warpers`; None for greedy.
        generated: (1, T) ids generated so far (what HF passes its processors with `inputs_embeds`); sampling only.
        generator: RNG for sampling; None uses torch's global one, as `generate` does.

    Returns:
        (1,) next token id.
    """
    if warpers is None:
        return torch.argmax(scores, dim=-1)  # (1,)
    probs = nn.functional.softmax(warpers(generated, scores), dim=-1)  # (1, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (1, 1) -> (1,)


class FastDecoder:
    """Batch-1 decoding of one LLM with a reusable static KV cache and a (compiled) decode step.

    The cache is allocated on the first prefill (in the LLM's dtype and device) and zeroed, not reallocated, for
    each later request, so the compiled step's CUDA graph stays valid. Keep one decoder per loaded model: a new
    one recompiles.

    Args:
        llm: a transformers LLaMA-family causal LM, peft-wrapped or merged, in eval mode.
        max_cache_len: prompt + new tokens one request may hold.
        compile: compile the decode step; None compiles on CUDA (CUDA graphs) and not on CPU.
        stop_check_interval: tokens between end-of-sequence checks and streamer updates; None for
            `STOP_CHECK_INTERVAL` off the CPU and 1 on it.
        prefill_graphs: replay the prefill of recent prompt lengths as CUDA graphs (`PrefillGraphs`); None does
            so when the step runs as a CUDA graph (compiled on CUDA).

    Raises:
        ValueError: max_cache_len or stop_check_interval below 1, or prefill_graphs off CUDA.
    """

    def __init__(
        self,
        llm: nn.Module,
        max_cache_len: int,
        compile: bool | None = None,
        stop_check_interval: int | None = None,
        prefill_graphs: bool | None = None,
    ):
        if max_cache_len < 1:
            raise ValueError(f"max_cache_len must be >= 1, got {max_cache_len}")
        if stop_check_interval is not None and stop_check_interval < 1:
            raise ValueError(f"stop_check_interval must be >= 1, got {stop_check_interval}")
        self.llm = llm
        self.causal_lm = _causal_lm(llm)
        self.device = next(self.causal_lm.parameters()).device
        self.compile = compiles_on(self.device, compile)
        if prefill_graphs and self.device.type != "cuda":
            raise ValueError(f"prefill_graphs needs the LLM on CUDA, it is on {self.device}")
        self.prefill_graphs = self.compile and self.device.type == "cuda" if prefill_graphs is None else prefill_graphs
        self.stop_check_interval = stop_check_interval
        self._allocate(max_cache_len)

    def _allocate(self, max_cache_len: int) -> None:
        self.max_cache_len = max_cache_len
        self.cache = StaticCache(config=self.causal_lm.config, max_cache_len=max_cache_len)
        self._step = self._decode_step
        self._cuda_graphs = self.compile and self.device.type == "cuda"
        # A length's first prefill runs eagerly (the very first allocates the cache and initialises the kernels that
        # a capture then records).
        self._prefill_graphs = PrefillGraphs(self._prefill_forward) if self.prefill_graphs else None
        if self.compile:
            # CUDA graphs only exist on CUDA; on CPU the default mode still fuses the step.
            options = CUDA_COMPILE_OPTIONS if self._cuda_graphs else None
            self._step = torch.compile(self._decode_step, options=options, fullgraph=True)

    def reserve(self, num_tokens: int) -> None:
        """Make room for `num_tokens` (prompt + new), growing the cache if needed (the step then recompiles).

        Args:
            num_tokens: tokens the next request holds.
        """
        if num_tokens <= self.max_cache_len:
            return
        grown = -(-num_tokens // CACHE_LEN_MULTIPLE) * CACHE_LEN_MULTIPLE
        logger.warning("text decoding: growing the static KV cache from %d to %d tokens", self.max_cache_len, grown)
        self._allocate(grown)

    def _decode_step(self, token_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached step of fixed shapes: (1, 1) token at (1, 1) position -> greedy next token (1,) and its (1, V)
        float32 logits (which sampling draws from)."""
        attention = sdpa_kernel(list(DECODE_ATTENTION)) if self._cuda_graphs else contextlib.nullcontext()
        with attention:
            out = self.causal_lm(
                input_ids=token_ids, position_ids=position_ids, past_key_values=self.cache, use_cache=True
            )
        scores = out.logits[:, -1].float()  # (1, 1, V) -> (1, V)
        return select_next_token(scores), scores

    def _prefill(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the prompt into the (reset) cache; returns what a step returns for its last position."""
        self.cache.reset()
        if self._prefill_graphs is not None:
            return self._prefill_graphs(inputs_embeds)
        return self._prefill_forward(inputs_embeds)

    def _prefill_forward(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager prefill into the cache (reset by the caller): (1, L, D) -> greedy (1,), scores (1, V)."""
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]  # (1, L)
        out = self.causal_lm(
            inputs_embeds=inputs_embeds,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        scores = out.logits[:, -1].float()  # (1, 1, V) -> (1, V)
        return select_next_token(scores), scores

    def _check_request(self, inputs_embeds: torch.Tensor, max_new_tokens: int) -> None:
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
            raise ValueError(
                f"text decoding takes one prompt, inputs_embeds (1, L, D), got {tuple(inputs_embeds.shape)}"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        needed = inputs_embeds.shape[1] + max_new_tokens
        if needed > self.max_cache_len:
            raise ValueError(
                f"prompt ({inputs_embeds.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {needed} exceeds the "
                f"static KV cache of {self.max_cache_len}; build the FastDecoder with a larger max_cache_len "
                "(or call reserve) or lower max_new_tokens"
            )
        if inputs_embeds.device != self.device:
            raise ValueError(f"inputs_embeds are on {inputs_embeds.device}, the LLM on {self.device}; move them")

    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_ids: Iterable[int] = (),
        generator: torch.Generator | None = None,
        streamer: Any | None = None,
        cancel: threading.Event | None = None,
    ) -> torch.Tensor:
        """Decode up to `max_new_tokens` after a prompt given as embeddings (media already spliced in).

        Args:
            inputs_embeds: (1, L, D) prompt embeddings in the LLM's dtype and device.
            max_new_tokens: length limit of the reply.
            temperature: 0 for greedy; > 0 samples like HF `generate(do_sample=True, top_k=0)`.
            top_p: nucleus mass when sampling.
            eos_token_ids: ids that end the reply (kept as its last token, as HF does).
            generator: RNG for sampling; None uses torch's global one (seed it with `torch.manual_seed`).
            streamer: an HF streamer receiving the tokens as they are generated (every `stop_check_interval`).
            cancel: checked before every step (a host-side flag: no device sync); when set, decoding stops.

        Returns:
            (T,) int64 new token ids, T <= max_new_tokens.

        Raises:
            ValueError: not one prompt, a prompt + max_new_tokens beyond `max_cache_len`, or another device.
            GenerationCancelled: `cancel` was set.
        """
        self._check_request(inputs_embeds, max_new_tokens)
        raise_if_cancelled(cancel)
        if self._cuda_graphs:
            prepare_cuda_graph_thread()
        interval = self.stop_check_interval or (1 if self.device.type == "cpu" else STOP_CHECK_INTERVAL)
        warpers = build_logits_warpers(temperature, top_p) if temperature > 0 else None
        stop_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=self.device)  # (S,)
        generated = torch.zeros((1, max_new_tokens), dtype=torch.long, device=self.device)  # (1, T_max)
        if streamer is not None:
            streamer.put(generated[:, :0].cpu())  # the (empty) prompt, which streamers skip, as from HF generate
        greedy, scores = self._prefill(inputs_embeds)  # (1,), (1, V)
        position = torch.tensor([[inputs_embeds.shape[1]]], device=self.device)  # (1, 1)
        num_checked = 0
        for step in range(max_new_tokens):
            if warpers is None:
                next_token = greedy
            else:
                next_token = select_next_token(scores, warpers, generated[:, :step], generator)  # (1,)
            generated[:, step] = next_token  # copied out of the step's output buffer, which its next replay reuses
            last = step == max_new_tokens - 1
            if last or (step + 1) % interval == 0:
                stop_end = _stop_end(generated[0, : step + 1], num_checked, stop_ids)
                end = step + 1 if stop_end is None else stop_end
                if streamer is not None:
                    streamer.put(generated[0, num_checked:end].cpu())
                num_checked = end
                if stop_end is not None:  # the steps after the stop id are discarded
                    break
            if last:
                break
            raise_if_cancelled(cancel)
            token_ids = generated[:, step : step + 1].clone()  # (1, 1), a tensor of its own, outside the graph's pool
            # The last step's outputs are consumed: drop them, or the CUDA-graph replay would first copy them away.
            del greedy, scores, next_token
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the next replay may reuse the last one's buffers
            greedy, scores = self._step(token_ids, position)  # (1,), (1, V)
            position = position + 1
        if streamer is not None:
            streamer.end()
        return generated[0, :num_checked]  # (T,)


def _stop_end(tokens: torch.Tensor, start: int, stop_ids: torch.Tensor) -> int | None:
    """Reply length up to and including the first stop id in `tokens[start:]` ((T,) ids); None when there is none.

    This reads the tokens on the host, so it waits for the GPU; callers check every few steps, not every step.
    """
    if stop_ids.numel() == 0:
        return None
    hits = torch.isin(tokens[start:], stop_ids).nonzero()  # (H, 1)
    return start + int(hits[0, 0]) + 1 if hits.shape[0] else None


def decode_tokens_per_second(llm: nn.Module, prompt_len: int, new_tokens: int, fast: bool) -> float:
    """Greedy batch-1 decoding speed of `llm` on a random prompt, warm-up included and excluded from the timing.

    Every run decodes exactly `new_tokens` (end-of-sequence never stops it); the timed run covers the prefill and
    all decode steps, with CUDA synchronised before and after.

    Args:
        llm: a causal LM on its device (peft-wrapped or not).
        prompt_len: prompt tokens.
        new_tokens: tokens to decode.
        fast: FastDecoder (static cache, compiled step on CUDA) instead of HF `generate` with a dynamic cache.

    Returns:
        New tokens per second of the timed run.
    """
    causal_lm = _causal_lm(llm)
    device = next(causal_lm.parameters()).device
    vocab = causal_lm.get_input_embeddings()
    token_ids = torch.randint(0, causal_lm.config.vocab_size, (1, prompt_len), device=device)
    with torch.no_grad():
        inputs_embeds = vocab(token_ids)  # (1, L, D)
    if fast:
        decoder = FastDecoder(llm, max_cache_len=prompt_len + new_tokens)

        def run() -> int:
            return decoder.generate(inputs_embeds, new_tokens).numel()

    else:

        def run() -> int:
            with torch.no_grad():
                out = causal_lm.generate(
                    inputs_embeds=inputs_embeds,
                    attention_mask=torch.ones_like(token_ids),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
            return out.shape[1]

    for _ in range(3 if fast else 1):  # compile, record the CUDA graph, one replay
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    num_tokens = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return num_tokens / (time.perf_counter() - start)
