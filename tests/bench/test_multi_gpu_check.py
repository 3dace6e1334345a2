"""bench/multi_gpu_check.py: its comparisons, its argument checks, and a smoke run on two CPU processes (tiny shapes,
fp32), where one process with gradient accumulation and two without give the same losses and a two-process ZeRO-3
checkpoint resumes on one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.multi_gpu_check import format_markdown, main, max_loss_difference, parse_args  # noqa: E402


def test_loss_difference_covers_only_the_steps_both_runs_logged_after_the_start():
    a = [{"step": s, "loss": loss} for s, loss in [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.5)]]
    b = [{"step": s, "loss": loss} for s, loss in [(2, 4.5), (3, 3.1), (5, 0.0)]]
    assert max_loss_difference(a, b) == (pytest.approx(0.5), 2)
    assert max_loss_difference(a, b, after=2) == (pytest.approx(0.1), 1)


@pytest.mark.parametrize(
    "argv", [["--gpus", "0"], ["--stages", "stage2"], ["--zero", "1"], ["--steps", "5"], ["--steps", "2"]]
)
def test_bad_arguments_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as error:
        parse_args(argv)
    assert error.value.code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_smoke_run_on_two_processes_matches_one_and_resumes_on_one(tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--smoke", "--work", str(tmp_path / "work"), "--out", str(out), "--stages", "stage3", "--zero", "3"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (pair,) = report["pairs"]
    assert (pair["stage"], pair["zero"], pair["gpus"], pair["compared_steps"]) == ("stage3", 3, 2, 4)
    assert pair["max_loss_difference"] < 1e-5 and pair["parity_ok"]  # fp32: the same sums up to rounding
    assert pair["one"]["losses_finite"] and pair["many"]["losses_finite"]
    resume = report["resume"]
    assert resume["resumed_steps"] == [3, 4] and resume["max_loss_difference"] < 1e-5 and resume["ok"]
    table = format_markdown(report)
    assert "| stage3 | 3 | 2 |" in table and "checkpoint at step 2" in table
    assert "## Multi-GPU" in capsys.readouterr().out
