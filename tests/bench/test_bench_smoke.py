"""The benchmark suite end to end at tiny shapes on CPU: every section measures a naive and an ours number, the
report's ratios are computed from them, and docs/benchmarks.md-style markdown states the device and the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.report import build_rows  # noqa: E402
from bench.run import SECTIONS, main, merge  # noqa: E402


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    json_path, doc_path = out / "results.json", out / "benchmarks.md"
    argv = ["--smoke", "--out", str(json_path), "--doc", str(doc_path), "--work", str(out / "work")]
    assert main(argv) == 0
    return json.loads(json_path.read_text()), doc_path.read_text()


def test_every_section_has_naive_and_ours_numbers(smoke_run) -> None:
    results, _ = smoke_run
    sections = results["sections"]
    assert set(sections) == set(SECTIONS)
    assert sections["stage1"]["naive"]["samples_per_s"] > 0 and sections["stage1"]["ours"]["samples_per_s"] > 0
    assert sections["stage3"]["naive"]["tokens_per_s"] > 0 and sections["stage3"]["ours"]["tokens_per_s"] > 0
    assert sections["decode"]["naive"]["tokens_per_s"] > 0 and sections["decode"]["ours"]["tokens_per_s"] > 0
    # A decode miss can be explained from the run: ours' call profile (the GPU's kernel time needs CUDA).
    assert "aten::mm" in sections["decode"]["ours"]["profile_host"]
    busy = sections["decode"]["ours"]["device_busy_ms"]
    assert busy is None if not torch.cuda.is_available() else busy >= 0
    for key in ("stage1", "stage3"):
        assert sections[key]["ours"]["gc_ms"] >= 0 and sections[key]["naive"]["gc_full_collections"] >= 0
    for key in ("unet", "unet3d"):
        assert sections[key]["naive"]["median_ms"] > 0 and sections[key]["ours"]["median_ms"] > 0
    for key in ("naive", "ours", "ours_fast_scheduler"):
        assert sections["png"][key]["total_ms"] > 0 and sections["png"][key]["png_bytes"] > 0
    assert sections["memory"]["fits"] is True
    assert sections["stage3"]["ours_capped"]["fits"] is True


@pytest.mark.numerics
def test_ours_really_takes_the_fast_paths(smoke_run) -> None:
    results, _ = smoke_run
    stage1, stage3 = results["sections"]["stage1"], results["sections"]["stage3"]
    # Packing: fewer, longer rows than one padded row per sample; prefix reuse: fewer computed than sample tokens.
    assert stage1["ours"]["rows_per_step"] < stage1["naive"]["rows_per_step"] == stage1["micro_batch"]
    assert stage1["ours"]["computed_tokens_per_s"] < stage1["ours"]["tokens_per_s"]
    assert stage1["naive"]["computed_tokens_per_s"] == pytest.approx(stage1["naive"]["tokens_per_s"])
    # Ours is what the shipped stage YAMLs resolve to, nothing switched on by the bench.
    assert stage1["ours_config"]["data.packing"] and stage1["ours_config"]["train.prefix_reuse"]
    assert stage1["ours_config"]["train.fused_optimizer"] and not stage3["ours_config"]["train.prefix_reuse"]
    assert stage3["naive"]["gradient_checkpointing"] and not stage3["ours_config"]["model.llm.gradient_checkpointing"]
    assert stage3["ours_capped"]["model.llm.gradient_checkpointing"]
    # Stage 3's long samples may not share a row at max_length 512; packing never adds padding.
    assert stage3["ours"]["padding_share"] <= stage3["naive"]["padding_share"]
    # Same samples, same trainable weights and same seed: both paths see the same loss scale.
    assert stage3["ours"]["final_loss"] == pytest.approx(stage3["naive"]["final_loss"], rel=0.2)


def test_ratios_come_from_the_measured_numbers(smoke_run) -> None:
    results, _ = smoke_run
    rows = {(row.section, row.metric): row for row in build_rows(results)}
    stage1 = rows[("stage 1", "samples/s, train step")]
    assert stage1.ratio == pytest.approx(stage1.ours / stage1.naive)
    assert stage1.met is None  # the target is against the naive path without cuDNN attention (GPU only)
    unet = rows[("unet", "SD-1.5 UNet ms / CFG step")]
    assert unet.ratio == pytest.approx(unet.naive / unet.ours)
    assert unet.met == (unet.ratio >= 1.4)
    decode = rows[("decode", "batch-1 tokens/s")]
    assert decode.met == (decode.ours >= 220)
    mfu = rows[("stage 3", "MFU (datasheet peak)")]
    assert mfu.ours == pytest.approx(results["sections"]["stage3"]["ours"]["mfu"])


def test_markdown_states_device_table_and_definitions(smoke_run) -> None:
    results, doc = smoke_run
    assert results["gpu"].startswith("cpu") and f"GPU: **{results['gpu']}**" in doc
    assert "| section | metric | naive | ours | ratio | target | met? |" in doc
    for metric in ("samples/s, train step", "tokens/s", "batch-1 tokens/s", "UNet3D ms / CFG step", "prompt -> PNG"):
        assert metric in doc
    assert "MFU = model FLOPs" in doc and "989 TFLOP/s" in doc
    assert "## Missed targets" in doc and "## Peak GPU memory" in doc


def test_partial_runs_merge_and_refuse_another_gpu(tmp_path: Path, smoke_run) -> None:
    results, _ = smoke_run
    first = {**results, "sections": {"decode": results["sections"]["decode"]}}
    second = {**results, "sections": {"stage1": results["sections"]["stage1"]}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, part in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(part))
    assert set(merge(paths)["sections"]) == {"decode", "stage1"}
    paths[1].write_text(json.dumps({**second, "gpu": "another GPU"}))
    with pytest.raises(ValueError, match="measured on another GPU"):
        merge(paths)
