"""bench/serve_check.py on the CPU with tiny shapes: every stream count is measured through the server's batcher,
each stream decodes its full reply, and the docs section shows every measurement of the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_check import doc_section, main  # noqa: E402


def test_smoke_run_measures_every_stream_count_and_the_doc_lists_them(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert main(["--smoke", "--out", str(out), "--streams", "2,3", "--new-tokens", "3"]) == 0
    report = json.loads(out.read_text())
    assert set(report["streams"]) == {"1", "2", "3"}
    for n, entry in report["streams"].items():
        assert entry["tokens"] == int(n) * 3 and entry["tokens_per_s"] > 0
    assert report["fast_batch1"]["tokens"] == 3 and report["command"].endswith(
        "--out serve.json --streams 2,3 --new-tokens 3"
    )
    rows = [line for line in doc_section(report).splitlines() if line.startswith("| server")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "2", "3"]
    assert "## Serving" in capsys.readouterr().out
