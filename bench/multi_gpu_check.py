"""Data parallelism on several GPUs of one host, through the shipped stage scripts: loss parity with one GPU at the same
global batch under ZeRO-2 and ZeRO-3, the speed-up, and a ZeRO-3 checkpoint written on several GPUs resumed on one.

Every run is `bash scripts/pretrain_enc.sh` (stage 1, from the feature cache) or `bash scripts/finetune.sh` (stage 3)
with `GPUS` set, on the world `bench/loop_check.py` prepares under --work (a Vicuna-7B-shaped LLM and an
ImageBind-Huge file with random bf16 weights, the bench's length mix; kept on re-runs), and only workload, path and
DeepSpeed-config overrides (and no LoRA dropout, `NO_DROPOUT`). One GPU trains micro-batch m with gradient
accumulation N against N GPUs with micro-batch m and none: the same global batch over the same samples, so the losses
must agree up to bf16 rounding.

- parity: the largest loss difference over the steps (target <= 1e-2), per stage and ZeRO config.
- scaling: the step time of one GPU over that of N (the same global batch a step), so samples/s (stage 1) and
  tokens/s (stage 3) on N GPUs over one GPU; target >= 0.9 N. The first --warmup steps are dropped.
- resume: the N-GPU ZeRO-3 stage-3 run saves at half its steps; one GPU resumes from that checkpoint (DeepSpeed's
  universal conversion) and its losses after it are compared with the N-GPU run's.

    python bench/multi_gpu_check.py --work /tmp/loop_check --out bench/multi_gpu_check.json --gpus 0,1
    python bench/multi_gpu_check.py --smoke --work /tmp/mgpu_smoke --out /tmp/mgpu.json --stages stage3 --zero 3

--smoke runs tiny shapes on the CPU (2 processes, gloo) with the same train.py command under torch.distributed.run,
since the DeepSpeed launcher of the scripts needs GPUs: a check of this script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.loop_check import STAGES, precompute_features, prepare, read_metrics, summarize  # noqa: E402
from bench.run import _command, _save  # noqa: E402

SCRIPTS = {"stage1": "scripts/pretrain_enc.sh", "stage3": "scripts/finetune.sh"}
"""The shipped launch script of each stage."""
ZERO_CONFIGS = {2: "configs/deepspeed/zero2.json", 3: "configs/deepspeed/zero3.json"}
LOSS_TOLERANCE = 1e-2
"""Largest loss difference between N GPUs and one at the same global batch (bf16 sums in another order)."""
NO_DROPOUT = ["model.lora.dropout=0"]
"""Stage 3 runs without LoRA dropout: each process draws its own masks, so with dropout one GPU and N GPUs would
train on differently dropped activations and their losses could not be compared step by step."""
SCALING_TARGET = 0.9
"""Speed-up target as a share of the GPU count."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    key: str, gpus: list[str], out_dir: Path, overrides: list[str], smoke: bool, log: Path
) -> list[dict[str, Any]]:
    """Train one stage on `gpus` through its script (or torch.distributed.run with --smoke); return metrics.jsonl.

    Raises:
        RuntimeError: the run failed (its log file is named).
    """
    config = STAGES[key][0]
    port = str(_free_port())
    if smoke:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(len(gpus))]
        cmd += ["--master_port", port, "train.py", "--config", str(config), f"train.output_dir={out_dir}", *overrides]
        env = dict(os.environ)
    else:
        cmd = ["bash", SCRIPTS[key], *overrides]
        env = {**os.environ, "GPUS": ",".join(gpus), "PORT": port, "OUTPUT_DIR": str(out_dir)}
        # the `deepspeed` launcher of this interpreter's environment, activated or not
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited with {done.returncode}; see {log}")
    return read_metrics(out_dir)


def _overrides(paths: list[str], key: str, micro: int, accum: int, steps: int, zero: int, workers: int) -> list[str]:
    return [
        *paths,
        f"data.datasets=[{STAGES[key][1]}]",
        f"data.num_workers={workers}",
        f"train.max_steps={steps}",
        f"train.micro_batch_size={micro}",
        f"train.grad_accum_steps={accum}",
        f"train.deepspeed_config={REPO_ROOT / ZERO_CONFIGS[zero]}",
        "train.init_from=",
        "train.tensorboard=false",
        *(NO_DROPOUT if key == "stage3" else []),
    ]


