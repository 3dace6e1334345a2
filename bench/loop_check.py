"""The real training loop at the 7B shape on the bench's length mix: stage 1 and stage 3 as the shipped YAMLs run them.

`bench/run.py` times isolated train steps; this runs `nextgpt.training.loop.run` end to end (data loading from files,
the feature cache, DeepSpeed ZeRO-2, logging, the final save) with `configs/stage_1.yaml` and `configs/stage_3.yaml`
and only workload and path overrides, so the number says how fast the shipped configs train by themselves.

1. Prepare once under --work (kept on re-runs): a Vicuna-7B-shaped LLaMA folder and an ImageBind-Huge `.pth` with
   random weights (speed does not depend on weight values), and a dataset world in the official JSON formats whose
   token counts follow the bench's mix (`bench/loop_world.py`).
2. Precompute the ImageBind feature cache through the project's job (`nextgpt.jobs.feature_cache`, what
   preprocess_features.py runs), timed.
3. Train stage 1 (CC3M-like captions, micro-batch 32) and stage 3 (LLaVA/MosIT-like instructions, micro-batch 8).
4. Time the isolated bench step of the same stage (`bench.training.run_ours`: the shipped YAML's model, collator and
   optimizer stepped directly, as `bench/run.py` measures "ours") in the same process, so both numbers come from one
   GPU and one host (machines differ by about 30% in host speed, and these steps are partly host-bound).
5. Report per stage from metrics.jsonl, after --warmup steps: tokens/s (median, mean), samples/s, the mean of every
   `ms_*` / `host_ms_*` key, peak GPU memory, wall time, final loss, and the fraction of the isolated step's tokens/s
   (target >= 0.80); with --bench-json, also the fraction of that file's `ours` tokens/s.

    python bench/loop_check.py --work /tmp/loop_check --out loop_check.json --bench-json bench/results.json
    python bench/loop_check.py --smoke --work /tmp/loop_smoke --out /tmp/loop_smoke.json   # tiny shapes, CPU, ~1 min

Writes --out (the report), prints its markdown (`format_markdown`), and leaves under --work (about 21 GB at 7B) the
inputs, the world with its feature cache, and each stage's run folder (`runs/stage1/metrics.jsonl`, `final/`).
Under a per-command time limit, `--prepare-only` first, then `--stages stage1` and `--stages stage3` separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.components import FULL, SMOKE, VICUNA_7B, Shapes, write_vicuna_shaped_llm  # noqa: E402
from bench.loop_world import CAPTIONS_NAME, INSTRUCTIONS_NAME, token_length_stats, write_loop_world  # noqa: E402
from bench.run import _command  # noqa: E402

STAGES: dict[str, tuple[Path, str]] = {
    "stage1": (REPO_ROOT / "configs" / "stage_1.yaml", CAPTIONS_NAME),
    "stage3": (REPO_ROOT / "configs" / "stage_3.yaml", INSTRUCTIONS_NAME),
}
"""Report key -> (the shipped stage YAML, the world's dataset it trains on)."""

ISOLATED_HERE = "timed in this run (bench.training.run_ours)"
"""The comparison's source when the isolated step was timed in the same run."""

TARGET_FRACTION = 0.80
"""The loop's tokens/s should reach this share of the isolated bench's `ours` tokens/s."""

SPEED_SETTINGS = (
    "model.llm.attn_implementation",
    "model.llm.compile_layers",
    "model.llm.gradient_checkpointing",
    "model.llm.max_length",
    "data.packing",
    "train.prefix_reuse",
    "train.fused_optimizer",
    "train.precision",
    "train.deepspeed_config",
)
"""Resolved values reported with each stage (what the shipped YAMLs chose; a key the config lacks is left out)."""

ENCODER_SIZES = (
    "out_embed_dim",
    "vision_embed_dim",
    "vision_num_blocks",
    "vision_num_heads",
    "audio_embed_dim",
    "audio_num_blocks",
    "audio_num_heads",
)


def smoke_shapes(layers: int) -> Shapes:
    """The smoke shapes with `layers` decoder layers (host work per step grows with the layer count, so a 32-layer
    smoke run shows the 7B loop's host-side costs, such as garbage collection, on a CPU)."""
    return dataclasses.replace(SMOKE, llm={**SMOKE.llm, "num_hidden_layers": layers})


def llm_folder(work: Path, smoke: bool, smoke_layers: int) -> Path:
    if not smoke:
        return work / "vicuna-7b-shaped"
    return work / ("llm-smoke" if smoke_layers == SMOKE.llm["num_hidden_layers"] else f"llm-smoke-{smoke_layers}l")


class DefaultCollector:
    """Stands in for the loop's `StepGC` under --default-collector: Python's collector left as it is (enabled, with
    its thresholds), so it pauses wherever its counts say, mid-forward included."""

    def __enter__(self) -> DefaultCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def end_step(self, step: int) -> None:
        return None


def use_default_collector() -> None:
    """Run the loop with `DefaultCollector` instead of `StepGC` (the comparison for the loop's collector policy)."""
    import nextgpt.training.loop as loop

    loop.StepGC = DefaultCollector


def prepare(
    work: Path,
    smoke: bool,
    num_captions: int,
    num_instructions: int,
    smoke_layers: int = SMOKE.llm["num_hidden_layers"],
) -> tuple[list[str], dict[str, Any]]:
    """Write the LLM folder, the ImageBind file and the world (each kept when present).

    Returns:
        The path overrides every run and the feature precompute share, and what was prepared (world token stats).
    """
    from nextgpt.config import ImageBindConfig, load_config
    from nextgpt.constants import Modality
    from nextgpt.data.datasets import expected_caption_shapes
    from nextgpt.llm.tokenizer import load_tokenizer, signal_token_ids
    from nextgpt.tiny.imagebind import write_tiny_imagebind

    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    llm_dir = llm_folder(work, smoke, smoke_layers)
    write_vicuna_shaped_llm(llm_dir, smoke_shapes(smoke_layers).llm if smoke else VICUNA_7B, device)
    imagebind = work / ("imagebind_smoke.pth" if smoke else "imagebind_huge_random.pth")
    tiny = load_config(REPO_ROOT / "configs" / "tiny.yaml").model
    encoder_cfg = tiny.encoder if smoke else ImageBindConfig()
    if not imagebind.is_file():
        staging = imagebind.with_name(f".{imagebind.name}.staging")
        write_tiny_imagebind(staging, encoder_cfg)
        staging.replace(imagebind)
    world = work / ("world-smoke" if smoke else "world")
    paths = [
        f"model.llm.model_path={llm_dir}",
        f"model.encoder.checkpoint_path={imagebind}",
        f"data.catalog_path={world / 'datasets.yaml'}",
        f"data.feature_cache_dir={world / 'features'}",
    ]
    if smoke:  # CPU: the tiny encoder and output projectors of configs/tiny.yaml, fp32 everywhere
        paths += [f"model.encoder.{k}={getattr(encoder_cfg, k)}" for k in ENCODER_SIZES]
        for modality in ("image", "video", "audio"):
            sizes = json.dumps(dataclasses.asdict(getattr(tiny.output_projectors, modality)))
            paths.append(f"model.output_projectors.{modality}={sizes}")
        paths += ["train.precision=fp32", "model.llm.dtype=float32", "model.encoder.dtype=float32"]
    cfg = load_config(STAGES["stage3"][0], overrides=paths)
    tokenizer = load_tokenizer(llm_dir, cfg.model.signal_tokens, cfg.model.llm.template)
    signal_ids = signal_token_ids(tokenizer, cfg.model.signal_tokens)
    shape = expected_caption_shapes(cfg.model.output_projectors)[Modality.IMAGE]
    template = cfg.model.llm.template
    catalog = write_loop_world(world, tokenizer, signal_ids, num_captions, num_instructions, shape, template)
    stats = token_length_stats(catalog, tokenizer, signal_ids, cfg.model.llm.max_length, template)
    shown = {"llm": shown_path(str(llm_dir), work), "imagebind": shown_path(str(imagebind), work)}
    prepared = {"s": time.perf_counter() - start, **shown, "world": stats}
    return paths, prepared


def precompute_features(paths: list[str], stages: list[str], batch_size: int, num_workers: int) -> dict[str, Any]:
    """Cache the ImageBind vectors of the stages' datasets with the project's job (cached files are skipped)."""
    from nextgpt.config import load_config
    from nextgpt.data.catalog import load_catalog
    from nextgpt.data.records import load_records
    from nextgpt.encoders.imagebind import load_imagebind
    from nextgpt.jobs.feature_cache import cache_dataset_features

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {"device": device, "batch_size": batch_size, "datasets": {}}
    start = time.perf_counter()
    cfg = load_config(STAGES["stage1"][0], overrides=paths)
    encoder = load_imagebind(cfg.model.encoder, device=device)
    result["load_s"] = time.perf_counter() - start
    catalog = load_catalog(cfg.data.catalog_path)
    encoded, encode_s = 0, 0.0
    for config_path, name in (STAGES[key] for key in stages):
        cfg = load_config(config_path, overrides=paths)  # each stage's own encoder identity (the same in both)
        records = load_records(Path(catalog[name].annotation_path))
        t0 = time.perf_counter()
        report = cache_dataset_features(
            records, catalog[name], name, encoder, Path(cfg.data.feature_cache_dir), batch_size, num_workers
        )
        elapsed = time.perf_counter() - t0
        result["datasets"][name] = {
            "files": report.num_files,
            "encoded": report.num_encoded,
            "already_cached": report.num_already_cached,
            "failures": len(report.failures),
            "s": elapsed,
        }
        encoded, encode_s = encoded + report.num_encoded, encode_s + elapsed
    del encoder
    _free_memory()
    result["encoded"] = encoded
    result["images_per_s"] = encoded / encode_s if encoded else None
    result["s"] = time.perf_counter() - start
    return result


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _speed_settings(cfg) -> dict[str, Any]:
    from nextgpt.config_loader import to_dict

    resolved = to_dict(cfg)
    found = {}
    for dotted in SPEED_SETTINGS:
        node: Any = resolved
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found[dotted] = str(node) if isinstance(node, Path) else node
    return found


def shown_path(text: str, work: Path) -> str:
    """`text` with the --work folder named as the command shows it (its name, not the machine's path)."""
    return text.replace(str(work), work.name)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, one record per step in step order (a step logged twice keeps its last record)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def run_stage(
    key: str, paths: list[str], work: Path, steps: int, micro_batch: int, num_workers: int, extra: list[str] = ()
) -> dict:
    """Train one stage with the shipped YAML and workload/path overrides; return its records and timings."""
    from nextgpt.config import load_config
    from nextgpt.training.loop import run

    config_path, dataset = STAGES[key]
    out_dir = work / "runs" / key
    overrides = [
        *paths,
        f"data.datasets=[{dataset}]",
        f"data.num_workers={num_workers}",
        f"train.max_steps={steps}",
        f"train.micro_batch_size={micro_batch}",
        f"train.output_dir={out_dir}",
        "train.init_from=",
        "train.resume=false",
        "train.save_every=1000000",
        "train.tensorboard=false",
        *extra,
    ]
    cfg = load_config(config_path, overrides=overrides)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    _free_memory()
    return {
        "config": str(config_path.relative_to(REPO_ROOT)),
        "dataset": dataset,
        "micro_batch_size": micro_batch,
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "overrides": [shown_path(o, work) for o in overrides],
        "speed_settings": _speed_settings(cfg),
        "records": read_metrics(out_dir),
        "wall_s": wall,
        "peak_memory_gib": peak,
        "num_skipped": result.num_skipped,
    }


def summarize(run: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Per-stage numbers after dropping `warmup` steps (all steps when the run has no more than that)."""
    records = run["records"]
    drop = warmup if len(records) > warmup else 0
    steady = records[drop:]
    tokens = [r["tokens_per_s"] for r in steady]
    breakdown_keys = sorted({k for r in steady for k in r if k.startswith(("ms_", "host_ms_"))})
    breakdown = {}
    for k in breakdown_keys:
        values = [r[k] for r in steady if isinstance(r.get(k), int | float)]
        if values:
            breakdown[k] = statistics.fmean(values)
    # The loop's own wall time of each step (records are written in batches, so the time between them says nothing).
    step_s = breakdown["ms_step"] / 1e3 if breakdown.get("ms_step") else None
    source = "ms_step" if step_s else None
    samples_per_step = run["micro_batch_size"] * run["grad_accum_steps"]
    losses = [r["loss"] for r in records]
    summary = {k: run[k] for k in ("config", "dataset", "micro_batch_size", "grad_accum_steps", "speed_settings")}
    summary.update(
        steps=len(records),
        warmup_steps=drop,
        timed_steps=len(steady),
        tokens_per_s_median=statistics.median(tokens),
        tokens_per_s_mean=statistics.fmean(tokens),
        step_ms=step_s * 1e3 if step_s else None,
        step_time_source=source,
        steps_per_s=1 / step_s if step_s else None,
        samples_per_s=samples_per_step / step_s if step_s else None,
        breakdown_ms=breakdown,
        first_step_s=records[0]["ms_step"] / 1e3 if records and "ms_step" in records[0] else None,
        wall_s=run["wall_s"],
        peak_memory_gib=run["peak_memory_gib"],
        final_loss=losses[-1],
        losses_finite=all(math.isfinite(x) for x in losses),
        num_skipped=run["num_skipped"],
        overrides=run["overrides"],
    )
    return summary


def run_isolated(
    key: str,
    work: Path,
    steps: int,
    warmup: int,
    micro_batch: int,
    smoke: bool,
    smoke_layers: int = SMOKE.llm["num_hidden_layers"],
) -> dict[str, Any]:
    """The isolated bench step of the stage (`bench.training.run_ours`) on the loop's LLM folder, in this process."""
    from bench.training import run_ours

    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    stage = {"stage1": 1, "stage3": 3}[key]
    llm_dir = llm_folder(work, smoke, smoke_layers)
    shapes = smoke_shapes(smoke_layers) if smoke else FULL
    result = run_ours(stage, shapes, device, micro_batch, steps, warmup, work=work / "isolated", llm_dir=llm_dir)
    _free_memory()
    return result


def compare_with_bench(
    stages: dict[str, dict[str, Any]],
    bench_json: Path | None = None,
    isolated: dict[str, Any] | None = None,
    gpu: str | None = None,
) -> dict[str, Any]:
    """The loop's median tokens/s as a fraction of the isolated step's `ours` tokens/s, per stage: measured in this
    run on `gpu` (`isolated`, per stage key) or read from a bench/run.py results JSON."""
    if isolated is not None:
        results = {"gpu": gpu}
        sections = {key: {"ours": value} for key, value in isolated.items()}
        source = ISOLATED_HERE
    else:
        results = json.loads(bench_json.read_text())
        sections = results.get("sections", {})
        source = str(bench_json)
    comparison: dict[str, Any] = {"bench_json": source, "bench_gpu": results.get("gpu")}
    for key, stage in stages.items():
        ours = (sections.get(key) or {}).get("ours") or {}
        if not ours.get("tokens_per_s"):
            comparison[key] = None
            continue
        fraction = stage["tokens_per_s_median"] / ours["tokens_per_s"]
        comparison[key] = {
            "bench_tokens_per_s": ours["tokens_per_s"],
            "bench_samples_per_s": ours.get("samples_per_s"),
            "fraction": fraction,
            "samples_fraction": (
                stage["samples_per_s"] / ours["samples_per_s"]
                if stage["samples_per_s"] and ours.get("samples_per_s")
                else None
            ),
            "meets_target": fraction >= TARGET_FRACTION,
        }
    return comparison


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_markdown(report: dict[str, Any]) -> str:
    """The report as markdown (docs/benchmarks.md style): one row per stage, then the per-step breakdown."""
    stages, bench = report["stages"], report.get("bench") or {}
    lines = [
        f"GPU: **{report['gpu']}**; the real loop (`nextgpt.training.loop.run`, shipped stage YAMLs), "
        f"{report['warmup']} warm-up steps dropped.",
        "",
        "| stage | micro-batch | timed steps | tokens/s median | tokens/s mean | samples/s | step ms | peak GiB "
        "| final loss | isolated bench tokens/s | fraction | >= 0.80 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in stages.items():
        cmp = bench.get(key) or {}
        met = {True: "yes", False: "no"}.get(cmp.get("meets_target"), "-")
        lines.append(
            f"| {key} | {s['micro_batch_size']} | {s['timed_steps']} | {_num(s['tokens_per_s_median'])} "
            f"| {_num(s['tokens_per_s_mean'])} | {_num(s['samples_per_s'], 1)} | {_num(s['step_ms'])} "
            f"| {_num(s['peak_memory_gib'], 1)} | {_num(s['final_loss'], 3)} | {_num(cmp.get('bench_tokens_per_s'))} "
            f"| {_num(cmp.get('fraction'), 2)} | {met} |"
        )
    keys = sorted({k for s in stages.values() for k in s["breakdown_ms"]})
    if keys:
        lines += ["", "| ms per step (mean) | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(_num(s["breakdown_ms"].get(k), 1) for s in stages.values()) + " |")
    for name, cmp in (("bench", bench), ("bench_file", report.get("bench_file"))):
        if not cmp or (name == "bench_file" and cmp is bench):
            continue
        other = "" if cmp.get("bench_gpu") == report["gpu"] else " (not this run's GPU: the fractions compare two)"
        fractions = ", ".join(f"{key} {_num((cmp.get(key) or {}).get('fraction'), 2)}" for key in stages)
        source = cmp["bench_json"] if cmp["bench_json"] == ISOLATED_HERE else f"from `{cmp['bench_json']}`"
        lines += ["", f"Isolated step {source}, on {cmp.get('bench_gpu')}{other}: {fractions}."]
    skipped = [f"{key} {s['num_skipped']}" for key, s in stages.items() if s["num_skipped"]]
    if skipped:
        lines += ["", "Samples skipped by the loop (too long for max_length, or bad): " + ", ".join(skipped) + "."]
    pre = report["precompute"]
    rate = f"{_num(pre['images_per_s'], 1)} images/s, ImageBind load {_num(pre['load_s'], 1)} s"
    lines += [
        "",
        f"Feature cache precompute ({pre['device']}): {pre['encoded']} images encoded in {_num(pre['s'], 1)} s ({rate}).",
    ]
    for name, w in report["prepare"]["world"].items():
        lines.append(
            f"- {name}: {w['samples']} samples, {w['measured']} mean {_num(w['mean'])} / median {_num(w['median'])} "
            f"(mix: {w['mix']}); {w['over_max_length']} longer than max_length {w['max_length']}"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/loop_check"), help="prepared inputs and runs")
    parser.add_argument("--out", type=Path, default=Path("loop_check.json"))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per stage (default 20; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped first (default 5; smoke 1)")
    parser.add_argument("--stage1-micro-batch", type=int, default=32)
    parser.add_argument("--stage3-micro-batch", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4, help="data.num_workers (and the precompute's)")
    parser.add_argument("--precompute-batch", type=int, default=32, help="images per ImageBind call")
    parser.add_argument("--stages", default="stage1,stage3", help="comma-separated subset of stage1,stage3")
    parser.add_argument("--bench-json", type=Path, default=None, help="a bench/run.py results JSON to compare with")
    parser.add_argument(
        "--override", action="append", default=[], help="extra key=value for both stages (to compare a setting)"
    )
    parser.add_argument(
        "--no-isolated",
        action="store_true",
        help="skip timing the isolated bench step in this run (compare with --bench-json only)",
    )
    parser.add_argument("--prepare-only", action="store_true", help="write the inputs and the feature cache, then stop")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, measures nothing")
    parser.add_argument(
        "--smoke-layers",
        type=int,
        default=SMOKE.llm["num_hidden_layers"],
        help="decoder layers of the smoke LLM (32: the 7B depth, for host-side costs on a CPU)",
    )
    parser.add_argument(
        "--default-collector",
        action="store_true",
        help="train with Python's default garbage collector instead of the loop's StepGC (the comparison)",
    )
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    if args.smoke_layers < 1:
        parser.error(f"--smoke-layers must be >= 1, got {args.smoke_layers}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("error: this check needs a CUDA GPU (or pass --smoke)", file=sys.stderr)
        return 2
    if args.bench_json is not None and not args.bench_json.is_file():
        print(f"error: --bench-json {args.bench_json} does not exist", file=sys.stderr)
        return 2
    from nextgpt.utils.logging import setup_logging

    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    micro = {"stage1": args.stage1_micro_batch, "stage3": args.stage3_micro_batch}
    total_steps = args.steps + args.warmup
    # Enough samples for every step in one epoch (2 spare micro-batches), so no epoch boundary falls in the timing.
    sizes = {k: micro[k] * (total_steps + 2) for k in STAGES}
    paths, prepared = prepare(args.work, args.smoke, sizes["stage1"], sizes["stage3"], args.smoke_layers)
    if args.default_collector:
        use_default_collector()
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke: numbers mean nothing)",
        "torch": torch.__version__,
        "command": _command(argv if argv is not None else sys.argv[1:], "bench/loop_check.py"),
        "smoke": args.smoke,
        "smoke_layers": args.smoke_layers if args.smoke else None,
        "collector": "default (--default-collector)" if args.default_collector else "StepGC",
        "warmup": args.warmup,
        "prepare": prepared,
        "precompute": precompute_features(paths, args.stages, args.precompute_batch, args.num_workers),
        "stages": {},
    }
    if args.prepare_only:
        print(json.dumps({k: report[k] for k in ("prepare", "precompute")}, indent=2))
        return 0
    isolated: dict[str, Any] = {}
    for key in args.stages:
        run = run_stage(key, paths, args.work, total_steps, micro[key], args.num_workers, args.override)
        report["stages"][key] = summarize(run, args.warmup)
        if not args.no_isolated:
            isolated[key] = run_isolated(
                key, args.work, args.steps, args.warmup, micro[key], args.smoke, args.smoke_layers
            )
    if isolated:
        report["isolated"] = isolated
        report["bench"] = compare_with_bench(report["stages"], isolated=isolated, gpu=report["gpu"])
    if args.bench_json is not None:
        report["bench_file"] = compare_with_bench(report["stages"], bench_json=args.bench_json)
        report.setdefault("bench", report["bench_file"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
