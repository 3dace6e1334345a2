"""bench/scale_check.py's report rendering: the docs section lists every variant that ran, with the numbers of the
report it is given; variants that did not fit are left out of the table; unknown variants are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.scale_check import DOC_WHAT, doc_section, format_markdown, parse_args  # noqa: E402


def _report() -> dict:
    variants = {
        "7b_lora": {"fits": True, "micro_batch": 8, "tokens_per_s_median": 1234.4, "step_ms": 10.0,
                    "peak_memory_gib": 20.04, "losses": [3.0, 2.0]},
        "7b_qlora_24g": {"fits": False, "cap_gib": 24.0, "micro_batch": 8, "error": "CUDA out of memory"},
        "13b_zero2": {"fits": True, "micro_batch": 4, "tokens_per_s_median": 777.0, "step_ms": 99.0,
                      "peak_memory_gib": 50.0, "losses": [1.0]},
    }  # fmt: skip
    return {"gpu": "GPU", "micro_batch": 8, "warmup": 1, "variants": variants}


def test_doc_section_has_a_row_per_variant_that_fit_with_its_numbers():
    text = doc_section(_report())
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == [
        f"| `7b_lora` | {DOC_WHAT['7b_lora']} | 8 | - | 1,234 | 10 | 20.0 |",
        f"| `13b_zero2` | {DOC_WHAT['13b_zero2']} | 4 | - | 777 | 99 | 50.0 |",
    ]


def test_the_markdown_summary_marks_out_of_memory_variants():
    text = format_markdown(_report())
    assert "| 7b_qlora_24g | no (OOM) | 24 |" in text and "| 7b_lora | yes | - | 1,234 |" in text


def test_the_report_on_record_renders():
    report = json.loads((REPO_ROOT / "bench" / "scale_check.json").read_text())
    assert all(name in report["variants"] for name in DOC_WHAT)
    assert doc_section(report).count("| `") == sum(1 for n in DOC_WHAT if report["variants"][n].get("fits"))


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variants", "7b_lora,70b"])
    assert "unknown ['70b']" in capsys.readouterr().err
