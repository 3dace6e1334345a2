"""The quickstart's own scripts: nextgpt-make-tiny-world writes a seeded world with held-out entries; the shell
driver parses and is what `make quickstart` runs; its three stages train on every format of the world's catalog."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _make_world_main():
    from nextgpt.cli.make_tiny_world import main

    return main


def test_world_script_is_seeded_and_writes_train_and_heldout_entries(tmp_path: Path):
    main = _make_world_main()
    sizes = ["--num-train", "2", "--num-eval", "1"]
    assert main(["--out", str(tmp_path / "a"), *sizes, "--seed", "3"]) == 0
    assert main(["--out", str(tmp_path / "b"), *sizes, "--seed", "3"]) == 0
    assert main(["--out", str(tmp_path / "c"), *sizes, "--seed", "4"]) == 0
    items = {name: json.loads((tmp_path / name / "metadata.json").read_text())["items"] for name in "abc"}
    assert items["a"] == items["b"] and items["a"] != items["c"]
    assert sorted({(i["modality"], i["split"]) for i in items["a"]}) == sorted(
        (m, s) for m in ("image", "video", "audio") for s in ("train", "eval")
    )
    catalog = (tmp_path / "a" / "datasets.yaml").read_text()
    assert "cc3m_enc_eval:" in catalog and "mosit_instruction:" in catalog


def test_world_script_keeps_an_existing_world_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    main = _make_world_main()
    out = tmp_path / "world"
    assert main(["--out", str(out), "--num-train", "1", "--num-eval", "0"]) == 0
    marker = out / "embed" / "kept.npy"
    marker.write_bytes(b"x")
    assert main(["--out", str(out), "--num-train", "1", "--num-eval", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err and marker.exists()
    assert main(["--out", str(out), "--num-train", "1", "--num-eval", "0", "--overwrite"]) == 0
    assert not marker.exists() and (out / "datasets.yaml").is_file()
    assert main(["--out", str(tmp_path / "bad"), "--num-train", "0"]) == 2


def test_quickstart_driver_parses_and_make_runs_it():
    script = REPO_ROOT / "scripts" / "quickstart.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    makefile = (REPO_ROOT / "Makefile").read_text()
    target = makefile.split("\nquickstart:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/quickstart.sh" in target
    text = script.read_text()
    for entry_point in ("train.py", "merge_lora_weights.py", "predict.py", "preprocess_embeddings.py"):
        assert entry_point in text


def test_every_catalog_format_is_trained_by_a_quickstart_stage(tmp_path: Path):
    from nextgpt.config import load_config
    from nextgpt.data import load_catalog
    from nextgpt.data.records import load_records
    from nextgpt.jobs.caption_cache import record_modalities
    from nextgpt.tiny.data import write_synthetic_world

    catalog = load_catalog(write_synthetic_world(tmp_path / "world", num_train=2, num_eval=0))
    trained = {
        name
        for stage in (1, 2, 3)
        for name in load_config(REPO_ROOT / "configs" / f"tiny_stage_{stage}.yaml").data.datasets
    }
    assert trained == set(catalog)
    # The quickstart caches the caption embeddings of every dataset with generation targets (MosIT included).
    with_targets = {name for name, e in catalog.items() if record_modalities(load_records(e.annotation_path), e)}
    line = next(
        li for li in (REPO_ROOT / "scripts" / "quickstart.sh").read_text().splitlines() if "EMBED_DATASETS=(" in li
    )
    assert set(line.split("(", 1)[1].rstrip(")").split()) == with_targets
    assert {"mosit_instruction", "cc3m_dec", "image_instruction"} <= with_targets
