"""Frozen protocols: every shipped YAML validates; bad values and unknown keys fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import ConfigError
from nextgpt.eval.protocol import TASK_NAMES, EvalProtocol, load_protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_DIRS = [REPO_ROOT / "configs" / "eval", REPO_ROOT / "configs" / "eval" / "tiny"]


@pytest.mark.parametrize("protocol_dir", PROTOCOL_DIRS, ids=["real", "tiny"])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_has_a_valid_protocol(protocol_dir: Path, name: str):
    protocol = load_protocol(name, protocol_dir)
    assert isinstance(protocol, EvalProtocol)
    assert protocol.benchmark and protocol.split


def test_real_protocols_carry_the_papers_numbers():
    assert load_protocol("coco_caption").paper["CIDEr"] == 156.7
    assert load_protocol("coco_t2i").paper["FID"] == 11.18
    assert load_protocol("msrvtt_t2v").paper["CLIPSIM"] == 31.97
    assert load_protocol("audiocaps_t2a").paper == {"FD": 23.25, "IS": 8.67}


def test_overrides_and_bad_values_name_the_key():
    assert load_protocol("coco_t2i", overrides=["num_samples=8"]).num_samples == 8
    with pytest.raises(ConfigError, match="num_samples must be >= 0"):
        load_protocol("coco_t2i", overrides=["num_samples=-1"])
    with pytest.raises(ConfigError, match="unknown config key 'guidance'"):
        load_protocol("coco_t2i", overrides=["guidance=2"])
    with pytest.raises(ConfigError, match=r"must contain \{caption\}"):
        load_protocol("coco_t2i", overrides=["prompt=Draw something."])
    with pytest.raises(ConfigError, match="unknown evaluation task 'coco'"):
        load_protocol("coco")
