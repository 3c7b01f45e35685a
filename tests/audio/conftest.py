"""Seeded random-init whisper encoders and synthetic audio for the audio-feature tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig

# pytest runs with --import-mode=importlib, which does not put the repository root on sys.path.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musetalk.whisper import whisper_tiny_config  # noqa: E402
from tests.audio.official import micro_config as _micro_config  # noqa: E402
from tests.audio.official import seeded_encoder as _seeded_encoder
from tests.audio.official import speech_like as _speech_like  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_encoder():
    return _seeded_encoder(whisper_tiny_config(), 0)


@pytest.fixture(scope="session")
def micro_encoder():
    return _seeded_encoder(_micro_config(), 1)


@pytest.fixture(scope="session")
def micro_config() -> WhisperConfig:
    return _micro_config()


@pytest.fixture(scope="session")
def speech_like():
    return _speech_like
