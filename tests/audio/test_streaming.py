"""Streaming chunks: exact slicing vs the whole utterance, and exact windowed encoding vs an offline restatement."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from musetalk.audio_features import (StreamingFeatures, encode_steps, encode_window, frame_chunks, mel_segments,
                                     num_frames, num_steps, whisper_steps, window_mel)


def _local_steps(audio: np.ndarray, offset_steps: int = 0) -> np.ndarray:
    """A step function where step s depends only on samples [320 s, 320 s + 320): windowing cannot change it."""
    n = len(audio) // 320
    frames = audio[:n * 320].reshape(n, 320).astype(np.float32)
    d = np.arange(384)
    return np.stack([frames[:, d % 320] * (layer + 1) + d // 320 + 10 * layer for layer in range(5)], axis=1)


def _stream(streamer: StreamingFeatures, audio: np.ndarray) -> np.ndarray:
    """Feed the utterance batch by batch, each call seeing only its window; the end is known once a window reaches
    it, and a batch with fewer than B frames (possibly none) is the last."""
    out, f0 = [], 0
    while True:
        start, end = streamer.window(f0)
        final = end >= len(audio)
        batch = streamer.chunks(audio[start:min(end, len(audio))], f0, final=final)
        out.append(batch)
        f0 += streamer.batch_frames
        if len(batch) < streamer.batch_frames:
            return np.concatenate(out)


LENGTHS = [int(0.3 * 16000), 16000 + 123, 2 * 16000 + 320 * 7, 9280, 3 * 16000 + 640 * 3 + 320]


@pytest.mark.parametrize("version", ["v15", "v1"])
@pytest.mark.parametrize("batch", [1, 4, 8])
@pytest.mark.parametrize("n", LENGTHS)
def test_streamed_slicing_equals_whole_utterance_slicing(version, batch, n, speech_like):
    audio = speech_like(n, seed=n)
    streamer = StreamingFeatures.with_step_function(_local_steps, version, batch_frames=batch,
                                                    left_context_s=0.1, right_context_s=0.06)
    whole = frame_chunks(_local_steps(audio)[:num_steps(n, version)], n, version)
    streamed = _stream(streamer, audio)
    assert streamed.shape == whole.shape == (num_frames(n, version), 50, 384)
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.parametrize("batch, left_s, right_s", [(8, 0.5, 0.2), (1, 0.0, 0.0), (5, 0.3, 0.04)])
def test_window_bounds_and_lookahead(batch, left_s, right_s):
    streamer = StreamingFeatures.with_step_function(_local_steps, "v15", batch, left_s, right_s)
    left, right = round(left_s * 50), round(right_s * 50)
    for f0 in (0, 1, 3, 8, 40):
        # Frames f0..f0+B-1 read steps 2 f0 - 4 .. 2 (f0+B-1) + 5; plus the encoder context on both sides.
        assert streamer.window(f0) == (max(0, 2 * f0 - 4 - left) * 320, (2 * (f0 + batch) + 4 + right) * 320)
    assert streamer.lookahead_ms == 80 + 20 * right
    assert streamer.left_context_ms == 20 * left
    assert streamer.steps_per_second == 50


def test_windows_never_reach_past_the_stated_lookahead(speech_like):
    """The step function only ever sees audio up to lookahead_ms beyond the end of the batch's own audio."""
    audio = speech_like(3 * 16000)
    seen = []

    def spy(window: np.ndarray, offset_steps: int) -> np.ndarray:
        seen.append((len(window), offset_steps))
        return _local_steps(window)

    streamer = StreamingFeatures.with_step_function(spy, "v15", batch_frames=4)
    for f0 in range(0, 60, 4):
        start, end = streamer.window(f0)
        assert end - (f0 + 4) * 640 == streamer.lookahead_ms * 16
        streamer.chunks(audio[start:end], f0)
    assert len(seen) == 15
    # Each window sits at the encoder positions its steps have in a whole-utterance pass.
    assert [o for _, o in seen] == [max(0, 2 * f0 - 4 - 25) for f0 in range(0, 60, 4)]


def test_bad_windows_are_refused(speech_like):
    streamer = StreamingFeatures.with_step_function(_local_steps, "v1", batch_frames=4)
    start, end = streamer.window(10)
    audio = speech_like(end + 1000)
    with pytest.raises(ValueError, match="need samples"):
        streamer.chunks(audio[start:end - 320], 10)  # short, and not final
    with pytest.raises(ValueError, match="need samples"):
        streamer.chunks(audio[start:end + 320], 10, final=True)
    with pytest.raises(ValueError, match="first_frame"):
        streamer.window(-1)
    with pytest.raises(ValueError, match="exceeds"):
        StreamingFeatures.with_step_function(_local_steps, "v1", batch_frames=700, left_context_s=2.0)
    with pytest.raises(ValueError, match="one step"):  # as offline: v1 cannot clamp into an empty utterance
        streamer.chunks(audio[:100], 0, final=True)
    v15 = StreamingFeatures.with_step_function(_local_steps, "v15", batch_frames=4)
    assert v15.chunks(audio[:100], 0, final=True).shape == (0, 50, 384)  # under 40 ms: no frame


