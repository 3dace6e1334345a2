"""Tiny metric models in the published formats, so the evaluation harness runs end to end on the tiny world.

- `inception.pth`: pytorch-fid's FID Inception state dict, every key and shape of `pt_inception-2015-12-05-6726825d.pth`
  (the graph has no width knob, so it is full size, 91 MB) with seeded random weights.
- `clip/`: a Hugging Face CLIP folder (config.json, model.safetensors, byte-level tokenizer, image processor) with
  2-layer towers 32 wide on 32x32 images.
- `cnn14.pth`: a PANNs CNN14 checkpoint ({"model": state dict}, the published key layout) 4 channels wide instead of
  64, with the real 16 kHz front end (window 512, hop 160, 64 mel bins, 50-8000 Hz) and 527 classes.

Random weights make distances that are real functions of the inputs (equal sets score FID 0, noise raises it), not
judgements of quality.

    paths = write_tiny_metric_models(Path("checkpoints/tiny/metrics"))
    paths["inception"], paths["clip"], paths["audio_classifier"]
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from nextgpt.eval.cnn14 import Cnn14, Cnn14Config, dft_kernels, mel_matrix

logger = logging.getLogger(__name__)

INCEPTION_FILE, CLIP_DIR, AUDIO_CLASSIFIER_FILE = "inception.pth", "clip", "cnn14.pth"
TINY_CNN14 = Cnn14Config(width=4)
TINY_CLIP_IMAGE_SIZE = 32


def write_tiny_inception(path: Path, seed: int = 0) -> Path:
    """Write a seeded random FID Inception state dict in pytorch-fid's key layout."""
    from nextgpt.eval.metric_models import build_fid_inception

    torch.manual_seed(seed)
    network = build_fid_inception()
    for module in network.modules():  # He init keeps activations of order one through the ~90 ReLU layers
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a tiny CLIP in the Hugging Face folder format (model, tokenizer, image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from nextgpt.tiny.decoders import build_tiny_clip_tokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as work_dir:
        tokenizer = build_tiny_clip_tokenizer(Path(work_dir))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {
        **tower,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**tower, "image_size": TINY_CLIP_IMAGE_SIZE, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    size = TINY_CLIP_IMAGE_SIZE
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def write_tiny_audio_classifier(path: Path, seed: int = 0) -> Path:
    """Write a narrow CNN14 as a PANNs checkpoint ({"model": state dict}) with the real STFT and mel front end."""
    torch.manual_seed(seed)
    model = Cnn14(TINY_CNN14)
    real, imag = dft_kernels(TINY_CNN14.window_size)
    for name, module in model.named_modules():  # He init: the 12 conv layers neither vanish nor explode
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear) and not name.startswith("spectrogram"):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        model.spectrogram_extractor.stft.conv_real.weight.copy_(real)
        model.spectrogram_extractor.stft.conv_imag.weight.copy_(imag)
        model.logmel_extractor.melW.copy_(mel_matrix(TINY_CNN14))
        # Log-mel of a [-1, 1] waveform sits around -100..+30 dB; centre bn0 there so the convs see unit inputs.
        model.bn0.running_mean.fill_(-40.0)
        model.bn0.running_var.fill_(900.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path


def write_tiny_metric_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the three tiny metric models under `root`; returns kind -> path (the protocol's metric_models keys)."""
    root = Path(root)
    paths = {
        "inception": write_tiny_inception(root / INCEPTION_FILE, seed),
        "clip": write_tiny_clip(root / CLIP_DIR, seed),
        "audio_classifier": write_tiny_audio_classifier(root / AUDIO_CLASSIFIER_FILE, seed),
    }
    logger.info("tiny metric models written to %s", root)
    return paths
