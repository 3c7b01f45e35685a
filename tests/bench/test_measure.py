"""The receiver-side detectors of the benchmarks: a mouth opening counts, a codec re-sharpening does not."""

from __future__ import annotations

import numpy as np
import pytest

from bench.measure import audio_onsets, mouth_darkening, video_onsets
from bench.receivers import half_open_times
from testing.rtc import Received

REGION = (slice(20, 40), slice(10, 50))


def frame(level: int = 150, seed: int | None = None, mouth: int | None = None) -> np.ndarray:
    img = np.full((48, 64, 3), level, np.uint8)
    if seed is not None:  # a codec's re-sharpening: detail moves both ways, the mean barely
        noise = np.random.default_rng(seed).integers(-12, 13, img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    if mouth is not None:
        img[28:34, 20:40] = mouth  # a dark opening
    return img


def videos(images: list[np.ndarray]) -> list[Received]:
    return [Received("video", 3600 * i, 1000.0 + 40.0 * i, img) for i, img in enumerate(images)]


def test_darkening_is_zero_for_a_zero_mean_change_and_positive_for_an_opening() -> None:
    idle = frame()
    assert abs(mouth_darkening(frame(seed=1), idle, REGION)) < 0.3
    assert mouth_darkening(frame(mouth=40), idle, REGION) > 10


def test_video_onset_skips_a_re_sharpened_frame_and_finds_the_opening() -> None:
    images = [frame()] * 5 + [frame(seed=1), frame(seed=2), frame(seed=3, mouth=60), frame(mouth=40)]
    onsets = video_onsets(videos(images), [1000.0 + 40 * 4.5], REGION)
    assert onsets == [1000.0 + 40 * 7]


def test_no_onset_when_nothing_opens() -> None:
    images = [frame()] * 5 + [frame(seed=s) for s in range(5)]
    assert video_onsets(videos(images), [1000.0 + 40 * 4.5], REGION) == [None]


def test_audio_onset_is_the_first_loud_sample_on_the_receiver_clock() -> None:
    chunks = [np.zeros(960, np.float32) for _ in range(10)]
    chunks[6][480:] = 0.3  # 10 ms into the 7th 20 ms frame
    audio = [Received("audio", 960 * i, 500.0 + 20.0 * i, c) for i, c in enumerate(chunks)]
    assert audio_onsets(audio, [540.0]) == [500.0 + 20 * 6 + 10.0]


def opening(rows: int) -> np.ndarray:
    """A mouth opened by `rows` of the 20 rows of REGION: its dark area, so its darkening, grows with `rows`."""
    img = frame()
    img[20 : 20 + rows, 20:40] = 40
    return img


def test_half_open_time_is_interpolated_between_the_frames_around_the_crossing() -> None:
    images = [opening(0)] * 5 + [opening(r) for r in (7, 9, 10, 10, 10, 4, 1, 0)]
    (t,) = half_open_times(videos(images), [1000.0 + 40 * 4.5], REGION)
    # half of the full opening (10 rows) is 5 rows: 5/7 of the way from frame 4 (closed) to frame 5 (7 rows)
    assert t == pytest.approx(1000.0 + 40 * 4 + 40 * 5 / 7)


def test_a_crossfaded_start_reaches_half_open_a_frame_later() -> None:
    # the first two opening frames damped to 1/3 and 2/3 (the old idle -> speech crossfade): 2.33, 6 rows
    faded = [frame()] * 5 + [opening(r) for r in (2, 6, 10, 10)]
    faded[5][20:22, 20:40] = 40
    faded[5][22, 20:40] = 150 - round(110 / 3)
    (t,) = half_open_times(videos(faded), [1000.0 + 40 * 4.5], REGION)
    assert t is not None and 1000.0 + 40 * 5 < t < 1000.0 + 40 * 6


def test_each_burst_is_measured_against_its_own_full_opening() -> None:
    images = (
        [opening(0)] * 3
        + [opening(r) for r in (4, 4, 0, 0, 0)]
        + [opening(r) for r in (10, 10, 0, 0)]
        + [frame(seed=s) for s in range(4)]
    )
    starts = [1000.0 + 40 * 2.5, 1000.0 + 40 * 7.5, 1000.0 + 40 * 11.5]
    first, second, third = half_open_times(videos(images), starts, REGION)
    assert first == pytest.approx(1000.0 + 40 * 2 + 40 * 2 / 4)  # 2 of its 4 rows
    assert second == pytest.approx(1000.0 + 40 * 7 + 40 * 5 / 10)
    assert third is None  # a re-sharpened idle picture opens nothing
