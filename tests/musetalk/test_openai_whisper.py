"""MuseTalk v1's whisper features against the openai-whisper package itself (a test-only dependency).

A random-weight ``whisper.model.Whisper`` with tiny's dimensions is saved in the ``tiny.pt`` layout and loaded both
by openai-whisper's own ``load_model`` and by our ``load_encoder_v1``. The official v1 procedure (reference
musetalk.md 5.1) is written here with openai-whisper's functions: ``log_mel_spectrogram`` of the whole input (its
max normalisation is global), 3000-frame segments ``pad_or_trim``-ed in the normalised log-mel domain, the encoder
with "include_embeddings" -- the state after the positional embedding and each block's output, **no** ``ln_post``
(taken here with hooks, since the package's forward only returns the ``ln_post`` output) --, ``int(frames / 2)``
steps kept per segment; then ``feature2chunks`` / ``get_sliced_feature`` as the notes state them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
from whisper.model import AudioEncoder

from musetalk.audio_features import (
    frame_chunks,
    mel_segments,
    num_frames,
    whisper_steps,
)
from musetalk.whisper import encoder_states, load_encoder_v1

TINY = whisper.model.ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory):
    """(path of a random tiny.pt, the openai-whisper model loaded from it, our encoder loaded from it)."""
    torch.manual_seed(11)
    model = whisper.model.Whisper(TINY)
    with torch.no_grad():  # layer norms and biases away from ones and zeros, positions away from the sinusoids
        for name, p in model.encoder.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
        model.encoder.positional_embedding.add_(0.1 * torch.randn_like(model.encoder.positional_embedding))
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": model.state_dict()}, path)
    theirs = whisper.load_model(str(path), device="cpu").eval()
    return path, theirs, load_encoder_v1(path)


def block_states(encoder: AudioEncoder, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """openai-whisper AudioEncoder on (B, 80, 3000): ((B, 1500, 5, D) [embedding output, block 1..4 outputs],
    the forward's own output, which has ln_post)."""
    states: list[torch.Tensor] = []
    hooks = [encoder.blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0]))]
    hooks += [b.register_forward_hook(lambda module, args, out: states.append(out)) for b in encoder.blocks]
    try:
        with torch.no_grad():
            final = encoder(mel)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(states) == 1 + len(encoder.blocks)
    return torch.stack(states, dim=2), final


def official_v1_embeddings(model: whisper.Whisper, audio: np.ndarray) -> np.ndarray:
    """Audio2Feature.audio2feat: (T, 5, 384), T = sum over segments of int(mel frames in it / 2)."""
    mel = log_mel_spectrogram(torch.from_numpy(audio))
    kept = []
    for seek in range(0, mel.shape[-1], N_FRAMES):
        segment = pad_or_trim(mel[:, seek : seek + N_FRAMES], N_FRAMES)
        states, _ = block_states(model.encoder, segment[None])
        kept.append(states[0, : int(min(N_FRAMES, mel.shape[-1] - seek) / 2)].numpy())
    return np.concatenate(kept)


def official_v1_chunks(features: np.ndarray, fps: int = 25) -> np.ndarray:
    """feature2chunks + get_sliced_feature (L = R = 2): window center-4 .. center+5 clamped, until int(i*50/fps) > T."""
    t = len(features)
    chunks = []
    i = 0
    while True:
        center = int(i * 50 / fps)
        idx = [min(max(k, 0), t - 1) for k in range(center - 4, center + 6)]
        chunks.append(np.concatenate([features[k] for k in idx]).reshape(-1, 384))
        if center > t:
            break
        i += 1
    return np.stack(chunks)


def as_ffmpeg_pcm(x: np.ndarray) -> np.ndarray:
    """What whisper's load_audio yields: s16le samples / 32768."""
    return (np.clip(np.round(x * 32768), -32768, 32767) / 32768).astype(np.float32)


def test_the_package_and_our_loader_hold_the_same_tiny_encoder(tiny_pt) -> None:
    _, theirs, ours = tiny_pt
    assert dataclasses.asdict(theirs.dims) == dataclasses.asdict(TINY)
    assert sum(p.numel() for p in theirs.encoder.parameters()) == 7_632_384  # whisper tiny's encoder
    mel = torch.randn(1, 80, N_FRAMES, generator=torch.Generator().manual_seed(12))
    want, final = block_states(theirs.encoder, mel)
    raw = encoder_states(ours, mel, layer_norm_last=False)
    torch.testing.assert_close(raw, want, rtol=0, atol=2e-5)
    # "No final layer norm": v1's 5th state is block 4's raw output; the package's output is ln_post of it.
    assert (final - want[:, :, 4]).abs().max() > 0.1
    torch.testing.assert_close(encoder_states(ours, mel, layer_norm_last=True)[:, :, 4], final, rtol=0, atol=2e-5)


@pytest.mark.parametrize("seconds", [2.3, 31.5])
def test_v1_features_equal_the_official_procedure_on_openai_whisper(tiny_pt, speech_like, seconds: float) -> None:
    _, theirs, ours = tiny_pt
    audio = as_ffmpeg_pcm(speech_like(int(seconds * 16000), seed=13))
    # The encoder inputs: whole-input log-mel with the global max, 3000-frame segments padded in that domain.
    mels, _ = mel_segments(audio, "v1")
    mel = log_mel_spectrogram(torch.from_numpy(audio))
    want_mels = torch.stack([pad_or_trim(mel[:, s : s + N_FRAMES], N_FRAMES) for s in range(0, mel.shape[1], N_FRAMES)])
    assert mels.shape == want_mels.shape == (2 if seconds > 30 else 1, 80, N_FRAMES)
    torch.testing.assert_close(mels, want_mels, rtol=0, atol=1e-6)
    # The per-layer embeddings MuseTalk v1 uses, every step of the utterance (both segments for 31.5 s).
    want = official_v1_embeddings(theirs, audio)
    got = whisper_steps(audio, ours, "v1")
    assert got.shape == want.shape == (int(seconds * 16000) // 320, 5, 384)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # And the per-frame chunks made from them.
    want_chunks = official_v1_chunks(want)
    assert num_frames(len(audio), "v1") == len(want_chunks) == len(want) // 2 + 2
    np.testing.assert_allclose(frame_chunks(got, len(audio), "v1"), want_chunks, rtol=0, atol=2e-5)
