"""Streaming chunks: exact slicing vs the whole utterance and the official restatement, windows and their encoder
positions (30 s segments included), and the encoded features vs the official features of the audio given."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from musetalk.audio_features import (
    StreamingFeatures,
    encode_steps,
    encode_window,
    frame_chunks,
    mel_segments,
    num_frames,
    num_steps,
    whisper_steps,
    window_mel,
)
from testing.official_audio import (
    official_chunks,
    official_step_read,
    official_steps,
    relative_l2,
)


def _local_steps(audio: np.ndarray, first_step: int = 0) -> np.ndarray:
    """A step function where step s depends only on samples [320 s, 320 s + 320): windowing cannot change it."""
    n = len(audio) // 320
    frames = audio[: n * 320].reshape(n, 320).astype(np.float32)
    d = np.arange(384)
    steps = [frames[:, d % 320] * (layer + 1) + d // 320 + 10 * layer for layer in range(5)]
    return np.stack(steps, axis=1).astype(np.float32)


def _stream(streamer: StreamingFeatures, audio: np.ndarray, ahead: int = 0) -> np.ndarray:
    """Feed the utterance batch by batch, each call given its window and `ahead` more samples (as far as they
    exist); the end is known once the audio given reaches it, and a batch with fewer than B frames is the last."""
    out, f0 = [], 0
    while True:
        start, end = streamer.window(f0)
        given = audio[start : min(end + ahead, len(audio))]
        batch = streamer.chunks(given, f0, final=start + len(given) == len(audio))
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
    streamer = StreamingFeatures.with_step_function(
        _local_steps, version, batch_frames=batch, left_context_s=0.1, right_context_s=0.06
    )
    whole = frame_chunks(_local_steps(audio)[: num_steps(n, version)], n, version)
    streamed = _stream(streamer, audio)
    assert streamed.shape == whole.shape == (num_frames(n, version), 50, 384)
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.parametrize("n", [37120, 18560, 36800, 9280 + 17])
@pytest.mark.parametrize(("batch", "ahead"), [(4, 0), (8, 640 * 5), (3, 10**6)])
def test_streamed_slicing_equals_the_official_restatement(n, batch, ahead, speech_like):
    """Frame count floor((n / 16000) * 25), steps kept floor((n / 16000) * 50), zero steps after them, whatever
    the batches and however much audio has arrived beyond each window."""
    audio = speech_like(n, seed=3)
    streamer = StreamingFeatures.with_step_function(_local_steps, "v15", batch_frames=batch)
    streamed = _stream(streamer, audio, ahead)
    np.testing.assert_array_equal(streamed, official_chunks(_local_steps(audio), n))


@pytest.mark.parametrize(("batch", "left_s", "right_s"), [(8, None, 0.2), (1, 0.0, 0.0), (5, 0.3, 0.04)])
def test_window_bounds_and_lookahead(batch, left_s, right_s):
    streamer = StreamingFeatures.with_step_function(_local_steps, "v15", batch, left_s, right_s)
    right = round(right_s * 50)
    for f0 in (0, 1, 3, 8, 40, 745, 749, 760, 1600):
        # Frames f0..f0+B-1 read steps 2 f0 - 4 .. 2 (f0+B-1) + 5: the window runs from the start of the 30 s
        # segment of the first (or `left` before it) to `right` after the last; audio can help up to the end of
        # the last one's segment.
        lo, hi = max(0, 2 * f0 - 4), 2 * (f0 + batch - 1) + 6
        start = lo // 1500 * 1500 if left_s is None else max(lo // 1500 * 1500, lo - round(left_s * 50))
        assert streamer.window(f0) == (start * 320, (hi + right) * 320)
        assert streamer.span_end(f0) == ((hi - 1) // 1500 + 1) * 1500 * 320
    assert streamer.lookahead_ms == 80 + 20 * right
    assert streamer.steps_per_second == 50


def test_the_step_function_gets_the_audio_from_the_segment_start_up_to_the_segment_end(speech_like):
    audio = speech_like(37 * 16000)
    seen = []

    def spy(given: np.ndarray, first_step: int) -> np.ndarray:
        seen.append((first_step, len(given)))
        return _local_steps(given)

    streamer = StreamingFeatures.with_step_function(spy, "v15", batch_frames=4)
    for f0, expected in [
        (0, (0, 22 * 320)),
        (100, (0, 222 * 320)),
        (744, (0, 1500 * 320)),
        (746, (0, 1800 * 320)),
        (752, (1500, 300 * 320)),
        (790, (1500, 300 * 320)),
    ]:
        start, end = streamer.window(f0)
        streamer.chunks(audio[start : 1800 * 320] if f0 >= 744 else audio[start:end], f0)
        assert seen[-1] == expected, f0
    with pytest.raises(ValueError, match="need samples"):
        streamer.chunks(audio[: streamer.window(8)[1] - 320], 8)  # short, and not final
    with pytest.raises(ValueError, match="first_frame"):
        streamer.window(-1)


def test_utterances_too_short_for_a_frame_or_a_step():
    v1 = StreamingFeatures.with_step_function(_local_steps, "v1", batch_frames=4)
    with pytest.raises(ValueError, match="one step"):  # as offline: v1 cannot clamp into an empty utterance
        v1.chunks(np.zeros(100, np.float32), 0, final=True)
    v15 = StreamingFeatures.with_step_function(_local_steps, "v15", batch_frames=4)
    assert v15.chunks(np.zeros(100, np.float32), 0, final=True).shape == (0, 50, 384)  # under 40 ms: no frame


def test_batches_equal_the_official_features_of_the_audio_given(micro_encoder, speech_like):
    """What a batch computes, stated officially: the features of the utterance as far as it has been given (the
    official pipeline run on that much audio), once the whole utterance is given the official features."""
    audio = speech_like(int(2.3 * 16000), seed=7)
    n = len(audio)
    streamer = StreamingFeatures(micro_encoder, "v15", batch_frames=4)
    whole = official_chunks(official_steps(audio, micro_encoder), n)
    streamed = _stream(streamer, audio, ahead=n)
    assert streamed.shape == whole.shape == (57, 50, 64)
    assert relative_l2(streamed, whole).max() < 1e-4
    for f0 in (0, 12, 40):
        start, end = streamer.window(f0)
        got = streamer.chunks(audio[start:end], f0)  # only the look-ahead it waits for
        given = official_chunks(official_steps(audio[:end], micro_encoder), end)[f0 : f0 + 4]
        assert relative_l2(got, given).max() < 1e-4, f0


def test_across_30_s_the_batches_equal_the_official_features(micro_encoder, speech_like):
    """31.5 s given whole: the batches at the start, straddling the 30 s boundary (frames 746..753 read steps on
    both sides of it) and at the end equal the official two-segment features."""
    audio = speech_like(int(31.5 * 16000), seed=8)
    n = len(audio)
    whole = official_chunks(official_steps(audio, micro_encoder), n)
    streamer = StreamingFeatures(micro_encoder, "v15", batch_frames=8)
    for f0 in (0, 744, 752, 784):
        start = streamer.window(f0)[0]
        got = streamer.chunks(audio[start:], f0, final=True)
        assert len(got) == min(8, 787 - f0)
        assert relative_l2(got, whole[f0 : f0 + len(got)]).max() < 1e-4, f0


def test_windows_straddling_30_s_sit_at_the_official_encoder_positions(micro_encoder, speech_like):
    """With the convolutions zeroed the embedding state of step s is the positional embedding of its official
    position s % 1500 (segment s // 1500): every slot of every frame around the boundary and at the end shows it."""
    encoder = copy.deepcopy(micro_encoder)
    with torch.no_grad():
        for conv in (encoder.conv1, encoder.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
    positions = encoder.embed_positions.weight.detach().numpy()
    audio = speech_like(int(31.5 * 16000), seed=9)
    n, kept = len(audio), math.floor((len(audio) / 16000) * 50)
    streamer = StreamingFeatures(encoder, "v15", batch_frames=8, right_context_s=0.2)
    for f0 in (736, 744, 752, 784):
        start, end = streamer.window(f0)
        final = end >= n
        got = streamer.chunks(audio[start : min(end, n)], f0, final=final).reshape(-1, 10, 5, 64)
        for j, frame in enumerate(range(f0, f0 + len(got))):
            for k in range(10):
                s = official_step_read(frame, k)
                if 0 <= s < kept:
                    np.testing.assert_array_equal(got[j, k, 0], positions[s % 1500])
                else:
                    assert not got[j, k].any()


def test_encode_window_cuts_at_every_segment_boundary(micro_encoder, speech_like):
    """Audio from step 1400 to 1600 is two inputs: steps 1400..1499 at positions 1400.., 1500.. at 0.."""
    audio = speech_like(200 * 320 + 100, seed=4)
    calls = []
    hook = micro_encoder.conv1.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        got = encode_window(audio, micro_encoder, "v15", 1400)
    finally:
        hook.remove()
    assert calls == [2] and got.shape == (200, 5, 64)
    # (one input at a time: CPU kernels may round a batch of 2 differently)
    np.testing.assert_allclose(got[:100], encode_window(audio[: 100 * 320], micro_encoder, "v15", 1400), atol=1e-5)
    np.testing.assert_allclose(got[100:], encode_window(audio[100 * 320 :], micro_encoder, "v15", 1500), atol=1e-5)
    np.testing.assert_array_equal(
        encode_window(audio[100 * 320 :], micro_encoder, "v15", 1500),
        encode_window(audio[100 * 320 :], micro_encoder, "v15", 0),
    )


@pytest.mark.parametrize("version", ["v15", "v1"])
def test_window_placement(version, micro_encoder, speech_like):
    audio = speech_like(16000 + 50, seed=2)
    # At position 0 a window is encoded exactly as the offline path encodes a short utterance.
    np.testing.assert_array_equal(
        encode_window(audio, micro_encoder, version), encode_steps(audio, micro_encoder, version)
    )
    # At offset o it occupies mel frames 2o.. of the input: v1 pads in the normalised mel domain, v15 in the waveform.
    o = 37
    placed = window_mel(audio, version, o)[0].numpy()
    if version == "v1":
        ref = mel_segments(audio, "v1")[0][0].numpy()
        np.testing.assert_array_equal(placed[:, 2 * o : 2 * o + 100], ref[:, :100])
        assert np.all(placed[:, : 2 * o] == 0) and np.all(placed[:, 2 * o + 100 :] == 0)
    else:
        waveform = np.concatenate([np.zeros(o * 320, np.float32), audio])
        np.testing.assert_allclose(placed, mel_segments(waveform, "v15")[0][0].numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        window_mel(audio, version, 1500 - 50)


def test_v1_batches_given_the_utterance_equal_its_offline_v1_features(micro_encoder, speech_like):
    """v1 (checked against openai-whisper in test_openai_whisper.py): one log-mel normalisation over the whole
    utterance, the last step replicated past its end; given all of it, every batch is the offline computation."""
    audio = speech_like(int(2.3 * 16000), seed=12)
    whole = frame_chunks(whisper_steps(audio, micro_encoder, "v1"), len(audio), "v1")
    streamed = _stream(StreamingFeatures(micro_encoder, "v1", batch_frames=8), audio, ahead=len(audio))
    assert streamed.shape == whole.shape == (59, 50, 64)  # floor(T / 2) + 2 chunks, T = 115
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
