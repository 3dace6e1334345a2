"""The metric models (FID Inception, CLIP, PANNs CNN14), loaded from local files only, each with its sha256 logged.

Nothing here downloads: every model is read from a path the caller gives, in its published format, through
`torch.load(weights_only=True)` or safetensors. A missing file stops the run with one line naming the path and where
the file comes from (`METRIC_MODEL_SOURCES`).

    inception = load_inception(Path("checkpoints/metrics/pt_inception-2015-12-05-6726825d.pth"))
    features = inception(images)                        # (B, 3, H, W) in [0, 1] -> (B, 2048)
    clip = load_clip(Path("checkpoints/metrics/clip-vit-large-patch14"))
    classifier = load_audio_classifier(Path("checkpoints/metrics/Cnn14_16k_mAP=0.438.pth"))
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from nextgpt.eval.cnn14 import Cnn14, Cnn14Config

logger = logging.getLogger(__name__)

MetricModel = Literal["inception", "clip", "audio_classifier"]
METRIC_MODEL_SOURCES: dict[MetricModel, str] = {
    "inception": "pytorch-fid's FID Inception weights, pt_inception-2015-12-05-6726825d.pth from the pytorch-fid "
    "GitHub releases (v0.1.0)",
    "clip": "a Hugging Face CLIP folder (config.json, model.safetensors, tokenizer and preprocessor files), e.g. "
    "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir <path>`",
    "audio_classifier": "PANNs CNN14 at 16 kHz, Cnn14_16k_mAP=0.438.pth from the PANNs Zenodo record 3987831",
}
INCEPTION_SIZE = 299
"""pytorch-fid resizes every image to 299x299 (bilinear) before the network, as TF's FID graph does."""


def check_metric_model(path: Path, kind: MetricModel) -> Path:
    """The path, if the metric model is there.

    Raises:
        FileNotFoundError: one line naming the path and where the file comes from.
    """
    path = Path(path)
    found = (path / "config.json").is_file() if kind == "clip" else path.is_file()
    if not found:
        what = "CLIP folder (no config.json)" if kind == "clip" else f"{kind.replace('_', ' ')} file"
        raise FileNotFoundError(f"{what} not found: {path}; get {METRIC_MODEL_SOURCES[kind]}")
    return path


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, or of a folder's weight files (sorted by name) for a model folder."""
    path = Path(path)
    files = (
        sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".json"}) if path.is_dir() else [path]
    )
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def describe_metric_model(path: Path, kind: MetricModel) -> dict[str, str]:
    """Check the model is there, log its sha256 and return {"kind", "path", "sha256"} for the eval card."""
    check_metric_model(path, kind)
    digest = sha256_of(path)
    logger.info("metric model %s: %s (sha256 %s)", kind, path, digest)
    return {"kind": kind, "path": str(path), "sha256": digest}


def _fid_inception_network() -> nn.Module:
    """pytorch-fid's FID Inception graph (torchvision Inception3, 1008 classes, FID blocks), weights uninitialised."""
    from pytorch_fid import inception as fid

    network = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    network.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    network.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    network.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    network.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    network.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    network.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    network.Mixed_7b = fid.FIDInceptionE_1(1280)
    network.Mixed_7c = fid.FIDInceptionE_2(2048)
    return network


def build_fid_inception() -> nn.Module:
    """The FID Inception graph with random weights (for writing a file in the published key layout)."""
    return _fid_inception_network()


class InceptionFeatures(nn.Module):
    """Images in [0, 1] -> the 2048-d pool features FID uses (pytorch-fid's block 3), on a loaded FID Inception."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 2048)."""
        net = self.network
        x = F.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1], the range the TF weights expect
        x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(net, name)(x)
        x = net.Mixed_7c(net.Mixed_7b(net.Mixed_7a(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048, h, w) -> (B, 2048)


def load_inception(path: Path) -> InceptionFeatures:
    """Load pytorch-fid's FID Inception state dict (`pt_inception-2015-12-05-6726825d.pth`) from a local file.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not an FID Inception state dict.
    """
    check_metric_model(path, "inception")
    network = _fid_inception_network()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a pytorch-fid FID Inception state dict: {str(err).splitlines()[0]}") from None
    return InceptionFeatures(network)


@dataclass
class Clip:
    """A loaded CLIP: the model, its tokenizer and image processor."""

    model: Any
    tokenizer: Any
    processor: Any

    @torch.no_grad()
    def image_embeds(self, images: list[Any]) -> torch.Tensor:
        """PIL images or (H, W, 3) uint8 arrays -> (N, D) unit image embeddings."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        embeds = self.model.get_image_features(pixel_values=pixels)
        embeds = embeds if torch.is_tensor(embeds) else embeds.pooler_output
        return F.normalize(embeds.float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (N, D) unit text embeddings (truncated to CLIP's 77 tokens)."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        embeds = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        embeds = embeds if torch.is_tensor(embeds) else embeds.pooler_output
        return F.normalize(embeds.float(), dim=-1)


def load_clip(path: Path) -> Clip:
    """Load a Hugging Face CLIP folder (model, tokenizer, image processor) from a local folder, offline.

    Raises:
        FileNotFoundError: the folder or its config.json is missing.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    check_metric_model(path, "clip")
    model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    return Clip(model, tokenizer, processor)


def load_audio_classifier(path: Path, sample_rate: int = 16000, hop_size: int = 160) -> Cnn14:
    """Load a PANNs CNN14 checkpoint (a torch file whose key 'model' holds the state dict) from a local file.

    Sizes (window, mel bins, classes, width) are read from the weights; rate and hop are not stored, so they come
    from the protocol (16 kHz, hop 160 for `Cnn14_16k`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file has no 'model' key or is not a CNN14 state dict.
    """
    check_metric_model(path, "audio_classifier")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not a PANNs checkpoint: expected a dict with key 'model'")
    state = checkpoint["model"]
    try:
        cfg = Cnn14Config(
            sample_rate=sample_rate,
            window_size=state["spectrogram_extractor.stft.conv_real.weight"].shape[-1],
            hop_size=hop_size,
            mel_bins=state["logmel_extractor.melW"].shape[1],
            classes_num=state["fc_audioset.weight"].shape[0],
            width=state["conv_block1.conv1.weight"].shape[0],
        )
        model = Cnn14(cfg)
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path} is not a CNN14 state dict: {str(err).splitlines()[0]}") from None
    return model.eval()
