"""Loading decoders from local pipeline folders: conditioning shapes, build-time checks, freezing, devices."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch

from nextgpt.config import DecoderConfig, load_config
from nextgpt.constants import Modality
from nextgpt.decoders import AudioDecoder, ImageDecoder, VideoDecoder, load_decoder
from nextgpt.decoders.cancel import GenerationCancelled
from nextgpt.tiny.decoders import TINY_NUM_MEL_BINS

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_conditioning_shapes_come_from_text_encoders(
    image_decoder: ImageDecoder, video_decoder: VideoDecoder, audio_decoder: AudioDecoder
) -> None:
    assert image_decoder.conditioning_shape == (77, 32)
    assert video_decoder.conditioning_shape == (77, 24)
    assert audio_decoder.conditioning_shape == (16,)
    assert (image_decoder.conditioning_dim, video_decoder.conditioning_dim, audio_decoder.conditioning_dim) == (
        32,
        24,
        16,
    )
    assert audio_decoder.num_mel_bins == TINY_NUM_MEL_BINS


def test_loaded_decoders_are_frozen(
    image_decoder: ImageDecoder, video_decoder: VideoDecoder, audio_decoder: AudioDecoder
) -> None:
    for decoder in (image_decoder, video_decoder, audio_decoder):
        modules = [c for c in decoder.pipeline.components.values() if isinstance(c, torch.nn.Module)]
        assert modules
        assert all(not p.requires_grad for m in modules for p in m.parameters())
        assert all(not m.training for m in modules)


@pytest.mark.parametrize(
    ("modality", "wrong_dim", "right_dim"),
    [(Modality.IMAGE, 768, 32), (Modality.VIDEO, 1024, 24), (Modality.AUDIO, 512, 16)],
)
def test_width_mismatch_fails_at_build_time(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig], modality: Modality, wrong_dim: int, right_dim: int
) -> None:
    message = (
        rf"{modality.value} decoder at .* is conditioned on width {right_dim}, but the output projector produces "
        rf"{wrong_dim}; set model\.output_projectors\.{modality.value}\.out_dim={right_dim}$"
    )
    with pytest.raises(ValueError, match=message):
        load_decoder(modality, tiny_decoder_cfgs[modality], expected_dim=wrong_dim)


def test_missing_folder_names_path_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_pipeline"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*model\.decoders\.video\.pipeline_path"):
        load_decoder(Modality.VIDEO, DecoderConfig(pipeline_path=missing), expected_dim=24)
    with pytest.raises(FileNotFoundError, match=r"got none; set model\.decoders\.image\.pipeline_path"):
        load_decoder(Modality.IMAGE, DecoderConfig(), expected_dim=768)


def test_missing_model_index_names_path_and_key(tmp_path: Path, tiny_decoder_dirs: dict[Modality, Path]) -> None:
    broken = tmp_path / "audioldm"
    shutil.copytree(tiny_decoder_dirs[Modality.AUDIO], broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{broken} has no model_index\.json; set model\.decoders\.audio\.pipeline_path"
    ):
        load_decoder(Modality.AUDIO, DecoderConfig(pipeline_path=broken), expected_dim=16)


def test_wrong_pipeline_class_is_rejected(tiny_decoder_dirs: dict[Modality, Path]) -> None:
    with pytest.raises(ValueError, match=r"expects a StableDiffusionPipeline folder, got TextToVideoSDPipeline"):
        load_decoder(Modality.IMAGE, DecoderConfig(pipeline_path=tiny_decoder_dirs[Modality.VIDEO]), expected_dim=24)


def test_dtype_comes_from_config(tiny_decoder_dirs: dict[Modality, Path]) -> None:
    cfg = DecoderConfig(pipeline_path=tiny_decoder_dirs[Modality.IMAGE], dtype="bfloat16")
    decoder = load_decoder(Modality.IMAGE, cfg, expected_dim=32)
    assert decoder.dtype == torch.bfloat16
    assert decoder.pipeline.unet.dtype == torch.bfloat16
    assert decoder.prepare_conditioning(torch.zeros(1, 77, 32)).dtype == torch.bfloat16


def test_offload_and_to_keep_the_decoder_usable(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    decoder = load_decoder(Modality.AUDIO, tiny_decoder_cfgs[Modality.AUDIO], expected_dim=16, device="cpu")
    assert decoder.offload() is decoder
    assert decoder.device.type == "cpu"
    assert decoder.to("cpu") is decoder
    (wave,) = decoder.generate(torch.randn(1, 16), audio_seconds=0.5)
    assert wave.shape == (8000,)


def test_progress_bar_names_the_decoder_and_counts_steps(
    tiny_decoder_cfgs: dict[Modality, DecoderConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_decoder_cfgs[Modality.IMAGE]
    conditioning = torch.randn(1, 77, 32)
    for show, shown in ((True, True), (False, False), (None, False)):  # None: only on a terminal (capsys is not one)
        decoder = load_decoder(Modality.IMAGE, cfg, expected_dim=32, show_progress=show)
        decoder.generate(conditioning, num_inference_steps=3)
        err = capsys.readouterr().err
        assert bool(re.search(r"image decoder: 100%.*3/3", err)) is shown, (show, err)


def test_cancel_stops_diffusion_after_the_current_step(tiny_decoder_cfgs: dict[Modality, DecoderConfig]) -> None:
    for modality, conditioning in ((Modality.IMAGE, torch.randn(1, 77, 32)), (Modality.AUDIO, torch.randn(1, 16))):
        decoder = load_decoder(modality, tiny_decoder_cfgs[modality], expected_dim=conditioning.shape[-1])
        cancel, steps = threading.Event(), []
        unet_forward = decoder.pipeline.unet.forward

        def counting_forward(*args, _forward=unet_forward, _steps=steps, _cancel=cancel, **kwargs):
            _steps.append(1)
            _cancel.set()  # someone presses Stop during the first step
            return _forward(*args, **kwargs)

        decoder.pipeline.unet.forward = counting_forward
        with pytest.raises(GenerationCancelled):
            decoder.generate(conditioning, num_inference_steps=5, cancel=cancel)
        assert len(steps) == 1, modality  # (guidance batches both halves into one UNet call per step)


def test_generate_defaults_come_from_config(tiny_decoder_dirs: dict[Modality, Path]) -> None:
    cfg = DecoderConfig(
        pipeline_path=tiny_decoder_dirs[Modality.VIDEO], num_inference_steps=1, height=16, width=24, num_frames=3
    )
    decoder = load_decoder(Modality.VIDEO, cfg, expected_dim=24)
    (video,) = decoder.generate(torch.randn(1, 77, 24))
    assert video.shape == (3, 16, 24, 3)


def test_sd2_preset_is_a_valid_overlay() -> None:
    cfg = load_config(REPO_ROOT / "configs" / "presets" / "sd2.yaml")
    assert cfg.model.output_projectors.image.out_dim == 1024
    assert cfg.model.output_projectors.image.num_queries == 77
    assert cfg.model.output_projectors.video.out_dim == 1024
    assert cfg.model.output_projectors.audio.out_dim == 512
    assert cfg.model.decoders.image.pipeline_path is not None


def test_tiny_folders_have_the_real_layout(tiny_decoder_dirs: dict[Modality, Path]) -> None:
    expected = {
        Modality.IMAGE: ("StableDiffusionPipeline", {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}),
        Modality.VIDEO: ("TextToVideoSDPipeline", {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}),
        Modality.AUDIO: ("AudioLDMPipeline", {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "vocoder"}),
    }
    for modality, (class_name, folders) in expected.items():
        root = tiny_decoder_dirs[modality]
        assert json.loads((root / "model_index.json").read_text())["_class_name"] == class_name
        assert folders <= {p.name for p in root.iterdir() if p.is_dir()}
        assert {"vocab.json", "merges.txt"} <= {p.name for p in (root / "tokenizer").iterdir()}
        assert (root / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (root / "text_encoder" / "model.safetensors").is_file()
        scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        assert (scheduler["_class_name"], scheduler["steps_offset"]) == ("DDIMScheduler", 1)


def test_offload_of_float16_weights_is_quiet(
    tiny_decoder_dirs: dict[Modality, Path], caplog: pytest.LogCaptureFixture
) -> None:
    decoder = load_decoder(
        Modality.IMAGE, DecoderConfig(pipeline_path=tiny_decoder_dirs[Modality.IMAGE], dtype="float16"), expected_dim=32
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        decoder.offload()
    assert decoder.pipeline.unet.dtype == torch.float16
    assert "cannot run with `cpu` device" not in caplog.text
