"""Config loading: every shipped YAML validates; bad keys and values fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import Config, ConfigError, load_config, save_config
from nextgpt.constants import Modality

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(
    p
    for p in (REPO_ROOT / "configs").rglob("*.yaml")
    if not p.name.startswith("datasets") and "eval" not in p.relative_to(REPO_ROOT / "configs").parts
)
"""Every run config (dataset catalogs are validated by tests/data, evaluation protocols by tests/eval)."""


def test_defaults_are_the_paper_decoder_set():
    cfg = load_config()
    assert isinstance(cfg, Config)
    widths = cfg.model.output_projectors
    assert (widths.image.num_queries, widths.image.out_dim) == (77, 768)
    assert (widths.video.num_queries, widths.video.out_dim) == (77, 1024)
    assert (widths.audio.num_queries, widths.audio.out_dim) == (1, 512)
    assert (
        cfg.model.signal_tokens.num_image,
        cfg.model.signal_tokens.num_video,
        cfg.model.signal_tokens.num_audio,
    ) == (
        4,
        24,
        8,
    )


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_yaml_loads(path: Path):
    assert isinstance(load_config(path), Config)


def test_unknown_key_names_key_and_closest(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  llm:\n    max_lenght: 12\n")
    with pytest.raises(ConfigError, match=r"model\.llm\.max_lenght.*max_length"):
        load_config(bad)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"model\.llm\.max_length must be an integer"):
        load_config(overrides=["model.llm.max_length=long"])
    with pytest.raises(ConfigError, match=r"model\.input_projector\.type must be one of"):
        load_config(overrides=["model.input_projector.type=conv"])


def test_cross_field_check_names_key():
    with pytest.raises(ConfigError, match=r"generation\.top_p must be in"):
        load_config(overrides=["generation.top_p=1.5"])


def test_overrides_beat_yaml_and_types_are_coerced(tiny_cfg_path: Path):
    cfg = load_config(tiny_cfg_path, overrides=["model.llm.max_length=99", "model.encoder.audio_std=9"])
    assert cfg.model.llm.max_length == 99
    assert isinstance(cfg.model.encoder.audio_std, float)
    assert isinstance(cfg.model.llm.model_path, Path)
    assert cfg.model.input_projector.group_num_tokens == (16, 8)
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


def test_inherit_chain_and_round_trip(tmp_path: Path, tiny_cfg_path: Path):
    child = tmp_path / "child.yaml"
    child.write_text(f"inherit: {tiny_cfg_path}\nmodel:\n  llm:\n    max_length: 77\n")
    cfg = load_config(child)
    assert cfg.model.llm.max_length == 77
    assert cfg.model.output_projectors.video.out_dim == 24  # from the parent
    saved = tmp_path / "resolved.yaml"
    save_config(cfg, saved)
    assert load_config(saved) == cfg


def test_missing_file_is_one_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_inherit_loop_bad_yaml_and_bad_override_are_one_line_each(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="inherit loop: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("inherit: missing.yaml\n")
    with pytest.raises(ConfigError, match="inherit names .*missing.yaml, which does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "bad.yaml").write_text("train:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+ is not valid YAML") as info:
        load_config(tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not valid YAML; quote it"):
        load_config(overrides=["train.lr=[1,"])


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nextgpt.config_loader import SHIPPED_CONFIG_DIR, find_config_file

    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped files answer
    for name in ("configs/stage_1.yaml", "stage_1.yaml", "stage_1"):
        assert find_config_file(name) == SHIPPED_CONFIG_DIR / "stage_1.yaml"
    assert load_config("tiny_stage_2").train.stage == 2  # inherits tiny.yaml beside it
    (tmp_path / "configs").mkdir()
    own = tmp_path / "configs" / "stage_1.yaml"
    own.write_text("seed: 7\n")
    assert load_config("configs/stage_1.yaml").seed == 7  # a file of the user's wins
    with pytest.raises(ConfigError, match="config file not found: stage_9"):
        find_config_file("stage_9")


def test_modality_names_match_config_sections():
    cfg = load_config()
    for modality in Modality:
        assert hasattr(cfg.model.output_projectors, modality.value)
        assert hasattr(cfg.model.decoders, modality.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-1", "train.lr must be a finite number > 0, got -1.0"),
        ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
        ("train.lr=0", "train.lr must be a finite number > 0, got 0.0"),
        ("train.micro_batch_size=0", "train.micro_batch_size must be >= 1, got 0"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps must be >= 1, got 0"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.max_steps=0", "train.max_steps must be >= 1 or null"),
        ("train.save_every=0", "train.save_every must be >= 1, got 0"),
        ("train.keep_last=0", "train.keep_last must be >= 1, got 0"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.betas=[0.9,1.0]", "train.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ("train.betas=[0.9]", "train.betas must be two numbers in [0, 1), got [0.9]"),
        ("train.weight_decay=-0.1", "train.weight_decay must be a finite number >= 0, got -0.1"),
        ("train.grad_clip=inf", "train.grad_clip must be a finite number >= 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("train.allow_resume_changes=[micro_batch_size]", "train.allow_resume_changes has unknown keys"),
    ],
)
def test_out_of_range_training_values_fail_when_the_config_loads(override: str, message: str):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_partial_section_keeps_its_fields_own_defaults():
    """`decoders.video: {pipeline_path: ...}` must keep ZeroScope's 320x576 and audio's guidance 2.5 (the field
    defaults), not the bare DecoderConfig defaults."""
    cfg = load_config(overrides=["model.decoders.video.pipeline_path=/v", "model.decoders.audio.num_inference_steps=9"])
    assert (cfg.model.decoders.video.height, cfg.model.decoders.video.width) == (320, 576)
    assert cfg.model.decoders.audio.guidance_scale == 2.5 and cfg.model.decoders.audio.num_inference_steps == 9
    assert cfg.model.output_projectors.audio.out_dim == 512
    base = load_config("configs/base.yaml")
    assert base.model.decoders.audio.guidance_scale == 2.5 and base.model.decoders.video.num_frames == 16
    with pytest.raises(ConfigError, match="unknown config key 'model.foo'$"):
        load_config(overrides=["model.foo=1"])  # no far-fetched "did you mean"
