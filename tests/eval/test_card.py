"""The eval card: JSON and Markdown with protocol, checkpoint, code version and every number beside the paper's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from nextgpt.eval.card import build_card, media_thumbnail, write_card
from nextgpt.eval.protocol import load_protocol
from nextgpt.eval.tasks import TaskResult


def test_card_holds_protocol_scores_paper_and_a_grid(tmp_path: Path):
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    (checkpoint / "meta.json").write_text(json.dumps({"stage": 3, "step": 10}))
    cells = [(media_thumbnail("video", np.zeros((4, 8, 8, 3), np.uint8)), "a red circle\n[reply] sure")]
    cells.append((media_thumbnail("audio", np.sin(np.arange(16000) / 5).astype(np.float32)), "a low tone"))
    result = TaskResult("coco_t2i", load_protocol("coco_t2i"), {"FID": 12.5, "CLIP": None}, {"CLIP": "why"}, grid=cells)
    card = build_card([result], checkpoint)
    write_card(card, [result], tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "eval_card.json").read_text())
    task = saved["tasks"]["coco_t2i"]
    assert saved["checkpoint_meta"] == {"stage": 3, "step": 10} and saved["code_version"]
    assert task["scores"] == {"FID": 12.5, "CLIP": None} and task["paper"] == {"FID": 11.18}
    assert task["protocol"]["generation"]["guidance_scale"] == 7.5 and task["protocol"]["num_samples"] == 30000
    markdown = (tmp_path / "eval" / "eval_card.md").read_text()
    assert "| coco_t2i | COCO val2014 (30K captions) (val2014_30k) | 0 | FID | 12.50 | 11.18 |" in markdown
    assert "| CLIP | n/a |" in markdown and "coco_t2i: CLIP: why" in markdown
    grid = Image.open(tmp_path / "eval" / task["grid"])
    assert grid.width >= 2 * 96
