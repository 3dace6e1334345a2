"""The tiny pipeline writer: seeded weights, untouched global RNG, widths as requested."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from nextgpt.constants import Modality
from nextgpt.tiny.decoders import build_tiny_clip_tokenizer, build_tiny_roberta_tokenizer, write_tiny_decoders


def _unet_weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "unet" / "diffusion_pytorch_model.safetensors")


def test_weights_follow_the_seed_and_leave_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = write_tiny_decoders(tmp_path / "a", image_dim=8, video_dim=8, audio_dim=8, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    second = write_tiny_decoders(tmp_path / "b", image_dim=8, video_dim=8, audio_dim=8, seed=0)
    third = write_tiny_decoders(tmp_path / "c", image_dim=8, video_dim=8, audio_dim=8, seed=1)
    for modality in (Modality.IMAGE, Modality.AUDIO):
        a, b, c = (_unet_weights(paths[modality]) for paths in (first, second, third))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_requested_widths_reach_the_configs(tmp_path: Path) -> None:
    paths = write_tiny_decoders(tmp_path, image_dim=40, video_dim=18, audio_dim=20)
    assert set(paths) == {Modality.IMAGE, Modality.VIDEO, Modality.AUDIO}
    assert [p.name for p in paths.values()] == ["sd", "zeroscope", "audioldm"]
    sd_text = json.loads((paths[Modality.IMAGE] / "text_encoder" / "config.json").read_text())
    sd_unet = json.loads((paths[Modality.IMAGE] / "unet" / "config.json").read_text())
    video_text = json.loads((paths[Modality.VIDEO] / "text_encoder" / "config.json").read_text())
    clap = json.loads((paths[Modality.AUDIO] / "text_encoder" / "config.json").read_text())
    audio_unet = json.loads((paths[Modality.AUDIO] / "unet" / "config.json").read_text())
    assert (sd_text["hidden_size"], sd_unet["cross_attention_dim"]) == (40, 40)
    assert video_text["hidden_size"] == 18
    assert (clap["projection_dim"], audio_unet["projection_class_embeddings_input_dim"]) == (20, 20)


def test_tokenizers_are_byte_level(tmp_path: Path) -> None:
    clip = build_tiny_clip_tokenizer(tmp_path / "clip")
    roberta = build_tiny_roberta_tokenizer(tmp_path / "roberta")
    assert (len(clip), clip.model_max_length) == (514, 77)
    assert (len(roberta), roberta.model_max_length) == (261, 77)
    ids = clip("a cat").input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id and len(ids) == 2 + len("a cat") - 1
    assert roberta.decode(roberta("naïve café").input_ids, skip_special_tokens=True) == "naïve café"
