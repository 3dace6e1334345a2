"""bench/loop_check.py end to end at tiny shapes on CPU: both stages train through the real loop on the length-mix
world, the report holds their numbers, the comparison with an isolated-bench JSON is computed from them, and the
per-step breakdown takes whichever `ms_*` / `host_ms_*` keys the metrics carry; the isolated bench step of each stage
is timed in the same run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.components import SMOKE  # noqa: E402
from bench.loop_check import (  # noqa: E402
    TARGET_FRACTION,
    DefaultCollector,
    _num,
    format_markdown,
    llm_folder,
    main,
    parse_args,
    smoke_shapes,
    summarize,
    use_default_collector,
)
from bench.loop_world import CAPTIONS_NAME, INSTRUCTIONS_NAME  # noqa: E402

STEPS, WARMUP, MICRO = 3, 1, {"stage1": 8, "stage3": 4}


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("loop_check")
    bench = out / "bench.json"
    sections = {key: {"ours": {"tokens_per_s": 1000.0, "samples_per_s": 10.0}} for key in MICRO}
    bench.write_text(json.dumps({"gpu": "another GPU", "sections": sections}))
    argv = [
        "--smoke",
        "--work", str(out / "work"),
        "--out", str(out / "loop_check.json"),
        "--steps", str(STEPS),
        "--warmup", str(WARMUP),
        "--stage1-micro-batch", str(MICRO["stage1"]),
        "--stage3-micro-batch", str(MICRO["stage3"]),
        "--num-workers", "1",
        "--bench-json", str(bench),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "loop_check.json").read_text())
    return report, format_markdown(report)


@pytest.mark.slow  # the module's smoke run trains both stages through the loop (~40 s on 2 cores)
def test_both_stages_train_through_the_loop(smoke_report) -> None:
    report, _ = smoke_report
    assert set(report["stages"]) == {"stage1", "stage3"}
    for key, stage in report["stages"].items():
        assert stage["config"] == f"configs/stage_{key[-1]}.yaml"
        assert stage["steps"] == STEPS + WARMUP and stage["timed_steps"] == STEPS and stage["warmup_steps"] == WARMUP
        assert stage["micro_batch_size"] == MICRO[key]
        assert math.isfinite(stage["final_loss"]) and stage["losses_finite"]
        assert stage["tokens_per_s_median"] > 0 and stage["tokens_per_s_mean"] > 0
        assert stage["samples_per_s"] > 0 and stage["steps_per_s"] > 0 and stage["step_ms"] > 0
        assert isinstance(stage["breakdown_ms"], dict) and "ms_gc" in stage["breakdown_ms"]
        assert stage["peak_memory_gib"] is None  # CPU
        # Only workload and path overrides: no speed switch is set by the script.
        switches = (
            "attn_implementation",
            "packing",
            "compile_layers",
            "prefix_reuse",
            "fused_optimizer",
            "gradient_checkpointing",
        )
        assert not [o for o in stage["overrides"] if any(s in o.split("=")[0] for s in switches)]
        assert not [o for o in stage["overrides"] if "=/" in o]  # paths under --work as the command names it
    assert report["prepare"]["llm"].startswith("work/") and report["prepare"]["imagebind"].startswith("work/")
    assert report["collector"] == "StepGC" and report["smoke_layers"] == SMOKE.llm["num_hidden_layers"]


@pytest.mark.slow  # the module's smoke run trains both stages through the loop (~40 s on 2 cores)
def test_world_follows_the_mix_and_the_cache_is_precomputed(smoke_report) -> None:
    report, _ = smoke_report
    world = report["prepare"]["world"]
    for key, name in (("stage1", CAPTIONS_NAME), ("stage3", INSTRUCTIONS_NAME)):
        assert world[name]["samples"] == MICRO[key] * (STEPS + WARMUP + 2)
    assert 5 <= world[CAPTIONS_NAME]["mean"] <= 40 and world[CAPTIONS_NAME]["max"] <= 41
    assert 100 <= world[INSTRUCTIONS_NAME]["median"] <= 1000
    precompute = report["precompute"]
    files = sum(d["files"] for d in precompute["datasets"].values())
    assert files == world[CAPTIONS_NAME]["samples"] + world[INSTRUCTIONS_NAME]["samples"]
    assert precompute["encoded"] == files and precompute["images_per_s"] > 0


@pytest.mark.slow  # the module's smoke run trains both stages through the loop (~40 s on 2 cores)
def test_bench_comparison_and_markdown(smoke_report) -> None:
    """The fraction is taken against the isolated step timed in the same run, and also against --bench-json."""
    report, markdown = smoke_report
    for key, stage in report["stages"].items():
        isolated = report["isolated"][key]
        assert isolated["steps"] == STEPS and isolated["tokens_per_s"] > 0 and isolated["samples_per_s"] > 0
        comparison = report["bench"][key]
        assert comparison["fraction"] == pytest.approx(stage["tokens_per_s_median"] / isolated["tokens_per_s"])
        assert comparison["meets_target"] == (comparison["fraction"] >= TARGET_FRACTION)
        from_file = report["bench_file"][key]
        assert from_file["fraction"] == pytest.approx(stage["tokens_per_s_median"] / 1000.0)
        assert f"| {key} | {MICRO[key]} | {STEPS} |" in markdown
        assert f"| {_num(comparison['fraction'], 2)} |" in markdown
    assert report["bench"]["bench_gpu"] == report["gpu"]
    assert "| stage | micro-batch | timed steps | tokens/s median |" in markdown
    assert (
        "Isolated step timed in this run" in markdown and "not this run's GPU" in markdown
    )  # the file came from another


def test_summary_takes_the_breakdown_keys_the_records_carry() -> None:
    records = [
        {"step": s, "loss": 1.0, "tokens_per_s": 100.0 * s, "ms_step": 10.0 * s, "host_ms_data": 1.0, "lr": 1e-4}
        for s in range(1, 5)
    ]
    run = {
        "config": "configs/stage_1.yaml",
        "dataset": CAPTIONS_NAME,
        "micro_batch_size": 4,
        "grad_accum_steps": 2,
        "speed_settings": {},
        "records": records,
        "wall_s": 12.0,
        "peak_memory_gib": None,
        "num_skipped": 0,
        "overrides": [],
    }
    summary = summarize(run, warmup=2)
    assert summary["timed_steps"] == 2 and summary["tokens_per_s_median"] == pytest.approx(350.0)
    assert summary["breakdown_ms"] == {"ms_step": pytest.approx(35.0), "host_ms_data": pytest.approx(1.0)}
    # Step time from the loop's own ms_step (records are written in batches, so their timestamps say nothing).
    assert summary["step_time_source"] == "ms_step" and summary["step_ms"] == pytest.approx(35.0)
    assert summary["samples_per_s"] == pytest.approx(8 / 0.035) and summary["first_step_s"] == pytest.approx(0.01)
    without = summarize({**run, "records": [{k: r[k] for k in ("step", "loss", "tokens_per_s")} for r in records]}, 9)
    assert without["breakdown_ms"] == {} and without["timed_steps"] == 4 and without["warmup_steps"] == 0
    assert without["step_ms"] is None and without["samples_per_s"] is None


def test_smoke_depth_and_its_own_llm_folder(tmp_path: Path) -> None:
    deep = smoke_shapes(32)
    assert deep.llm["num_hidden_layers"] == 32 and SMOKE.llm["num_hidden_layers"] == 2, "SMOKE itself is unchanged"
    assert {k: v for k, v in deep.llm.items() if k != "num_hidden_layers"} == {
        k: v for k, v in SMOKE.llm.items() if k != "num_hidden_layers"
    }
    with pytest.raises(SystemExit):
        parse_args(["--smoke", "--smoke-layers", "0"])
    folders = {llm_folder(tmp_path, True, 2), llm_folder(tmp_path, True, 32), llm_folder(tmp_path, False, 2)}
    assert len(folders) == 3, "an LLM kept under --work is never reused at another depth"


def test_default_collector_leaves_pythons_collector_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import nextgpt.training.loop as loop

    monkeypatch.setattr(loop, "StepGC", loop.StepGC)  # restored after the test
    use_default_collector()
    assert loop.StepGC is DefaultCollector
    with loop.StepGC() as collector:
        assert gc.isenabled() and gc.get_freeze_count() == 0
        collector.end_step(1)
