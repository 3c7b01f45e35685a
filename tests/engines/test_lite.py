import numpy as np
import pytest

from core.units import TICK_SAMPLES
from engines.base import RenderRequest
from engines.lite import LiteEngine, MouthGeometry, loudness_target


def tone(db: float, n: int = TICK_SAMPLES) -> np.ndarray:
    amplitude = 10 ** (db / 20) * np.sqrt(2)  # sine with this RMS in dBFS
    return (amplitude * np.sin(2 * np.pi * 200 * np.arange(n) / 16000)).astype(np.float32)


def test_loudness_target_is_linear_in_db_between_quiet_and_loud() -> None:
    assert loudness_target(np.zeros(640, np.float32)) == 0.0
    assert loudness_target(tone(-50)) == 0.0
    assert loudness_target(tone(-30)) == pytest.approx(0.5, abs=0.01)  # halfway between -45 and -15 dBFS
    assert loudness_target(tone(-10)) == 1.0
    levels = [loudness_target(tone(db)) for db in range(-45, -14, 5)]
    assert levels == sorted(levels) and len(set(levels)) == len(levels)


def mouth_change(avatar, renderer, opening: float) -> np.ndarray:
    crop, _, _ = renderer.binding.frame_data(0)
    return np.abs(renderer.face(0, opening).astype(int) - crop.astype(int)).sum(axis=2)


def test_mouth_opening_follows_loudness_anchored_on_the_lips(demo_avatar) -> None:
    renderer = LiteEngine().bind(demo_avatar).new_renderer()
    geo = MouthGeometry(np.asarray(demo_avatar.landmarks[0]), demo_avatar.face_boxes[0])
    assert np.array_equal(renderer.face(0, 0.0), renderer.binding.frame_data(0)[0])  # closed = untouched
    changes = [mouth_change(demo_avatar, renderer, o) for o in (0.25, 0.5, 1.0)]
    totals = [c.sum() for c in changes]
    assert totals[0] < totals[1] < totals[2]
    # the change is around the mouth: nothing above the lip line moves, nothing far to the sides
    ys, xs = np.nonzero(changes[-1] > 30)
    assert ys.min() >= geo.lip_y - 3
    assert np.abs(xs - geo.cx).max() <= 2.7 * geo.half_w
    assert (changes[-1][: int(geo.lip_y) - 3] == 0).all()


def test_renderer_smooths_loudness_with_fast_attack_and_slower_release(demo_avatar) -> None:
    renderer = LiteEngine().bind(demo_avatar).new_renderer()
    loud, quiet = tone(-15), np.zeros(TICK_SAMPLES, np.float32)
    rising = [renderer.advance(loud) for _ in range(4)]
    falling = [renderer.advance(quiet) for _ in range(4)]
    assert rising == sorted(rising) and rising[0] == pytest.approx(0.7)
    assert falling == sorted(falling, reverse=True) and falling[0] == pytest.approx(rising[-1] * 0.6)


def test_render_uses_each_ticks_own_audio(demo_avatar) -> None:
    renderer = LiteEngine().bind(demo_avatar).new_renderer()
    audio = np.concatenate([np.zeros(TICK_SAMPLES, np.float32), tone(-15)])
    faces = renderer.render(
        RenderRequest(ticks=[0, 1], cycle_indices=[0, 0], audio=audio, left_samples=0, right_samples=0, seg_pos=0)
    )
    crop = renderer.binding.frame_data(0)[0]
    assert np.array_equal(faces[0], crop) and not np.array_equal(faces[1], crop)
