"""Equivalence with Meta's ImageBind code (PyPI `imagebind-unofficial`) given the same weights and inputs.

The official package `__init__` imports its data module (torchaudio.load, pytorchvideo), so its model modules are
imported under a bare `imagebind` package. The official preprocessing functions are taken from its `data.py` source
(parsed with `ast`, not imported) and run with their real dependencies (torchvision, torchaudio's fbank and
resample, pytorchvideo 0.1.5's decord reader and video transforms). Two pieces cannot run as published here:
`torchaudio.load` needs torchcodec, so files are decoded by our reader; and PyPI's pytorchvideo predates the clip
sampler that ImageBind pins, so the pinned sampler's rule is restated below (its values are checked against
hand-computed times in test_media_transforms.py).

Audio is checked on mono files and on a stereo file whose channels differ and whose clips overlap, where the
official code's channel handling (fbank of channel 0 after subtracting the mean over all channels) and its in-place
centring of views of one shared waveform both change the result.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import io
import logging
import math
import sys
import types
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
import torchaudio
import torchvision.transforms
from PIL import Image
from torch import nn

from nextgpt.config import ImageBindConfig
from nextgpt.constants import Modality
from nextgpt.encoders.imagebind import ImageBindEncoder
from nextgpt.encoders.media import read_audio
from nextgpt.encoders.transforms import compute_clip_timepoints, load_audio, load_image, load_video
from nextgpt.tiny.imagebind import UNUSED_TOWER_SIZES

OFFICIAL_DATA_NAMES = {
    "DEFAULT_AUDIO_FRAME_SHIFT_MS",
    "waveform2melspec",
    "get_clip_timepoints",
    "load_and_transform_vision_data",
    "load_and_transform_audio_data",
    "load_and_transform_video_data",
    "crop_boxes",
    "uniform_crop",
    "SpatialCrop",
    "NormalizeVideo",
}


def _import_without_package_init(package: str, module: str) -> types.ModuleType:
    """Import `package.module` while registering `package` (and parents) as bare namespaces."""
    parts = package.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
            bare = types.ModuleType(name)
            bare.__path__ = list(spec.submodule_search_locations)
            bare.__spec__ = spec
            sys.modules[name] = bare
            if depth > 1:
                setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], bare)
    return importlib.import_module(f"{package}.{module}")


class PinnedClipSampler:
    """`ConstantClipsPerVideoSampler` as in the pytorchvideo revision ImageBind pins: starts at i * span / (n - 1)."""

    def __init__(self, clip_duration: float, clips_per_video: int) -> None:
        self.clip_duration = Fraction(clip_duration)
        self.clips_per_video = clips_per_video
        self.index = 0

    def __call__(self, last_clip_end_time: Any, video_duration: float, annotation: Any) -> tuple:
        max_start = Fraction(max(video_duration - self.clip_duration, 0))
        step = Fraction(max_start, max(self.clips_per_video - 1, 1))
        start = step * self.index
        self.index += 1
        is_last = self.index >= self.clips_per_video or step * self.index > max_start
        if is_last:
            self.index = 0
        return start, start + self.clip_duration, self.index, 0, is_last


def _load_with_our_reader(path: str) -> tuple[torch.Tensor, int]:
    return read_audio(Path(path))


@pytest.fixture(scope="module")
def official_data() -> dict[str, Any]:
    """The official data.py functions, executed with their real dependencies (see the module docstring)."""
    source_path = Path(importlib.util.find_spec("imagebind").submodule_search_locations[0]) / "data.py"
    tree = ast.parse(source_path.read_text())
    names = lambda node: {getattr(t, "id", None) for t in getattr(node, "targets", [])}  # noqa: E731
    body = [n for n in tree.body if getattr(n, "name", None) in OFFICIAL_DATA_NAMES or names(n) & OFFICIAL_DATA_NAMES]
    decord_video = _import_without_package_init("pytorchvideo.data", "encoded_video_decord")
    pv_transforms = _import_without_package_init("pytorchvideo.transforms", "transforms")

    class EncodedVideo:
        @staticmethod
        def from_path(path: str, decoder: str, decode_audio: bool, **_: Any):
            assert decoder == "decord"
            blob = io.BytesIO(Path(path).read_bytes())  # as pytorchvideo's EncodedVideo.from_path does
            return decord_video.EncodedVideoDecord(blob, video_name=Path(path).name, decode_audio=decode_audio)

    namespace: dict[str, Any] = {
        "torch": torch,
        "nn": nn,
        "math": math,
        "logging": logging,
        "Image": Image,
        "transforms": torchvision.transforms,
        "torchaudio": types.SimpleNamespace(
            load=_load_with_our_reader, functional=torchaudio.functional, compliance=torchaudio.compliance
        ),
        "pv_transforms": pv_transforms,
        "ConstantClipsPerVideoSampler": PinnedClipSampler,
        "EncodedVideo": EncodedVideo,
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), str(source_path), "exec"), namespace)
    missing = OFFICIAL_DATA_NAMES - set(namespace)
    assert not missing, f"official data.py no longer defines {missing}"
    return namespace


@pytest.fixture(scope="module")
def official_model(encoder_cfg: ImageBindConfig) -> nn.Module:
    """Meta's `ImageBindModel` built at the tiny sizes, with the tiny file loaded strictly."""
    imagebind_model = _import_without_package_init("imagebind.models", "imagebind_model")
    unused = {
        f"{tower}_{size}": value
        for tower in ("text", "depth", "thermal", "imu")
        for size, value in UNUSED_TOWER_SIZES.items()
    }
    model = imagebind_model.ImageBindModel(
        kernel_size=(2, encoder_cfg.vision_patch_size, encoder_cfg.vision_patch_size),
        audio_kernel_size=encoder_cfg.audio_patch_size,
        audio_stride=encoder_cfg.audio_patch_stride,
        out_embed_dim=encoder_cfg.out_embed_dim,
        vision_embed_dim=encoder_cfg.vision_embed_dim,
        vision_num_blocks=encoder_cfg.vision_num_blocks,
        vision_num_heads=encoder_cfg.vision_num_heads,
        audio_embed_dim=encoder_cfg.audio_embed_dim,
        audio_num_blocks=encoder_cfg.audio_num_blocks,
        audio_num_heads=encoder_cfg.audio_num_heads,
        audio_num_mel_bins=encoder_cfg.audio_num_mel_bins,
        audio_target_len=encoder_cfg.audio_target_frames,
        **unused,
    )
    model.load_state_dict(torch.load(encoder_cfg.checkpoint_path, weights_only=True), strict=True)
    return model.eval()