def _summary(
    key: str, records: list[dict[str, Any]], micro: int, accum: int, warmup: int, overrides: list[str], wall: float
) -> dict[str, Any]:
    """`bench.loop_check.summarize`'s step time, losses and wall time of one run (the same steady-state definition)."""
    run = {
        "records": records,
        "config": str(STAGES[key][0].relative_to(REPO_ROOT)),
        "dataset": STAGES[key][1],
        "micro_batch_size": micro,
        "grad_accum_steps": accum,
        "speed_settings": {},
        "wall_s": wall,
        "peak_memory_gib": None,
        "num_skipped": None,
        "overrides": overrides,
    }
    out = summarize(run, warmup)
    return {k: out[k] for k in ("steps", "timed_steps", "step_ms", "final_loss", "losses_finite", "wall_s")}


def max_loss_difference(a: list[dict[str, Any]], b: list[dict[str, Any]], after: int = 0) -> tuple[float, int]:
    """Largest |loss_a - loss_b| over the steps both runs logged after step `after`, and how many steps that is."""
    losses_b = {r["step"]: r["loss"] for r in b}
    shared = [(r["loss"], losses_b[r["step"]]) for r in a if r["step"] > after and r["step"] in losses_b]
    return (max(abs(x - y) for x, y in shared) if shared else float("nan")), len(shared)


def run_pair(
    key: str, zero: int, gpus: list[str], args: argparse.Namespace, paths: list[str], save_every: int | None
) -> dict[str, Any]:
    """One stage under one ZeRO config on all of `gpus` and on the first alone, the same global batch."""
    micro = args.stage1_micro_batch if key == "stage1" else args.stage3_micro_batch
    n = len(gpus)
    result: dict[str, Any] = {"stage": key, "zero": zero, "gpus": n, "micro_batch_size": micro}
    runs: dict[str, list[dict[str, Any]]] = {}
    for label, where, accum in (("one", gpus[:1], n), ("many", gpus, 1)):
        out_dir = args.work / "multi_gpu" / f"{key}_zero{zero}_{label}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run each time: nothing resumes from an earlier check
        overrides = _overrides(paths, key, micro, accum, args.steps, zero, args.num_workers)
        overrides += [
            f"train.save_every={save_every if label == 'many' and save_every else 10**6}",
            "train.keep_last=4",
        ]
        start = time.perf_counter()
        runs[label] = launch(key, where, out_dir, overrides, args.smoke, out_dir.with_suffix(".log"))
        result[label] = _summary(key, runs[label], micro, accum, args.warmup, overrides, time.perf_counter() - start)
        result[label]["run_dir"] = out_dir.name
        print(f"[multi-gpu] {key} zero{zero} {label}: {json.dumps(result[label])}", flush=True)
    diff, steps = max_loss_difference(runs["many"], runs["one"])
    one_ms, many_ms = result["one"]["step_ms"], result["many"]["step_ms"]
    result.update(
        max_loss_difference=diff,
        compared_steps=steps,
        parity_ok=diff <= LOSS_TOLERANCE,
        speedup=one_ms / many_ms if one_ms and many_ms else None,
    )
    result["scaling_ok"] = result["speedup"] is not None and result["speedup"] >= SCALING_TARGET * n
    result["_records"] = runs
    return result


def run_resume(pair: dict[str, Any], gpus: list[str], args: argparse.Namespace, paths: list[str], half: int):
    """Resume the N-GPU ZeRO-3 run's step-`half` checkpoint on the first GPU; compare the losses after it."""
    key, micro, n = pair["stage"], pair["micro_batch_size"], pair["gpus"]
    source = args.work / "multi_gpu" / pair["many"]["run_dir"]
    out_dir = args.work / "multi_gpu" / f"{pair['stage']}_zero3_resumed_on_one"
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(".lock"))
    for folder in out_dir.iterdir():  # keep only the checkpoint at `half`: the resume starts there
        if folder.is_dir() and (folder.name == "final" or folder.name.startswith("step-")):
            if folder.name != f"step-{half}":
                shutil.rmtree(folder)
    overrides = _overrides(paths, key, micro, n, args.steps, 3, args.num_workers) + ["train.save_every=1000000"]
    records = launch(key, gpus[:1], out_dir, overrides, args.smoke, out_dir.with_suffix(".log"))
    diff, steps = max_loss_difference(records, pair["_records"]["many"], after=half)
    return {
        "from_gpus": n,
        "checkpoint_step": half,
        "resumed_steps": [r["step"] for r in records if r["step"] > half],
        "max_loss_difference": diff,
        "compared_steps": steps,
        "ok": steps == args.steps - half and diff <= LOSS_TOLERANCE,
    }


