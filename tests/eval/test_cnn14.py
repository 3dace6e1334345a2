"""PANNs CNN14: the published key layout, and a front end that equals torch.stft + torchaudio's mel filters."""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

from nextgpt.eval.cnn14 import Cnn14, Cnn14Config, dft_kernels, mel_matrix

PUBLISHED_KEYS = {
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
    *(f"bn0.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    *(
        f"conv_block{b}.{layer}.{k}"
        for b in range(1, 7)
        for layer, keys in (
            ("conv1", ("weight",)),
            ("conv2", ("weight",)),
            *((bn, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")) for bn in ("bn1", "bn2")),
        )
        for k in keys
    ),
    "fc1.weight",
    "fc1.bias",
    "fc_audioset.weight",
    "fc_audioset.bias",
}
"""The keys of `Cnn14_16k_mAP=0.438.pth`'s 'model' (PANNs, Kong et al. 2020)."""


def test_state_dict_has_the_published_keys_and_shapes():
    state = Cnn14(Cnn14Config()).state_dict()
    assert set(state) == PUBLISHED_KEYS
    assert state["spectrogram_extractor.stft.conv_real.weight"].shape == (257, 1, 512)
    assert state["logmel_extractor.melW"].shape == (257, 64)
    assert state["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert state["fc_audioset.weight"].shape == (527, 2048)


def test_front_end_equals_a_centred_hann_stft_and_slaney_mel():
    cfg = Cnn14Config(width=2)
    model = Cnn14(cfg).eval()
    real, imag = dft_kernels(cfg.window_size)
    with torch.no_grad():
        model.spectrogram_extractor.stft.conv_real.weight.copy_(real)
        model.spectrogram_extractor.stft.conv_imag.weight.copy_(imag)
        model.logmel_extractor.melW.copy_(mel_matrix(cfg))
    t = torch.arange(8000) / cfg.sample_rate
    waveform = (0.5 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.randn(8000)).unsqueeze(0)  # (1, T)
    power = model.spectrogram_extractor(waveform)[0, 0]  # (frames, bins)
    window = torch.hann_window(cfg.window_size, periodic=True)
    reference = (
        torch.stft(
            waveform[0],
            cfg.window_size,
            cfg.hop_size,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        .abs()
        .pow(2)
        .T
    )  # (bins, frames) -> (frames, bins)
    torch.testing.assert_close(power, reference, rtol=1e-4, atol=1e-3)  # float32 sums of 512 products
    mel = AF.melscale_fbanks(257, 50.0, 8000.0, 64, 16000, norm="slaney", mel_scale="slaney")
    expected_db = 10 * torch.log10((reference @ mel).clamp(min=1e-10))
    torch.testing.assert_close(model.logmel_extractor(power[None, None])[0, 0], expected_db, rtol=1e-4, atol=1e-3)


def test_outputs_an_embedding_and_class_probabilities_per_clip():
    out = Cnn14(Cnn14Config(width=2)).eval()(torch.randn(3, 16000))
    assert out.embedding.shape == (3, 64) and out.clipwise.shape == (3, 527)
    assert bool(((out.clipwise > 0) & (out.clipwise < 1)).all())
