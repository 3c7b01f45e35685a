"""What the receiver-side benchmarks detect: sound onsets, mouth-motion onsets, return to idle."""

from __future__ import annotations

import numpy as np

from musetalk.avatar import Avatar
from testing.rtc import Received, media_time_ms

AUDIO_ONSET = 0.05  # received sample level that counts as "sound started"
IDLE_MATCH = 3.0  # below this the mouth region is back to the idle picture (half-open is ~6, open ~12)
# Mouth onset = the mouth region's mean luminance drops (an opening mouth shows its dark inside). A plain
# |difference| is fooled by the codec: VP8 re-sharpening a still picture after a bitrate change moved it by 2-7
# grey levels over several frames before any sound (6 of 300 bursts in a 10-minute run). The mean luminance
# hardly moves then: between bursts it stayed within 0.8 levels of the idle frame (p99 0.36), while the first
# opened frame darkens it by 1.8 or more.
MOUTH_ONSET = 1.0


def mouth_difference(frame: np.ndarray, reference: np.ndarray, region: tuple[slice, slice]) -> float:
    return float(np.abs(frame[region].astype(np.float32) - reference[region].astype(np.float32)).mean())


def luminance(frame: np.ndarray, region: tuple[slice, slice]) -> float:
    """Mean luma (BT.601) of a BGR frame's region."""
    return float(frame[region].astype(np.float32).mean(axis=(0, 1)) @ np.array([0.114, 0.587, 0.299], np.float32))


def mouth_darkening(frame: np.ndarray, reference: np.ndarray, region: tuple[slice, slice]) -> float:
    return luminance(reference, region) - luminance(frame, region)


def mouth_region(avatar: Avatar) -> tuple[slice, slice]:
    x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
    return slice(y1 + (y2 - y1) // 2, y2), slice(x1, x2)


def audio_onsets(frames: list[Received], after_ms: list[float]) -> list[float | None]:
    """Per start time: the receiver-clock time of the first received sample above AUDIO_ONSET after it."""
    times = np.asarray(media_time_ms(frames, 48000))
    out = []
    for start in after_ms:
        onset = None
        for i in range(int(np.searchsorted(times, start - 20)), len(frames)):
            loud = np.nonzero(np.abs(frames[i].data) > AUDIO_ONSET)[0]
            if loud.size:
                onset = float(times[i]) + 1000.0 * loud[0] / 48000
                break
        out.append(onset)
    return out


def video_onsets(frames: list[Received], after_ms: list[float], region: tuple[slice, slice]) -> list[float | None]:
    """Per start time: the first frame whose mouth region is darker (MOUTH_ONSET) than the last frame before it."""
    times = np.asarray(media_time_ms(frames, 90000))
    out = []
    for start in after_ms:
        onset = None
        first = int(np.searchsorted(times, start - 40))
        if first > 0:
            ref = frames[first - 1].data
            for i in range(first, len(frames)):
                if mouth_darkening(frames[i].data, ref, region) > MOUTH_ONSET:
                    onset = float(times[i])
                    break
        out.append(onset)
    return out
