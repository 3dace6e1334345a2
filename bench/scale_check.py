"""Bigger and smaller through the real loop: Vicuna-13B stage 3, QLoRA under a 24 GiB cap, a full fine-tune.

Each variant trains stage 3 with the shipped `configs/stage_3.yaml` through `nextgpt.training.loop.run` (DeepSpeed,
the feature cache, the bench's instruction mix; `bench/loop_check.py` prepares the world) with only the variant's
overrides, and reports tokens/s, peak GPU memory and every step's loss:

- `13b_zero2`, `13b_zero3_offload`: a Vicuna-13B-shaped LLM (random bf16 weights; `configs/presets/llm_vicuna_13b_v1_5.yaml`),
  LoRA, ZeRO-2 and ZeRO-3 with parameters and optimizer offloaded to the CPU.
- `7b_lora`, `7b_lora_ckpt`, `7b_qlora_24g`: the 7B shape with bf16 LoRA (shipped settings; with gradient checkpointing
  and eager layers, `configs/presets/gpu_24gb.yaml`), then QLoRA (`configs/presets/qlora_24gb.yaml`) under a 24 GiB
  memory cap (a 24 GB card); `7b_lora_ckpt` and `7b_qlora_24g` differ only in the 4-bit LLM, so their losses compare.
- `7b_full_zero3`, `7b_full_zero3_offload`: the whole 7B backbone and vocabulary matrices trained (no LoRA) under
  ZeRO-3, on the GPU alone and with parameters and optimizer offloaded to the CPU (the final save is skipped: its
  DeepSpeed state, 81 GB, exceeds the test machine's disk).
- `7b_4bit_inference_16g`: inference, not training: the 7B model built from the same config with
  `model.llm.quantization=4bit` (ImageBind-Huge, projectors), under a 16 GiB cap: encode an image, decode 16 tokens,
  then render an image, a video and an audio clip with SD-1.5 / ZeroScope / AudioLDM-shaped decoders through the
  low-memory decoder pool (`bench.inference.run_inference_memory`).

    python bench/scale_check.py --work /tmp/loop_check --out bench/scale_check.json --variants 13b_zero2,7b_qlora_24g

Writes --out (one entry per variant; a variant that runs out of memory is reported as such) and prints a markdown
table (`format_markdown`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.components import VICUNA_7B, write_vicuna_shaped_llm  # noqa: E402
from bench.loop_check import _free_memory, precompute_features, prepare, run_stage, summarize  # noqa: E402
from bench.run import _command  # noqa: E402
from bench.training import preset_overrides  # noqa: E402

VICUNA_13B: dict[str, int] = dict(
    VICUNA_7B, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40,
)  # fmt: skip
"""LLaMA-13B / Vicuna-13B v1.5 shapes."""

PRESETS = REPO_ROOT / "configs" / "presets"
DEEPSPEED = REPO_ROOT / "configs" / "deepspeed"
FULL_FINETUNE = [
    "train.trainable=[llm,embeddings,input_projector,output_projectors,token_rows]",
    "model.lora.enabled=false",
    "model.llm.gradient_checkpointing=true",
    "model.llm.compile_layers=false",
]


def variants(llm_13b: Path) -> dict[str, dict[str, Any]]:
    """Variant name -> overrides (after the world's paths) and an optional memory cap in GiB."""
    return {
        "13b_zero2": {"overrides": [f"model.llm.model_path={llm_13b}"]},
        "13b_zero3_offload": {
            "overrides": [
                f"model.llm.model_path={llm_13b}",
                f"train.deepspeed_config={DEEPSPEED / 'zero3_offload.json'}",
            ]
        },
        "7b_lora": {"overrides": []},
        "7b_lora_ckpt": {"overrides": [], "preset": PRESETS / "gpu_24gb.yaml"},  # QLoRA's settings in bf16
        "7b_qlora_24g": {"overrides": [], "preset": PRESETS / "qlora_24gb.yaml", "cap_gib": 24.0},
        "7b_full_zero3": {  # the whole state on one H200: 108 GB of weights, gradients, fp32 masters and moments
            "overrides": [*FULL_FINETUNE, f"train.deepspeed_config={DEEPSPEED / 'zero3.json'}"],
            "skip_final_save": True,
            "steps": 4,
            "warmup": 1,
        },
        "7b_full_zero3_offload": {
            "overrides": [*FULL_FINETUNE, f"train.deepspeed_config={DEEPSPEED / 'zero3_offload.json'}"],
            "skip_final_save": True,  # fp32 masters + Adam moments of 7B (84 GB) exceed the test machine's disk
            "steps": 3,  # CPU Adam over 7B parameters takes seconds a step
            "warmup": 1,
        },
    }


INFERENCE_VARIANTS = {"7b_4bit_inference_16g": {"cap_gib": 16.0, "steps": 2}}


def run_quantized_inference(spec: dict[str, Any], paths: list[str], work: Path) -> dict[str, Any]:
    """The 4-bit model through `bench.inference.run_inference_memory` under the variant's cap."""
    from bench.components import FULL
    from bench.inference import run_inference_memory
    from nextgpt.config import load_config
    from nextgpt.model import build_nextgpt

    start = time.perf_counter()
    overrides = [*paths, "model.llm.quantization=4bit", "model.lora.enabled=false", "model.llm.compile_layers=false"]
    cfg = load_config(REPO_ROOT / "configs" / "stage_3.yaml", overrides=overrides)
    entry: dict[str, Any] = {"overrides": overrides[len(paths) :]}
    try:
        model = build_nextgpt(cfg.model).to("cuda").eval()
        entry["llm_weights_gib"] = (
            sum(t.numel() * t.element_size() for t in [*model.llm.parameters(), *model.llm.buffers()]) / 2**30
        )
        entry.update(run_inference_memory(model, FULL, work, "cuda", spec["cap_gib"], spec["steps"]))
        del model
    except Exception as error:  # noqa: BLE001  (reported; the other variants still run)
        entry.update(fits=None, error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        entry["traceback"] = traceback.format_exc()[-3000:]
    entry["wall_s"] = time.perf_counter() - start
    _free_memory()
    return entry


def run_variant(name: str, spec: dict[str, Any], paths: list[str], work: Path, steps: int, warmup: int, micro: int):
    """One variant through the loop, under its memory cap; an out-of-memory error is a result, not a crash."""
    from bench.timing import memory_cap

    start = time.perf_counter()
    overrides = [*(preset_overrides(spec["preset"]) if "preset" in spec else []), *spec["overrides"]]
    entry: dict[str, Any] = {"overrides": overrides, "cap_gib": spec.get("cap_gib")}
    import nextgpt.training.loop as loop

    save = loop._save
    if spec.get("skip_final_save"):
        loop._save = lambda *args, **kwargs: None
        entry["final_save"] = "skipped (its DeepSpeed state exceeds the disk)"
    try:
        with memory_cap(spec.get("cap_gib")):
            steps, warmup = spec.get("steps", steps), spec.get("warmup", warmup)
            run = run_stage("stage3", paths, work / name, steps + warmup, micro, 4, overrides)
        entry.update(summarize(run, warmup))
        entry["losses"] = [r.get("loss") for r in run["records"]]
        entry["fits"] = True
    except torch.OutOfMemoryError as error:
        entry.update(fits=False, error=str(error).splitlines()[0])
    except Exception as error:  # noqa: BLE001  (reported per variant; the others still run)
        entry.update(fits=None, error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        entry["traceback"] = traceback.format_exc()[-3000:]
    finally:
        loop._save = save
    entry["wall_s"] = time.perf_counter() - start
    _free_memory()
    return entry


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"GPU: **{report['gpu']}**; stage 3 through the real loop (`configs/stage_3.yaml` + the variant's overrides), "
        f"micro-batch {report['micro_batch']}, {report['warmup']} warm-up steps dropped.",
        "",
        "| variant | fits | memory cap GiB | tokens/s median | step ms | peak GiB | first loss | last loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    inference = {k: v for k, v in report["variants"].items() if k in INFERENCE_VARIANTS}
    for name, v in report["variants"].items():
        if name in inference:
            continue
        losses = v.get("losses") or [None]
        fits = {True: "yes", False: "no (OOM)", None: "error"}[v.get("fits")]
        lines.append(
            f"| {name} | {fits} | {_num(v.get('cap_gib'))} | {_num(v.get('tokens_per_s_median'))} "
            f"| {_num(v.get('step_ms'))} | {_num(v.get('peak_memory_gib'), 1)} | {_num(losses[0], 3)} "
            f"| {_num(losses[-1], 3)} |"
        )
    for name, v in inference.items():
        peaks = ", ".join(f"{m} {_num(g, 1)}" for m, g in (v.get("per_modality_peak_gib") or {}).items())
        fits = {True: "fits", False: "does not fit", None: "error"}[v.get("fits")]
        lines += ["", f"{name}: {fits} under {_num(v.get('cap_gib'))} GiB; 4-bit LLM weights "
                  f"{_num(v.get('llm_weights_gib'), 1)} GiB; peak after the LLM {_num(v.get('llm_peak_gib'), 1)} GiB, "
                  f"after each decoder: {peaks}; overall {_num(v.get('peak_gib'), 1)} GiB."]  # fmt: skip
    return "\n".join(lines) + "\n"


DOC_WHAT = {
    "7b_lora": "Vicuna-7B shape, LoRA, shipped settings (ZeRO-2, compiled layers)",
    "13b_zero2": "Vicuna-13B shape (`configs/presets/llm_vicuna_13b_v1_5.yaml`), LoRA, ZeRO-2",
    "13b_zero3_offload": "the same under ZeRO-3 with parameters and optimizer on the CPU (`zero3_offload.json`)",
    "7b_lora_ckpt": "7B, bf16 LoRA with gradient checkpointing and eager layers (`gpu_24gb.yaml`)",
    "7b_qlora_24g": "7B QLoRA: the frozen LLM in 4-bit NF4 (`qlora_24gb.yaml`)",
    "7b_full_zero3": "7B full fine-tune: backbone, vocabulary matrices and projectors, ZeRO-3, gradient checkpointing",
}
"""What each training variant is, for the docs table."""

DOC_INTRO = """Stage 3 through the real loop (`nextgpt.training.loop.run`, `configs/stage_3.yaml` + each variant's overrides, the
feature cache, the loop world's instruction mix; random weights at the real shapes), one process per variant, on
NVIDIA H200s (several runs; `bench/scale_check.json` holds each variant's command and every step's loss).
Tokens/s are the median after the warm-up steps; peak is `torch.cuda.max_memory_allocated`."""

DOC_FINDINGS = """- **QLoRA on a 24 GB card** fits at the shipped micro-batch of 4 with 10 GiB to spare under a 24 GiB cap (the 4-bit
  LLM's weights are 3.5 GiB: packed decoder linears and the bf16 vocabulary matrices, `7b_4bit_inference_16g`). At
  micro-batch 8 it runs out of memory under the cap. QLoRA runs at 73% of the bf16 LoRA's tokens/s with the same
  settings (dequantizing every linear in the forward and again in the recomputed forward).
- **QLoRA against bf16 LoRA, the same data and 8 steps** (7B shape): the losses follow each other step for step, e.g.
  step 1 43.19 vs 43.37, step 3 11.19 vs 11.18, step 8 38.36 vs 38.43 (random weights: the values themselves mean
  nothing, their agreement does). On the tiny world (CPU, `tests/training/test_quantized_training.py`) the mean loss
  of the last 4 of 20 steps is 5.35 with QLoRA and 5.29 with bf16 LoRA, 1.2% apart.
- **13B on one H200**: ZeRO-2 fits with 90 GiB to spare; ZeRO-3 with CPU offload halves the GPU memory at an eighth of
  the speed (every step moves the parameters and the Adam update through the host), so it is for GPUs that cannot
  hold the 13B weights, not for an H200.
- **4-bit inference with all three decoders** (`7b_4bit_inference_16g`: the 7B model with `model.llm.quantization=4bit`,
  ImageBind-Huge and the projectors, then SD-1.5-, ZeroScope- and AudioLDM-shaped decoders through the low-memory
  pool, one on the GPU at a time, 2 denoising steps each, a 24 × 320 × 576 video) fits a 16 GiB cap: 5.5 GiB after
  encoding an image and decoding 16 tokens, peaks of 8.0 (image), 11.6 (video) and 11.6 GiB (audio).
- **7B full fine-tune on one H200** (`7b_full_zero3`: all 6.74B parameters trained, ZeRO-3 without offload, gradient
  checkpointing, micro-batch 8): 1.05 s a step (forward 403 ms, backward 447 ms, optimizer 200 ms), 1,978 tokens/s,
  peak 118.2 GiB of the 139 GiB: the 108 GB of bf16 weights and gradients, fp32 masters and both Adam moments, plus
  activations. Its final save was skipped: the DeepSpeed state (81 GB of fp32 masters and moments) exceeds the test
  machine's 64 GB disk; the tiny full fine-tune's save, merge and predict run in CI
  (`tests/training/test_full_finetune.py`). With CPU offload (`7b_full_zero3_offload`) the process was killed when
  the machine's 128 GB of host RAM ran out (those 81 GB on the CPU beside the loaded model and DeepSpeed's pinned
  buffers): offload needs a host with more memory. Not measured: N GPUs (no multi-GPU machine was available)."""
"""The analysis of `bench/scale_check.json` (the run on record), written by hand from its numbers."""


def doc_section(report: dict[str, Any]) -> str:
    """docs/benchmarks.md's "Bigger and smaller" section from a combined report (`bench/scale_check.json`)."""
    lines = ["## Bigger and smaller (`bench/scale_check.py`)", "", DOC_INTRO, "",
             "| variant | what | micro-batch | memory cap | tokens/s | step ms | peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, what in DOC_WHAT.items():
        v = report["variants"].get(name)
        if not v or not v.get("fits"):
            continue
        cap = f"{_num(v.get('cap_gib'))} GiB" if v.get("cap_gib") else "-"
        lines.append(
            f"| `{name}` | {what} | {v.get('micro_batch', report.get('micro_batch'))} | {cap} "
            f"| {_num(v.get('tokens_per_s_median'))} | {_num(v.get('step_ms'))} | {_num(v.get('peak_memory_gib'), 1)} |"
        )
    return "\n".join([*lines, "", DOC_FINDINGS]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/loop_check"), help="prepared inputs and runs")
    parser.add_argument("--out", type=Path, default=Path("scale_check.json"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped first")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument(
        "--variants",
        default="7b_lora,7b_qlora_24g,7b_4bit_inference_16g,7b_full_zero3_offload,13b_zero2,13b_zero3_offload",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: run this variant only
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = [*variants(Path("x")), *INFERENCE_VARIANTS]
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {known}")
    return args


def repo_relative(value: Any) -> Any:
    """`value` (a report, nested) with the repository's folder cut from every string: the report names the repo's
    files as a reader's checkout does, not as the machine that ran it did."""
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    return value.replace(f"{REPO_ROOT}/", "") if isinstance(value, str) else value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU", file=sys.stderr)
        return 2
    from nextgpt.utils.logging import setup_logging

    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    paths, prepared = prepare(args.work, False, args.micro_batch, args.micro_batch * (args.steps + args.warmup + 2))
    llm_13b = args.work / "vicuna-13b-shaped"
    precompute: dict[str, Any] = {}
    if args.one is None:  # the parent prepares everything once; each child only runs its variant
        precompute = precompute_features(paths, ["stage3"], 32, 4)
        if any(v.startswith("13b") for v in args.variants):
            write_vicuna_shaped_llm(llm_13b, VICUNA_13B, "cuda")
        _free_memory()
    specs = variants(llm_13b)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": _command(argv if argv is not None else sys.argv[1:], "bench/scale_check.py"),
        "micro_batch": args.micro_batch,
        "warmup": args.warmup,
        "precompute_s": precompute.get("s"),
        "world": prepared["world"],
        "variants": {},
    }
    if args.one is not None:
        if args.one in INFERENCE_VARIANTS:
            entry = run_quantized_inference(INFERENCE_VARIANTS[args.one], paths, args.work)
        else:
            entry = run_variant(args.one, specs[args.one], paths, args.work, args.steps, args.warmup, args.micro_batch)
        args.out.write_text(json.dumps(repo_relative(entry), indent=2))
        return 0
    for name in args.variants:
        # Each variant in a fresh process: what one leaves allocated (engine, compiled graphs) must not count against
        # the next one's memory cap.
        part = args.work / f"variant-{name}.json"
        part.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--work", str(args.work), "--out", str(part), "--one", name,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch)]  # fmt: skip
        done = subprocess.run(command, check=False)
        report["variants"][name] = (
            json.loads(part.read_text()) if part.is_file() else {"fits": None, "error": f"exit code {done.returncode}"}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))  # after each variant: a time limit keeps what finished
        print(format_markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
