"""The GPU benchmark suite: naive baseline vs the project's fast paths, same run, same GPU.

Builds Vicuna-7B, ImageBind-Huge, SD-1.5, ZeroScope and AudioLDM-L shaped components with random weights and measures
each section's naive and ours numbers back to back; prints a table, writes the JSON and docs/benchmarks.md.

    python bench/run.py --out bench/results.json --doc docs/benchmarks.md
    python bench/run.py --out /tmp/smoke.json --doc /tmp/benchmarks.md --smoke          # tiny shapes, CPU, < 2 min
    python bench/run.py --sections stage1,stage3 --out part2.json
    python bench/run.py --from-json part1.json part2.json --out bench/results.json --doc docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.components import FULL, SMOKE, Shapes, build_decoder, build_nextgpt, build_tokenizer  # noqa: E402
from bench.report import build_rows, format_table, write_doc  # noqa: E402
from bench.timing import free_memory, peak_flops  # noqa: E402

logger = logging.getLogger("bench")

SECTIONS = ("decode", "png", "unet", "memory", "unet3d", "stage1", "stage3")
"""In run order: the inference sections share one 7B model, the training sections another."""


def _settings(smoke: bool) -> dict[str, Any]:
    if smoke:
        return dict(
            new_tokens=8, png_tokens=4, png_steps=2, png_fast_steps=2, repeat=1, unet_repeat=2,
            stage1_micro_batch=4, stage3_micro_batch=2, stage_steps=1, stage_warmup=1,
            memory_steps=1,
        )  # fmt: skip
    return dict(
        new_tokens=128, png_tokens=32, png_steps=50, png_fast_steps=25, repeat=3, unet_repeat=10,
        stage1_micro_batch=32, stage3_micro_batch=8, stage_steps=10, stage_warmup=3,
        memory_steps=2,
    )  # fmt: skip


def _environment(device: str, shapes: Shapes, tokenizer) -> dict[str, Any]:
    import diffusers
    import transformers

    from bench.components import count_llm_parameters
    from bench.timing import measure_matmul_peak
    from nextgpt.llm.conversation import system_prefix_ids

    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke run: tiny shapes, numbers mean nothing)"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "shapes": shapes.name,
        "peak_flops": peak_flops(gpu),
        "measured_peak_flops": measure_matmul_peak() if device == "cuda" else None,
        "non_embedding_params": count_llm_parameters(shapes)["non_embedding"],
        "prefix_tokens": len(system_prefix_ids(tokenizer)),
    }


def run_inference_sections(
    wanted: set[str], shapes: Shapes, tokenizer, device: str, work: Path, s: dict[str, Any], cap_gib: float | None
) -> dict[str, Any]:
    """decode, png, unet and memory on one 7B model without LoRA (the merged export a deployment serves)."""
    from bench.decode import fast_decoder, run_decode_section
    from bench.diffusion import run_unet_section
    from bench.inference import run_inference_memory, run_png_naive, run_png_ours
    from nextgpt.config import DecoderConfig
    from nextgpt.decoders.acceleration import apply_decoder_speedups, build_scheduler

    out: dict[str, Any] = {}
    compile_step = device == "cuda"
    feature_dim = shapes.encoder.out_embed_dim
    model = build_nextgpt(shapes, tokenizer, device, lora=False, with_encoder="memory" in wanted, trainable=())
    model.eval()
    fast = None
    if "decode" in wanted:
        out["decode"], fast = run_decode_section(model, feature_dim, s["new_tokens"], compile_step, s["repeat"])
        _log_section("decode", out["decode"])
    if {"png", "unet"} & wanted:
        dtype = "float16" if device == "cuda" else "float32"
        decoder = build_decoder("image", shapes, work, dtype).to(device)
        if "png" in wanted:
            png: dict[str, Any] = {"new_tokens": s["png_tokens"]}
            png["naive"] = run_png_naive(model, decoder, s["png_tokens"], feature_dim, s["png_steps"], s["repeat"])
        if "unet" in wanted:
            out["unet"] = run_unet_section(
                "unet", shapes, device, s["unet_repeat"], compile_unet=device == "cuda", pipeline=decoder.pipeline
            )
            _log_section("unet", out["unet"])
        else:
            switches = dict(channels_last=True, fuse_qkv=True, compile=device == "cuda")
            apply_decoder_speedups(decoder.pipeline, DecoderConfig(**switches))
        if "png" in wanted:
            if fast is None:
                from bench.decode import CACHE_LEN

                fast = fast_decoder(model.llm, CACHE_LEN, compile_step)
            png["ours"] = run_png_ours(model, decoder, fast, s["png_tokens"], feature_dim, s["png_steps"], s["repeat"])
            decoder.pipeline.scheduler = build_scheduler("dpm_solver", decoder.pipeline.scheduler.config)
            png["ours_fast_scheduler"] = run_png_ours(
                model, decoder, fast, s["png_tokens"], feature_dim, s["png_fast_steps"], s["repeat"]
            )
            out["png"] = png
            _log_section("png", png)
        del decoder
        free_memory()
    if "memory" in wanted:
        out["memory"] = run_inference_memory(model, shapes, work, device, cap_gib, s["memory_steps"])
        _log_section("memory", out["memory"])
    del model, fast
    free_memory()
    return out


def run_training_sections(
    wanted: set[str], shapes: Shapes, tokenizer, device: str, s: dict[str, Any], cap_gib: float | None, work: Path
) -> dict[str, Any]:
    """stage1 then stage3: each builds its naive model, then ours from the shipped stage YAML."""
    from bench.training import run_stage1, run_stage3

    out: dict[str, Any] = {}
    common = dict(steps=s["stage_steps"], warmup=s["stage_warmup"], profile=True, work=work)
    if "stage1" in wanted:
        out["stage1"] = run_stage1(shapes, tokenizer, device, micro_batch=s["stage1_micro_batch"], **common)
        _log_section("stage1", out["stage1"])
    if "stage3" in wanted:
        out["stage3"] = run_stage3(
            shapes, tokenizer, device, micro_batch=s["stage3_micro_batch"], cap_gib=cap_gib, **common
        )
        _log_section("stage3", out["stage3"])
    free_memory()
    return out


def _log_section(name: str, result: dict[str, Any]) -> None:
    compact = {k: v for k, v in result.items() if not k.startswith("profile")}
    print(f"[bench] {name}: {json.dumps(compact, default=str)[:1500]}", flush=True)


def merge(paths: list[Path]) -> dict[str, Any]:
    """Results of several partial runs of one machine: later files add sections; the GPU must be the same."""
    merged: dict[str, Any] = {}
    commands: list[str] = []
    for path in paths:
        part = json.loads(Path(path).read_text())
        if merged and part.get("gpu") != merged.get("gpu"):
            raise ValueError(f"{path} was measured on {part.get('gpu')}, the others on {merged.get('gpu')}")
        sections = {**merged.get("sections", {}), **part.get("sections", {})}
        commands.append(part.get("command", ""))
        merged.update(part)
        merged["sections"] = sections
    merged["command"] = "; ".join(c for c in commands if c)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--doc", type=Path, default=None, help="markdown report to write (docs/benchmarks.md)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the suite, measures nothing")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nextgpt_bench"), help="scratch folder (tokenizer)")
    parser.add_argument("--cap-gib", type=float, default=24.0, help="memory cap of the 24 GB rows")
    parser.add_argument(
        "--unet-compile-mode",
        default=None,
        help="inductor mode for the compiled UNets (default: the project's CUDA_COMPILE_MODE)",
    )
    parser.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="run the naive paths without the cuDNN SDPA kernels too (ours never uses them: model.llm.cudnn_attention)",
    )
    parser.add_argument("--from-json", type=Path, nargs="+", help="merge partial results and only write the reports")
    parser.add_argument(
        "--loop-json", type=Path, nargs="+", default=[], help="bench/loop_check.py reports to put in the doc, in order"
    )
    parser.add_argument(
        "--earlier-json", type=Path, help="an earlier run's results: its sections this run lacks go in the doc"
    )
    parser.add_argument(
        "--scale-json",
        type=Path,
        help='bench/scale_check.py\'s report: its "Bigger and smaller" section goes in the doc',
    )
    parser.add_argument(
        "--serve-json", type=Path, help='bench/serve_check.py\'s report: its "Serving" section goes in the doc'
    )
    parser.add_argument(
        "--multi-gpu-json",
        type=Path,
        help='bench/multi_gpu_check.py\'s report: its "Multi-GPU" section goes in the doc',
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.from_json:
        results = merge(args.from_json)
        return _finish(results, args)
    wanted = {name.strip() for name in args.sections.split(",") if name.strip()}
    unknown = wanted - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("the full suite needs a CUDA GPU; use --smoke for the CPU check")
    device = "cuda" if not args.smoke else "cpu"
    shapes = SMOKE if args.smoke else FULL
    settings = _settings(args.smoke)
    if args.unet_compile_mode:
        import nextgpt.decoders.acceleration as acceleration

        acceleration.CUDA_COMPILE_MODE = args.unet_compile_mode
    if args.no_cudnn_attention:
        import bench.training

        bench.training.NAIVE_CUDNN_ATTENTION = False
    torch.manual_seed(0)
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(args.work, shapes)
    results: dict[str, Any] = {
        **_environment(device, shapes, tokenizer),
        "command": _command(argv or sys.argv[1:]),
        "config": {
            **settings,
            "unet_compile_mode": args.unet_compile_mode or "project default",
            "cudnn_sdpa": not args.no_cudnn_attention,
        },
        "sections": {},
    }
    if {"decode", "png", "unet", "memory"} & wanted:
        results["sections"].update(
            run_inference_sections(wanted, shapes, tokenizer, device, args.work, settings, args.cap_gib)
        )
        _save(results, args.out)
    if "unet3d" in wanted:
        from bench.diffusion import run_unet_section

        results["sections"]["unet3d"] = run_unet_section(
            "unet3d", shapes, device, settings["unet_repeat"], compile_unet=device == "cuda"
        )
        _log_section("unet3d", results["sections"]["unet3d"])
        _save(results, args.out)
    if {"stage1", "stage3"} & wanted:
        results["sections"].update(
            run_training_sections(wanted, shapes, tokenizer, device, settings, args.cap_gib, args.work)
        )
    results["wall_s"] = time.perf_counter() - start
    return _finish(results, args)


def _command(argv: list[str], script: str = "bench/run.py") -> str:
    """The command line as the report prints it: output files by name only (no folders of the machine that ran it)."""
    shown, after_out = [], False
    for arg in argv:
        shown.append(Path(arg).name if after_out else arg)
        after_out = arg in (
            "--out", "--doc", "--work", "--bench-json", "--scale-json", "--serve-json", "--multi-gpu-json"
        )  # fmt: skip
    return f"python {script} " + " ".join(shlex.quote(a) for a in shown)


def _save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def _finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    _save(results, args.out)
    if args.doc is not None:
        loop = [(str(path), json.loads(path.read_text())) for path in args.loop_json]
        earlier = json.loads(args.earlier_json.read_text()) if args.earlier_json else None
        sections = []
        if args.scale_json is not None:
            from bench import scale_check

            sections.append(scale_check.doc_section(json.loads(args.scale_json.read_text())))
        if args.serve_json is not None:
            from bench import serve_check

            sections.append(serve_check.doc_section(json.loads(args.serve_json.read_text())))
        if args.multi_gpu_json is not None:
            from bench import multi_gpu_check

            sections.append(multi_gpu_check.format_markdown(json.loads(args.multi_gpu_json.read_text())))
        write_doc(results, args.doc, loop, earlier, sections)
    print(f"GPU: {results.get('gpu')}")
    print(format_table(build_rows(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
