"""The receiver-side detectors of the benchmarks: a mouth opening counts, a codec re-sharpening does not."""
from __future__ import annotations

import numpy as np

from bench.measure import audio_onsets, mouth_darkening, video_onsets
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
