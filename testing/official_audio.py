"""The official MuseTalk v1.5 audio features restated from the reference notes, for tests; test encoders and audio.

Written from ``reference/musetalk.md`` section 5.2 (``AudioProcessor.get_audio_feature`` / ``get_whisper_chunk``),
not from ``musetalk.audio_features``, so a test that compares the two checks ours against the rule:

- the waveform is cut into 30 s segments, each one goes through HF ``WhisperFeatureExtractor`` (zero-padded to 30 s
  in the waveform domain, log-mel max normalised per segment) and the encoder with ``output_hidden_states``; the 5
  hidden states are stacked on dim 2 and the segments concatenated (1500 steps each);
- ``actual_length = floor((n / 16000) * 50)`` steps are kept (Python float arithmetic, as upstream);
- ``P = ceil(50 / fps)``; ``2 P`` zero steps go on the left, ``3 * 2 P`` on the right;
- ``floor((n / 16000) * fps)`` frames; frame i is padded steps ``[floor(i * 50 / fps), +10)``, flattened to token
  ``5 * t + state``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from musetalk.whisper import build_encoder

SEGMENT = 30 * 16000


def official_steps(audio: np.ndarray, encoder) -> np.ndarray:
    """(floor((n / 16000) * 50), 5, D): the stacked hidden states of the 30 s segments, concatenated and trimmed."""
    extractor = WhisperFeatureExtractor(feature_size=80)
    parts = []
    with torch.no_grad():
        for start in range(0, len(audio), SEGMENT):
            mel = extractor(audio[start : start + SEGMENT], sampling_rate=16000, return_tensors="pt").input_features
            states = encoder(mel.to(encoder.conv1.weight.dtype), output_hidden_states=True).hidden_states
            parts.append(torch.stack(states, dim=2).float())
    return torch.cat(parts, dim=1)[0, : math.floor((len(audio) / 16000) * 50)].numpy()


def token_order(clip: np.ndarray) -> np.ndarray:
    """(10, 5, D) -> (50, D) with token 5*t + layer, element by element."""
    out = np.empty((clip.shape[0] * clip.shape[1], clip.shape[2]), clip.dtype)
    for t in range(clip.shape[0]):
        for layer in range(clip.shape[1]):
            out[5 * t + layer] = clip[t, layer]
    return out


def official_chunks(steps: np.ndarray, n: int, fps: int = 25) -> np.ndarray:
    """get_whisper_chunk on trimmed steps: zero-pad (zeros_like of slices of the trimmed array), slice, flatten."""
    m = 50 / fps
    feat = steps[: math.floor((n / 16000) * 50)]
    pad = math.ceil(m)
    assert len(feat) >= pad * 2, "shorter utterances get less left padding upstream (documented deviation)"
    feat = np.concatenate([np.zeros_like(feat[: pad * 2]), feat, np.zeros_like(feat[: pad * 3 * 2])])
    chunks = []
    for i in range(math.floor((n / 16000) * fps)):
        a = math.floor(i * m)
        clip = feat[a : a + 10]
        assert clip.shape[0] == 10
        chunks.append(token_order(clip))
    return np.stack(chunks) if chunks else np.zeros((0, 50, steps.shape[2]), np.float32)


def official_step_read(frame: int, slot: int, fps: int = 25) -> int:
    """The utterance step slot `slot` of frame `frame` reads (a zero step when < 0 or >= the kept steps)."""
    return math.floor(frame * (50 / fps)) + slot - 2 * math.ceil(50 / fps)


def relative_l2(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per frame ||got - want|| / ||want|| over its (50, D) chunk."""
    diff = np.linalg.norm((got - want).reshape(len(got), -1), axis=1)
    return diff / np.linalg.norm(want.reshape(len(want), -1), axis=1)


def check_frames_read_official_steps(got: np.ndarray, steps: np.ndarray, fps: int = 25, search: int = 12) -> None:
    """Every 384-vector slot of every frame is zero exactly where the official frame reads a zero step, and is
    otherwise nearest (among the steps within `search` of it) to the official step that frame reads."""
    n_frames, n_steps = len(got), len(steps)
    slots = got.reshape(n_frames, 10, -1)
    flat = steps.reshape(n_steps, -1)
    for i in range(n_frames):
        for k in range(10):
            s = official_step_read(i, k, fps)
            if not 0 <= s < n_steps:
                assert not slots[i, k].any(), f"frame {i} slot {k} (step {s}) should be a zero step"
                continue
            assert slots[i, k].any(), f"frame {i} slot {k} (step {s}) is zero"
            lo, hi = max(0, s - search), min(n_steps, s + search + 1)
            nearest = lo + int(np.argmin(np.linalg.norm(flat[lo:hi] - slots[i, k], axis=1)))
            assert nearest == s, f"frame {i} slot {k} reads step {nearest}, officially {s}"


# ---------------------------------------------------------------- test encoders and audio


def micro_config() -> WhisperConfig:
    """Whisper-tiny's structure (4 layers, 1500 positions, 80 mels) at width 64: cheap 30 s windows."""
    return WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=4,
        encoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=16,
    )


def perturb_norms_and_biases(module: torch.nn.Module) -> None:
    """Non-trivial layer norms and biases, so a wrong state/ordering cannot hide behind ones and zeros."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def seeded_encoder(config: WhisperConfig, seed: int) -> WhisperEncoder:
    torch.manual_seed(seed)
    encoder = build_encoder(config)
    perturb_norms_and_biases(encoder)
    return encoder


def speech_like(n_samples: int, seed: int = 0) -> np.ndarray:
    """Noise and harmonics under a syllable-rate envelope, so loudness (and the mel max) varies over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.7 * t) ** 2
    voiced = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 420, 1300), 1))
    return (0.1 * envelope * (voiced + 0.3 * rng.standard_normal(n_samples))).astype(np.float32)