def format_markdown(report: dict[str, Any]) -> str:
    """The report as docs/benchmarks.md's "Multi-GPU" section."""
    n = report["gpus"]
    lines = [
        "## Multi-GPU: data parallelism on one host (`bench/multi_gpu_check.py`)",
        "",
        f"`{report['command']}` on {report['gpu']} x {n} (torch {report['torch']}); {report['steps']} steps a run, "
        f"the first {report['warmup']} dropped from the timing. One GPU trains micro-batch m with gradient "
        f"accumulation {n}, {n} GPUs micro-batch m each: the same global batch over the same samples.",
        "",
        f"| stage | ZeRO | micro-batch | step ms, 1 GPU | step ms, {n} GPUs | speed-up | largest loss difference "
        f"| parity <= {LOSS_TOLERANCE:g} | speed-up >= {SCALING_TARGET * n:.1f} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in report["pairs"]:
        speedup = pair["speedup"]
        lines.append(
            f"| {pair['stage']} | {pair['zero']} | {pair['micro_batch_size']} | {pair['one']['step_ms']:.0f} "
            f"| {pair['many']['step_ms']:.0f} | {speedup:.2f}x | {pair['max_loss_difference']:.2e} "
            f"| {'yes' if pair['parity_ok'] else '**no**'} | {'yes' if pair['scaling_ok'] else '**no**'} |"
        )
    resume = report.get("resume")
    if resume:
        lines += [
            "",
            f"Resume: the {n}-GPU ZeRO-3 stage-3 run's checkpoint at step {resume['checkpoint_step']}, continued on one "
            f"GPU for {len(resume['resumed_steps'])} steps: largest loss difference {resume['max_loss_difference']:.2e} "
            f"against the {n}-GPU run ({'ok' if resume['ok'] else '**not ok**'}).",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/loop_check"), help="the loop world and the runs")
    parser.add_argument("--out", type=Path, default=Path("multi_gpu_check.json"))
    parser.add_argument("--gpus", default="0,1", help="GPUs of this host (the first also runs the one-GPU side)")
    parser.add_argument("--stages", default="stage1,stage3", help="comma-separated subset of stage1,stage3")
    parser.add_argument("--zero", default="2,3", help="comma-separated ZeRO stages (2, 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps a run (default 24; smoke 4)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped from the timing (default 4; smoke 1)")
    parser.add_argument("--stage1-micro-batch", type=int, default=32)
    parser.add_argument("--stage3-micro-batch", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 CPU processes: checks the script")
    args = parser.parse_args(argv)
    args.gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.zero = [int(z) for z in args.zero.split(",") if z.strip()]
    args.steps = args.steps or (4 if args.smoke else 24)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 4)
    if args.smoke:
        args.stage1_micro_batch, args.stage3_micro_batch, args.num_workers = 2, 2, 0
    if len(args.gpus) < 2:
        parser.error(f"--gpus needs at least two GPUs, got {args.gpus}")
    if [s for s in args.stages if s not in STAGES] or [z for z in args.zero if z not in ZERO_CONFIGS]:
        parser.error(f"--stages takes {list(STAGES)} and --zero {list(ZERO_CONFIGS)}")
    if args.steps < 4 or args.steps % 2:
        parser.error(f"--steps must be even and >= 4 (the resume starts at half), got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and torch.cuda.device_count() < len(args.gpus):
        print(
            f"error: --gpus {','.join(args.gpus)} needs {len(args.gpus)} CUDA GPUs (or pass --smoke)", file=sys.stderr
        )
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    most = max(args.stage1_micro_batch, args.stage3_micro_batch) * len(args.gpus) * (args.steps + 2)
    paths, prepared = prepare(args.work, args.smoke, most, most)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke: numbers mean nothing)",
        "gpus": len(args.gpus),
        "torch": torch.__version__,
        "command": _command(argv if argv is not None else sys.argv[1:], "bench/multi_gpu_check.py"),
        "smoke": args.smoke,
        "steps": args.steps,
        "warmup": args.warmup,
        "prepare": prepared,
        "precompute": precompute_features(paths, args.stages, 32, args.num_workers),
        "pairs": [],
    }
    half = args.steps // 2
    for key in args.stages:
        for zero in args.zero:
            resume_source = key == "stage3" and zero == 3
            pair = run_pair(key, zero, args.gpus, args, paths, half if resume_source else None)
            if resume_source:
                report["resume"] = run_resume(pair, args.gpus, args, paths, half)
            pair.pop("_records")
            report["pairs"].append(pair)
            _save(report, args.out)  # after every pair: a later failure keeps what was measured
    print(format_markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
