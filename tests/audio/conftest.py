"""Seeded random-init whisper encoders and synthetic audio for the audio-feature tests."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig

# pytest runs with --import-mode=importlib, which does not put the repository root on sys.path.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musetalk.whisper import build_encoder, whisper_tiny_config  # noqa: E402

torch.set_num_threads(2)


def _micro_config() -> WhisperConfig:
    """Whisper-tiny's structure (4 layers, 1500 positions, 80 mels) at width 64: cheap 30 s windows."""
    return WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=64, encoder_layers=4, encoder_attention_heads=2,
                         encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128,
                         max_source_positions=1500, max_target_positions=16)


def _seeded_encoder(config: WhisperConfig, seed: int):
    torch.manual_seed(seed)
    encoder = build_encoder(config)
    # Non-trivial layer norms and biases, so a wrong state/ordering cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return encoder


@pytest.fixture(scope="session")
def tiny_encoder():
    return _seeded_encoder(whisper_tiny_config(), 0)


@pytest.fixture(scope="session")
def micro_encoder():
    return _seeded_encoder(_micro_config(), 1)


def _speech_like(n_samples: int, seed: int = 0) -> np.ndarray:
    """Noise and harmonics under a syllable-rate envelope, so loudness (and the mel max) varies over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.7 * t) ** 2
    voiced = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 420, 1300), 1))
    return (0.1 * envelope * (voiced + 0.3 * rng.standard_normal(n_samples))).astype(np.float32)


@pytest.fixture(scope="session")
def micro_config() -> WhisperConfig:
    return _micro_config()


@pytest.fixture(scope="session")
def speech_like():
    return _speech_like
