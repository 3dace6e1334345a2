"""PANNs CNN14, the audio classifier behind the usual text->audio metrics (FD, KL, IS), with its published key layout.

The module and parameter names are those of the PANNs checkpoints (`Cnn14_16k_mAP=0.438.pth`: a torch file whose key
'model' holds `spectrogram_extractor.stft.conv_{real,imag}.weight`, `logmel_extractor.melW`, `bn0`,
`conv_block{1..6}.{conv1,conv2,bn1,bn2}`, `fc1`, `fc_audioset`), so the published file loads as it is. The front end
(STFT as a convolution with the stored DFT basis, power, mel matrix, dB) reads its filters from the checkpoint, so it
needs no librosa. `width` scales the channel counts (64 in the published model) for the tiny world's classifier.

    model = Cnn14(Cnn14Config())                      # 16 kHz, window 512, hop 160, 64 mel bins, 527 classes
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    out = model(waveform)                             # (B, T) -> embedding (B, 2048), clipwise (B, 527)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Cnn14Config:
    """Front end and sizes of a CNN14; the defaults are the published 16 kHz model (`Cnn14_16k`).

    Attributes:
        sample_rate: input waveform rate in Hz.
        window_size: STFT window and FFT length.
        hop_size: STFT hop in samples.
        mel_bins: mel filters.
        fmin: lowest mel frequency in Hz.
        fmax: highest mel frequency in Hz.
        classes_num: AudioSet classes of the clipwise head.
        width: channels of the first conv block; each later block doubles it (64 -> 2048 published).
    """

    sample_rate: int = 16000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    classes_num: int = 527
    width: int = 64

    @property
    def embedding_dim(self) -> int:
        """Width of the last conv block and of `fc1` (the FD features)."""
        return self.width * 32


@dataclass
class Cnn14Output:
    """Per clip: `embedding` (B, width*32) the FD features, `clipwise` (B, classes) sigmoid class probabilities."""

    embedding: torch.Tensor
    clipwise: torch.Tensor


class _Stft(nn.Module):
    """STFT as two 1-D convolutions whose kernels are the windowed DFT basis (real and imaginary parts)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        bins = n_fft // 2 + 1
        self.hop = hop
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = _Stft(n_fft, hop)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> power spectrogram (B, 1, frames, bins), centred frames with reflect padding."""
        n_fft = self.stft.conv_real.kernel_size[0]
        x = F.pad(waveform[:, None, :], (n_fft // 2, n_fft // 2), mode="reflect")  # (B, T) -> (B, 1, T + n_fft)
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)  # (B, bins, frames) each
        return (real**2 + imag**2).transpose(1, 2)[:, None]  # (B, bins, frames) -> (B, 1, frames, bins)


class _LogMel(nn.Module):
    def __init__(self, bins: int, mel_bins: int):
        super().__init__()
        self.melW = nn.Parameter(torch.zeros(bins, mel_bins), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        """Power (B, 1, frames, bins) -> log-mel in dB (B, 1, frames, mel), ref 1.0, amin 1e-10, no top_db."""
        mel = power @ self.melW  # (B, 1, frames, bins) x (bins, mel) -> (B, 1, frames, mel)
        return 10.0 * torch.log10(mel.clamp(min=1e-10))


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class Cnn14(nn.Module):
    """CNN14 in inference mode (no SpecAugment, no dropout): waveform -> 2048-d embedding and 527 class probabilities.

    Args:
        cfg: front end and sizes.
    """

    def __init__(self, cfg: Cnn14Config):
        super().__init__()
        self.cfg = cfg
        self.spectrogram_extractor = _Spectrogram(cfg.window_size, cfg.hop_size)
        self.logmel_extractor = _LogMel(cfg.window_size // 2 + 1, cfg.mel_bins)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        widths = [1] + [cfg.width * 2**i for i in range(6)]
        for index in range(6):
            self.add_module(f"conv_block{index + 1}", _ConvBlock(widths[index], widths[index + 1]))
        self.fc1 = nn.Linear(cfg.embedding_dim, cfg.embedding_dim)
        self.fc_audioset = nn.Linear(cfg.embedding_dim, cfg.classes_num)

    def forward(self, waveform: torch.Tensor) -> Cnn14Output:
        """(B, T) waveform at `cfg.sample_rate` in [-1, 1] -> `Cnn14Output`."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (B, 1, frames, mel)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise per mel bin
        for index in range(6):
            x = getattr(self, f"conv_block{index + 1}")(x, pool=2 if index < 5 else 1)
        x = x.mean(dim=3)  # (B, C, frames', mel') -> (B, C, frames')
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = x.max(dim=2).values + x.mean(dim=2)  # (B, C, frames') -> (B, C)
        embedding = F.relu(self.fc1(x))
        return Cnn14Output(embedding, torch.sigmoid(self.fc_audioset(embedding)))


def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The published front end's STFT kernels: periodic-Hann-windowed cos and -sin DFT rows, (n_fft//2+1, 1, n_fft)."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft  # (bins, n_fft)
    real, imag = torch.cos(angle) * window, -torch.sin(angle) * window
    return real[:, None].float(), imag[:, None].float()


def mel_matrix(cfg: Cnn14Config) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filters (librosa's defaults, as PANNs uses), (n_fft//2+1, mel_bins)."""
    import torchaudio.functional as AF

    return AF.melscale_fbanks(
        cfg.window_size // 2 + 1, cfg.fmin, cfg.fmax, cfg.mel_bins, cfg.sample_rate, norm="slaney", mel_scale="slaney"
    )
