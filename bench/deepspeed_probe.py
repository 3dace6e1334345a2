"""Where the real loop's stage-3 step loses time against the isolated bench step: the same model, batches and optimizer
stepped directly ("isolated", as `bench/run.py` times ours) or through the DeepSpeed engine the loop builds ("engine",
`nextgpt.training.engine.build_engine` with the shipped YAML's resolved DeepSpeed config), in one process per mode.

Per mode it reports tokens/s over the timed steps (queued back to back), the median wall and host time of each phase
(forward, backward, optimizer step) with the GPU synchronised around every phase, and a cProfile of the backward and
optimizer step of three steps (the host work DeepSpeed adds: gradient hooks, norms, copies). `--sync-debug` also runs
one step under `torch.cuda.set_sync_debug_mode("warn")` and lists where the host waited for the GPU.

    python bench/deepspeed_probe.py --work nb --out ds_probe --mode isolated --sync-debug
    python bench/deepspeed_probe.py --work nb --out ds_probe --mode engine

Writes `<out>/<mode>.json`, `<out>/<mode>_cprofile.txt` and, with --sync-debug, `<out>/<mode>_syncs.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.components import FULL, write_vicuna_shaped_llm  # noqa: E402
from bench.run import _command  # noqa: E402
from bench.training import _collate, _ours_items, _pools, build_ours, fit_to_config  # noqa: E402


def _sync() -> None:
    torch.cuda.synchronize()


def _with_zero_stage(cfg, stage: int, out: Path):
    """`cfg` with its DeepSpeed JSON's ZeRO stage replaced (written next to the reports)."""
    import dataclasses

    from nextgpt.config_loader import find_config_file

    ds = json.loads(find_config_file(cfg.train.deepspeed_config, "DeepSpeed config").read_text())
    ds.setdefault("zero_optimization", {})["stage"] = stage
    path = out / f"zero{stage}.json"
    path.write_text(json.dumps(ds, indent=1))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, deepspeed_config=path.resolve()))


def _stepper(mode: str, cfg, model, optimizer, deepspeed_step: bool = False, deepspeed_reduction: bool = False):
    """(forward, backward, optimizer step) of the mode; `deepspeed_step`: the engine keeps DeepSpeed's own gradient
    norm and clip (`nextgpt.training.zero_step` undone); `deepspeed_reduction`: it keeps DeepSpeed's gradient
    reduction on one rank (`nextgpt.training.zero_single` not applied)."""
    if mode == "engine":
        from unittest import mock

        from nextgpt.training.distributed import init_distributed
        from nextgpt.training.engine import build_engine

        init_distributed()
        keep = mock.patch("nextgpt.training.engine.skip_single_rank_reduction", lambda engine: False)
        with keep if deepspeed_reduction else contextlib.nullcontext():
            engine = build_engine(cfg, model, lambda step: 1.0)
        if deepspeed_step:
            for name in ("get_grad_norm_direct", "unscale_and_clip_grads"):
                vars(engine.optimizer).pop(name, None)  # the class's methods again
        print(f"DeepSpeed optimizer: {type(engine.optimizer).__name__}", flush=True)
        return (lambda b: engine(b).loss), engine.backward, engine.step

    def step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return (lambda b: model(b).loss), (lambda loss: loss.backward()), step


def _syncs(forward, backward, step, batch) -> list[str]:
    """Where one step waits for the GPU (PyTorch's sync debug mode, which does not see every synchronising op)."""
    seen: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        seen.append(str(message)[:200] + "\n" + "".join(traceback.format_stack(limit=14)[:-2]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            backward(forward(batch))
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (the 7B-shaped LLM is kept there)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
    parser.add_argument("--mode", choices=("isolated", "engine"), required=True)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--zero-stage", type=int, default=None, help="engine mode: replace the config's ZeRO stage")
    parser.add_argument(
        "--deepspeed-step", action="store_true", help="engine mode: DeepSpeed's own per-tensor gradient norm and clip"
    )
    parser.add_argument(
        "--deepspeed-reduction",
        action="store_true",
        help="engine mode: DeepSpeed's own gradient reduction (hooks on every trainable tensor) on one rank",
    )
    parser.add_argument("--sync-debug", action="store_true", help="list where one step waits for the GPU")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this probe needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    llm_dir = write_vicuna_shaped_llm(args.work / "llm-full", FULL.llm, "cuda")
    cfg, model, collator, optimizer = build_ours(3, llm_dir, FULL, args.work, "cuda")
    _, features = _pools(FULL, args.micro_batch, "cuda")
    items = _ours_items(3, FULL, args.micro_batch * (args.steps + args.warmup), features)(model)
    batches, groups = _collate(fit_to_config(items, 3), args.micro_batch, collator)
    tokens = [sum(len(item["input_ids"]) for item in group) for group in groups]
    batches = [batch.to("cuda") for batch in batches]  # no copy inside the timed steps
    if args.zero_stage is not None:
        cfg = _with_zero_stage(cfg, args.zero_stage, args.out)
    forward, backward, step = _stepper(args.mode, cfg, model, optimizer, args.deepspeed_step, args.deepspeed_reduction)
    name = args.mode if args.zero_stage is None else f"{args.mode}_zero{args.zero_stage}"
    if args.deepspeed_step:
        name += "_deepspeed_step"
    if args.deepspeed_reduction:
        name += "_deepspeed_reduction"
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "mode": name,
        "command": _command(sys.argv[1:], "bench/deepspeed_probe.py"),
    }
    for batch in batches[: args.warmup]:
        backward(forward(batch))
        step()
    _sync()
    if args.sync_debug:
        seen = _syncs(forward, backward, step, batches[args.warmup])
        report["syncs_per_step"] = len(seen)
        (args.out / f"{name}_syncs.txt").write_text(f"{len(seen)} waits\n\n" + "\n=====\n".join(seen))
    _sync()
    timed = batches[args.warmup :]
    start = time.perf_counter()
    for batch in timed:
        backward(forward(batch))
        step()
    _sync()
    elapsed = time.perf_counter() - start
    report["tokens_per_s"] = sum(tokens[args.warmup :]) / elapsed
    report["step_ms"] = elapsed / len(timed) * 1e3
    phases: dict[str, list[float]] = {}
    for batch in timed:
        marks = []
        for fn in ("forward", "backward", "step"):
            _sync()
            begin = time.perf_counter()
            if fn == "forward":
                loss = forward(batch)
            elif fn == "backward":
                backward(loss)
            else:
                step()
            queued = time.perf_counter()
            _sync()
            marks.append((fn, (queued - begin) * 1e3, (time.perf_counter() - begin) * 1e3))
        for fn, host_ms, wall_ms in marks:
            phases.setdefault(f"{fn}_ms", []).append(wall_ms)
            phases.setdefault(f"{fn}_host_ms", []).append(host_ms)
    report["phase_ms"] = {key: statistics.median(values) for key, values in phases.items()}
    profile = cProfile.Profile()
    for batch in timed[:3]:
        loss = forward(batch)
        profile.enable()
        backward(loss)
        step()
        profile.disable()
    _sync()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(45)
    (args.out / f"{name}_cprofile.txt").write_text(text.getvalue())
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