def _windowed_offline(audio: np.ndarray, encoder, version: str, batch: int, left: int, right: int,
                      aligned: bool) -> np.ndarray:
    """The windowed procedure restated over the whole utterance at 25 fps.

    Batch b covers frames f0 = b*B ..; it reads steps 2 f0 - 4 .. 2 (f0+B) + 3. Its encoder input is the utterance
    audio of steps [2 f0 - 4 - left, 2 (f0+B) + 4 + right) clipped to the utterance, at encoder position s0 % 1500
    (pulled back to fit in 1500) when aligned, else 0; those step features fill an
    utterance-length array (NaN elsewhere) that the offline chunker slices for the batch's frames.
    """
    n = len(audio)
    T = num_steps(n, version)
    chunks = []
    for f0 in range(0, num_frames(n, version), batch):
        s0 = max(0, 2 * f0 - 4 - left)
        s1 = 2 * (f0 + batch) + 4 + right
        offset = min(s0 % 1500, 1500 - (s1 - s0)) if aligned else 0
        window_steps = encode_window(audio[s0 * 320:min(s1 * 320, n)], encoder, version, offset)
        utterance = np.full((T,) + window_steps.shape[1:], np.nan, np.float32)
        lo, hi = max(0, 2 * f0 - 4), min(T, 2 * (f0 + batch) + 4)
        utterance[lo:hi] = window_steps[lo - s0:hi - s0]
        chunks.append(frame_chunks(utterance, n, version)[f0:f0 + batch])
    return np.concatenate(chunks)


@pytest.mark.parametrize("version, batch, seconds, aligned", [("v15", 1, 0.3, True), ("v15", 4, 0.83, False),
                                                              ("v15", 8, 1.41, True), ("v1", 3, 0.37, True),
                                                              ("v1", 8, 1.13, False)])
def test_streamed_encoder_equals_windowed_offline(version, batch, seconds, aligned, micro_encoder, speech_like):
    audio = speech_like(int(seconds * 16000), seed=7)
    left_s, right_s = 0.3, 0.1
    streamer = StreamingFeatures(micro_encoder, version, batch_frames=batch, left_context_s=left_s,
                                 right_context_s=right_s, align_positions=aligned)
    streamed = _stream(streamer, audio)
    want = _windowed_offline(audio, micro_encoder, version, batch, round(left_s * 50), round(right_s * 50), aligned)
    assert streamed.shape == (num_frames(len(audio), version), 50, 64)
    assert not np.isnan(want).any()
    np.testing.assert_array_equal(streamed, want)
    # Each window really is encoded on its own: the result is not that of one pass over the whole utterance
    # (how far it is depends on the weights; see the report for full-size numbers).
    whole = frame_chunks(whisper_steps(audio, micro_encoder, version), len(audio), version)
    assert np.abs(streamed - whole).max() > 0


def test_windowed_encoding_of_a_long_utterance_stays_in_one_window(micro_encoder, speech_like):
    """Past the first batches the window starts at 2 f0 - 4 - left: its audio is a plain slice of the utterance."""
    audio = speech_like(4 * 16000)
    streamer = StreamingFeatures(micro_encoder, "v15", batch_frames=8)
    start, end = streamer.window(64)
    assert (start, end) == ((128 - 4 - 25) * 320, (2 * 72 + 4 + 10) * 320)
    got = streamer.chunks(audio[start:end], 64)
    first = start // 320
    steps = encode_window(audio[start:end], micro_encoder, "v15", first)
    for j, frame in enumerate(range(64, 72)):
        want = steps[2 * frame - 4 - first:2 * frame + 6 - first].reshape(50, 64)
        np.testing.assert_array_equal(got[j], want)
    assert math.isclose(streamer.lookahead_ms, 280.0)


@pytest.mark.parametrize("version", ["v15", "v1"])
def test_window_placement(version, micro_encoder, speech_like):
    audio = speech_like(16000 + 50, seed=2)
    # At position 0 a window is encoded exactly as the offline path encodes a short utterance.
    np.testing.assert_array_equal(encode_window(audio, micro_encoder, version),
                                  encode_steps(audio, micro_encoder, version))
    # At offset o it occupies mel frames 2o.. of the input: v1 pads in the normalised mel domain, v15 in the waveform.
    o = 37
    placed = window_mel(audio, version, o)[0].numpy()
    if version == "v1":
        ref = mel_segments(audio, "v1")[0][0].numpy()
        np.testing.assert_array_equal(placed[:, 2 * o:2 * o + 100], ref[:, :100])
        assert np.all(placed[:, :2 * o] == 0) and np.all(placed[:, 2 * o + 100:] == 0)
    else:
        waveform = np.concatenate([np.zeros(o * 320, np.float32), audio])
        np.testing.assert_allclose(placed, mel_segments(waveform, "v15")[0][0].numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        window_mel(audio, version, 1500 - 50)


def test_encoder_lock_is_held_for_each_encoder_pass(micro_encoder, speech_like):
    """The engine shares one model between sessions: every encoder pass must run inside the given lock."""
    held, during_pass = threading.Lock(), []
    hook = micro_encoder.conv1.register_forward_pre_hook(lambda *_: during_pass.append(held.locked()))
    try:
        locked = StreamingFeatures(micro_encoder, "v15", batch_frames=4, encoder_lock=held)
        plain = StreamingFeatures(micro_encoder, "v15", batch_frames=4)
        audio = speech_like(16000)
        start, end = locked.window(8)
        np.testing.assert_array_equal(locked.chunks(audio[start:end], 8), plain.chunks(audio[start:end], 8))
    finally:
        hook.remove()
    assert during_pass == [True, False] and not held.locked()