def _official_embeddings(model: nn.Module, modality: Modality, inputs: torch.Tensor) -> torch.Tensor:
    tower = "audio" if modality == Modality.AUDIO else "vision"
    with torch.no_grad():
        out = model({tower: inputs})[tower]
    if tower == "audio":
        # The official audio postprocessor multiplies by its logit scale; NExT-GPT (and we) stop after Normalize.
        out = out / model.modality_postprocessors["audio"][1].log_logit_scale.exp()
    return out


def test_official_model_has_exactly_the_tiny_file_layout(official_model: nn.Module, encoder_cfg: ImageBindConfig):
    official = {k: tuple(v.shape) for k, v in official_model.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in torch.load(encoder_cfg.checkpoint_path, weights_only=True).items()}
    assert official == ours


@pytest.mark.numerics
@pytest.mark.parametrize("modality", [Modality.IMAGE, Modality.VIDEO, Modality.AUDIO])
def test_embeddings_equal_official_on_random_inputs(
    official_model: nn.Module, tiny_encoder: ImageBindEncoder, modality: Modality
) -> None:
    gen = torch.Generator().manual_seed(3)
    shape = {
        Modality.IMAGE: (3, 3, 224, 224),
        Modality.VIDEO: (2, 15, 3, 2, 224, 224),
        Modality.AUDIO: (2, 3, 1, 128, 204),
    }[modality]
    inputs = torch.randn(shape, generator=gen)
    torch.testing.assert_close(
        tiny_encoder(modality, inputs), _official_embeddings(official_model, modality, inputs), atol=1e-5, rtol=1e-5
    )


@pytest.mark.numerics
def test_image_preprocessing_equals_official(
    official_data: dict, media_dir: Path, encoder_cfg: ImageBindConfig
) -> None:
    paths = [media_dir / "photo.png", media_dir / "photo.jpg"]
    official = official_data["load_and_transform_vision_data"]([str(p) for p in paths], "cpu")
    ours = torch.stack([load_image(p, encoder_cfg) for p in paths])
    torch.testing.assert_close(ours, official, atol=0, rtol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["tone_long.wav", "tone_short.wav"])
def test_audio_preprocessing_equals_official(
    official_data: dict, media_dir: Path, encoder_cfg: ImageBindConfig, name: str
) -> None:
    official = official_data["load_and_transform_audio_data"]([str(media_dir / name)], "cpu")
    ours = load_audio(media_dir / name, encoder_cfg)[None]
    assert official.shape == ours.shape == (1, 3, 1, 128, 204)
    torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-5)


def _official_clips_centred_on_copies(official_data: dict, path: Path) -> torch.Tensor:
    """The official audio pipeline with one change: each clip is centred on its own copy, so no clip sees the
    in-place shift of an earlier one. Built from the official pieces (reader, resample, sampler, `waveform2melspec`);
    it shows whether a file's clip layout makes the in-place centring matter. (1, clips, 1, mel, frames)."""
    waveform, rate = read_audio(path)
    waveform = torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=16000)  # (C, N) -> (C, M)
    sampler = PinnedClipSampler(clip_duration=2, clips_per_video=3)
    clips = [
        official_data["waveform2melspec"](waveform[:, int(start * 16000) : int(end * 16000)].clone(), 16000, 128, 204)
        for start, end in official_data["get_clip_timepoints"](sampler, waveform.shape[1] / 16000)
    ]
    return ((torch.stack(clips) - -4.268) / 9.138)[None]


@pytest.mark.numerics
def test_stereo_audio_with_overlapping_clips_equals_official(
    official_data: dict,
    official_model: nn.Module,
    tiny_encoder: ImageBindEncoder,
    media_dir: Path,
    encoder_cfg: ImageBindConfig,
) -> None:
    path = media_dir / "stereo_offset.wav"
    waveform, rate = read_audio(path)
    assert waveform.shape[0] == 2 and (waveform[0] - waveform[1]).abs().mean() > 0.1  # the channels differ
    starts = [start for start, _ in compute_clip_timepoints(waveform.shape[1] / rate, 2.0, 3)]
    assert starts == [0, Fraction(1, 4), Fraction(1, 2)]  # 2 s clips 0.25 s apart: each overlaps the previous ones
    official = official_data["load_and_transform_audio_data"]([str(path)], "cpu")
    ours = load_audio(path, encoder_cfg)[None]
    assert official.shape == ours.shape == (1, 3, 1, 128, 204)
    # Both sides run the same float32 operations on the same samples (bitwise equal here); 1e-3 on normalised
    # log-mel values of order 1 only allows for a different summation order in a clip mean, while a wrong channel
    # or centring moves values by more than 0.1 (checked below).
    torch.testing.assert_close(ours, official, atol=1e-3, rtol=0)
    averaged = load_audio(path, dataclasses.replace(encoder_cfg, audio_channel_mode="average"))[None]
    assert (averaged - official).abs().amax() > 0.1
    assert (_official_clips_centred_on_copies(official_data, path) - official).abs().amax() > 0.1
    # Unit-norm float32 embeddings from two implementations of the same tower: 1e-4 covers their kernel orders.
    torch.testing.assert_close(
        tiny_encoder(Modality.AUDIO, ours),
        _official_embeddings(official_model, Modality.AUDIO, official),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.numerics
@pytest.mark.parametrize("channels", [1, 2])
def test_fbank_equals_official_waveform2melspec(
    official_data: dict, encoder_cfg: ImageBindConfig, channels: int
) -> None:
    from nextgpt.encoders.transforms import compute_fbank

    gen = torch.Generator().manual_seed(0)
    # Channel c has DC offset 0.05 + 0.3c, so the mean over all channels differs from channel 0's own mean.
    clip = torch.randn(channels, 30000, generator=gen) * 0.1 + 0.05 + 0.3 * torch.arange(channels)[:, None]
    official = official_data["waveform2melspec"](clip.clone(), 16000, 128, 204)
    torch.testing.assert_close(compute_fbank(clip, 16000, encoder_cfg), official, atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_video_preprocessing_equals_official(
    official_data: dict, media_dir: Path, encoder_cfg: ImageBindConfig
) -> None:
    paths = [media_dir / n for n in ("pan_long.mp4", "pan_short.mp4", "counter.mp4")]
    official = official_data["load_and_transform_video_data"]([str(p) for p in paths], "cpu")
    ours = torch.stack([load_video(p, encoder_cfg) for p in paths])
    assert official.shape == ours.shape == (3, 15, 3, 2, 224, 224)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


@pytest.mark.numerics
def test_end_to_end_on_real_media_equals_official(
    official_data: dict,
    official_model: nn.Module,
    tiny_encoder: ImageBindEncoder,
    media_dir: Path,
    encoder_cfg: ImageBindConfig,
) -> None:
    cases = {
        Modality.IMAGE: (load_image, official_data["load_and_transform_vision_data"], "photo.jpg"),
        Modality.VIDEO: (load_video, official_data["load_and_transform_video_data"], "pan_long.mp4"),
        Modality.AUDIO: (load_audio, official_data["load_and_transform_audio_data"], "tone_long.wav"),
    }
    for modality, (ours_load, official_load, name) in cases.items():
        ours = tiny_encoder(modality, ours_load(media_dir / name, encoder_cfg)[None])
        official = _official_embeddings(official_model, modality, official_load([str(media_dir / name)], "cpu"))
        torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
