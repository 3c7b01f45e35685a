from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from mediapipe.python.solutions.face_mesh import FACEMESH_FACE_OVAL

from musetalk.config import Version
from musetalk.face import (
    FACE_OVAL_INDICES,
    HALF_FACE_INDEX,
    JAW_INDICES,
    FaceBoxRejected,
    FaceLandmarker,
    blend_mask,
    blur_kernel_size,
    crop_box,
    face_box,
    mask_region,
)


def synthetic_landmarks(x_min: float, x_max: float, chin: float, y29: float, seed: int = 0) -> np.ndarray:
    """Jaw arc spanning [x_min, x_max] down to `chin`, point 195 at y29, the rest scattered inside the face."""
    rng = np.random.default_rng(seed)
    lm = np.empty((468, 2), np.float32)
    lm[:, 0] = rng.uniform(x_min + 5, x_max - 5, 468)
    lm[:, 1] = rng.uniform(2 * y29 - chin + 5, chin - 5, 468)
    angles = np.linspace(0, np.pi, len(JAW_INDICES))  # 356 (right) .. 152 (bottom) .. 127 (left)
    cx, rx, top = (x_min + x_max) / 2, (x_max - x_min) / 2, y29 - 10
    lm[list(JAW_INDICES), 0] = cx + rx * np.cos(angles)
    lm[list(JAW_INDICES), 1] = top + (chin - top) * np.sin(angles)
    lm[152] = (cx, chin)
    lm[HALF_FACE_INDEX] = (cx, y29)
    return lm


def test_face_oval_order_is_the_chain_of_mediapipes_edges() -> None:
    ring = list(FACE_OVAL_INDICES)
    edges = {frozenset(pair) for pair in zip(ring, ring[1:] + ring[:1])}
    assert len(ring) == len(set(ring)) == 36
    assert edges == {frozenset(e) for e in FACEMESH_FACE_OVAL}


def test_jaw_is_the_lower_arc_from_temple_to_temple() -> None:
    assert JAW_INDICES[0] == 356 and JAW_INDICES[-1] == 127 and 152 in JAW_INDICES and len(JAW_INDICES) == 23


def test_landmarks_on_the_astronaut(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    lm = astronaut_landmarks
    assert lm.shape == (468, 2) and lm.dtype == np.float32
    # dlib's 68 points on the same image (probes.md 5b): x 179..272, chin y 178, brows y 87.
    x1, _, x2, y2 = face_box(lm, astronaut.shape, "v1")
    assert abs(x1 - 179) <= 3 and abs(x2 - 272) <= 3 and abs(y2 - 178) <= 4
    # iBUG 29 lies about a third of the way from the brow tops to the chin.
    assert abs(lm[HALF_FACE_INDEX, 1] - (87 + (178 - 87) / 3)) <= 4


def test_no_face_gives_none() -> None:
    with FaceLandmarker(static_image_mode=True) as detector:
        assert detector.detect(np.full((240, 320, 3), 90, np.uint8)) is None
        with pytest.raises(ValueError, match="BGR frame"):
            detector.detect(np.zeros((10, 10), np.uint8))


def test_face_box_rule() -> None:
    lm = synthetic_landmarks(100.7, 200.2, chin=300.9, y29=220.4)
    frame = (480, 640, 3)
    # Plain statement: ints; x = jaw min/max; bottom = chin; top = 2*y29 - chin, y29 shifted by bbox_shift (v1).
    assert face_box(lm, frame, "v1") == (100, 140, 200, 300)
    assert face_box(lm, frame, "v1", bbox_shift=5) == (100, 150, 200, 300)  # top moves by 2s
    assert face_box(lm, frame, "v1", bbox_shift=-7) == (100, 126, 200, 300)
    assert face_box(lm, frame, "v1", extra_margin=30) == (100, 140, 200, 300)  # margin is v1.5 only
    assert face_box(lm, frame, "v15") == (100, 140, 200, 310)
    assert face_box(lm, frame, "v15", bbox_shift=5, extra_margin=3) == (100, 140, 200, 303)  # v1.5 ignores shift


# ---- the official rule, case by case (reference musetalk.md 6.1; expected boxes computed by hand) ----
# Upstream, on its 68 points lm (cast with astype(np.int32), i.e. truncated toward zero):
#   lm[29].y += bbox_shift (v1, in place)     y2 = max(lm.y)       y1 = max(0, lm[29].y - (y2 - lm[29].y))
#   x1, x2 = min(lm.x), max(lm.x)             rejected (S3FD fallback) if y2-y1 <= 0 or x2-x1 <= 0 or x1 < 0
#   v1.5 afterwards: y2 = min(y2 + extra_margin, H)
# Our stand-ins for those points: mesh 127 / 356 the jaw's left / right ends, 152 the chin, 195 point 29.


def face_points(left: float, right: float, chin: float, y29: float) -> np.ndarray:
    """468 mesh points: 127 at x=left, 356 at x=right, 152 at y=chin, 195 (iBUG 29) at y=y29; every other point
    (and the unset coordinates) at an inner point that sets no part of the box (x midway, y above chin and 29)."""
    inner = ((left + right) / 2, min(chin, y29) - 1)
    lm = np.tile(np.array(inner, np.float32), (468, 1))
    lm[127, 0], lm[356, 0], lm[152, 1], lm[HALF_FACE_INDEX, 1] = left, right, chin, y29
    return lm


def test_chin_below_the_frame_is_not_clipped_in_v1() -> None:
    lm = face_points(20.9, 70.2, chin=130.6, y29=80.9)  # ints 20, 70, 130, 80; the frame is 100 high
    assert face_box(lm, (100, 160, 3), "v1") == (20, 30, 70, 130)  # y1 = 80 - (130 - 80); y2 stays 130
    # v1.5 clamps only in its margin step: min(130 + 10, 100) = 100.
    assert face_box(lm, (100, 160, 3), "v15") == (20, 30, 70, 100)
    lm = face_points(20.9, 70.2, chin=85.0, y29=60.0)
    assert face_box(lm, (100, 160, 3), "v15") == (20, 35, 70, 95)  # 85 + 10 = 95 < 100
    assert face_box(lm, (100, 160, 3), "v15", extra_margin=20) == (20, 35, 70, 100)  # 105 -> 100
    lm = face_points(20.0, 190.0, chin=85.0, y29=60.0)  # x2 beyond a 160 wide frame: kept too
    assert face_box(lm, (100, 160, 3), "v1") == (20, 35, 190, 85)


def test_negative_x1_is_rejected() -> None:
    lm = face_points(-1.2, 70.0, chin=90.0, y29=50.0)  # int(-1.2) = -1 < 0
    for version in ("v1", "v15"):
        with pytest.raises(FaceBoxRejected):
            face_box(lm, (100, 160, 3), version)
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(-35.0, 70.0, chin=90.0, y29=50.0), (100, 160, 3), "v1")


def test_empty_box_is_rejected() -> None:
    # Zero height: point 29 is the lowest point, so y2 = y29 and y1 = y29 - 0.
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(20.0, 70.0, chin=40.0, y29=50.0), (100, 160, 3), "v1")
    # Zero width: both x ends truncate to 50.
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(50.2, 50.9, chin=90.0, y29=50.0), (100, 160, 3), "v1")
    # A positive shift that moves point 29 below the chin: y2 = y1 = 96 + 7.
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(20.0, 70.0, chin=100.0, y29=96.0), (200, 160, 3), "v1", bbox_shift=7)


def test_v15_margin_comes_after_the_rejection() -> None:
    # Zero height before the margin: v1.5 rejects it, although y2 + 10 would make a 10 px box.
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(20.0, 70.0, chin=40.0, y29=50.0), (100, 160, 3), "v15")


def test_shift_minus_7_with_point_29_the_lowest() -> None:
    lm = face_points(20.0, 70.0, chin=95.0, y29=100.0)
    # Point 29 moves up to 93 in place, so the max y is now the chin's 95 (not 100): y1 = 93 - (95 - 93) = 91.
    assert face_box(lm, (200, 160, 3), "v1", bbox_shift=-7) == (20, 91, 70, 95)
    # Unshifted it is the lowest point: zero height, rejected; v1.5 ignores the shift, so the same.
    cases: tuple[tuple[Version, int], ...] = (("v1", 0), ("v15", -7))
    for version, shift in cases:
        with pytest.raises(FaceBoxRejected):
            face_box(lm, (200, 160, 3), version, bbox_shift=shift)


def test_landmarks_are_truncated_toward_zero() -> None:
    # int(-0.9) = 0 (floor would give -1 and reject the box); int(70.99) = 70; int(60.7) = 60, int(100.3) = 100.
    lm = face_points(-0.9, 70.99, chin=100.3, y29=60.7)
    assert face_box(lm, (200, 160, 3), "v1") == (0, 20, 70, 100)
    assert face_box(lm, (200, 160, 3), "v1", bbox_shift=3) == (0, 26, 70, 100)  # 63 - (100 - 63)
    assert face_box(lm, (200, 160, 3), "v15") == (0, 20, 70, 110)
    # A negative point 29 (face cut at the top): int(-2.5) = -2, y1 = max(0, -2 - 42) = 0.
    assert face_box(face_points(10.5, 60.5, chin=40.8, y29=-2.5), (200, 160, 3), "v1") == (10, 0, 60, 40)


def test_box_wholly_outside_the_frame_is_rejected() -> None:
    # Beyond upstream (whose crop would then be empty and fail): x1 >= W or y1 >= H.
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(170.0, 220.0, chin=90.0, y29=50.0), (100, 160, 3), "v1")
    with pytest.raises(FaceBoxRejected):
        face_box(face_points(20.0, 70.0, chin=160.0, y29=130.0), (100, 160, 3), "v1")  # y1 = 100 = H


def test_bad_arguments() -> None:
    lm = face_points(20.0, 70.0, chin=90.0, y29=50.0)
    with pytest.raises(ValueError, match="unknown MuseTalk version"):
        face_box(lm, (100, 80, 3), "v2")  # type: ignore[arg-type]  # the wrong type is the test
    with pytest.raises(ValueError, match="landmarks"):
        face_box(lm[:68], (100, 80, 3), "v1")


def test_rejected_frames_use_the_nearest_good_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import musetalk.avatar_prepare as prepare_module
    from musetalk.avatar import NoFaceError, load_avatar

    good0, good4 = face_points(20.0, 70.0, chin=90.0, y29=50.0), face_points(30.0, 80.0, chin=95.0, y29=60.0)
    detected = [
        good0,
        face_points(-1.2, 70.0, chin=90.0, y29=50.0),
        None,
        face_points(20.0, 70.0, chin=40.0, y29=50.0),
        good4,
    ]  # good, x1 < 0, no face, empty, good
    monkeypatch.setattr(prepare_module, "_detect_all", lambda frames, progress: detected)
    frames = np.zeros((5, 120, 160, 3), np.uint8)
    options = prepare_module.PrepareOptions(version="v1", progress=False, models_dir=tmp_path)
    prepare_module.prepare_avatar(frames, "rej", tmp_path, options)
    avatar = load_avatar("rej", tmp_path)
    # Good boxes: (20, 10, 70, 90) and (30, 25, 80, 95). Frame 2 is as near to 0 as to 4: the earlier one.
    expected = [(20, 10, 70, 90)] * 3 + [(30, 25, 80, 95)] * 2
    assert [tuple(int(v) for v in b) for b in avatar.face_boxes] == expected
    for i, landmarks in enumerate((good0, good0, good0, good4, good4)):
        np.testing.assert_array_equal(avatar.landmarks[i], landmarks)
    monkeypatch.setattr(prepare_module, "_detect_all", lambda frames, progress: [detected[1], detected[3]])
    with pytest.raises(NoFaceError):
        prepare_module.prepare_avatar(frames[:2], "rej2", tmp_path, options)
    assert not (tmp_path / "rej2").exists()


def plain_face_box(lm: np.ndarray, height: int, version: str, shift: int, margin: int) -> tuple[int, ...] | None:
    """The rule as the reference states it, on the jaw arc and the nose ridge; None where it rejects the box."""
    points = [[int(lm[i, 0]), int(lm[i, 1])] for i in (*JAW_INDICES, 6, 197, 195, 5)]
    y29 = points[-2]
    if version == "v1":
        y29[1] += shift
    bottom = max(y for _, y in points)
    top = max(0, y29[1] - (bottom - y29[1]))
    left, right = min(x for x, _ in points), max(x for x, _ in points)
    if bottom - top <= 0 or right - left <= 0 or left < 0:
        return None
    if version == "v15":
        bottom = min(bottom + margin, height)
    return left, top, right, bottom


def test_face_box_random_vs_plain_statement() -> None:
    rng = np.random.default_rng(1)
    for seed in range(30):
        x_min, chin = rng.uniform(-3, 200), rng.uniform(150, 430)
        lm = synthetic_landmarks(x_min, x_min + rng.uniform(30, 200), chin, chin - rng.uniform(20, 140), seed)
        shift, margin = int(rng.integers(-9, 10)), int(rng.integers(0, 20))
        for version in ("v1", "v15"):
            want = plain_face_box(lm, 420, version, shift, margin)
            if want is None:
                with pytest.raises(FaceBoxRejected):
                    face_box(lm, (420, 640, 3), version, bbox_shift=shift, extra_margin=margin)
            else:
                assert face_box(lm, (420, 640, 3), version, bbox_shift=shift, extra_margin=margin) == want


def test_crop_box() -> None:
    # s = int(max(w, h) // 2 * 1.5), square around the integer centre.
    assert crop_box((100, 140, 200, 310)) == (23, 98, 277, 352)  # w 100, h 170: s = int(85 * 1.5) = 127
    assert crop_box((0, 0, 101, 51)) == (-25, -50, 125, 100)  # s = int(50 * 1.5) = 75
    assert crop_box((10, 10, 30, 20), expand=1.2) == (8, 3, 32, 27)  # s = int(10 * 1.2) = 12
    rng = np.random.default_rng(2)
    for _ in range(50):
        x1, y1 = (int(v) for v in rng.integers(-50, 500, 2))
        w, h = (int(v) for v in rng.integers(1, 300, 2))
        s = int(max(w, h) // 2 * 1.5)
        cx, cy = (x1 + x1 + w) // 2, (y1 + y1 + h) // 2
        assert crop_box((x1, y1, x1 + w, y1 + h)) == (cx - s, cy - s, cx + s, cy + s)


def test_blur_kernel_size() -> None:
    assert [blur_kernel_size(w) for w in (200, 300, 450, 194, 20, 10)] == [21, 31, 45, 19, 3, 1]


def test_mask_region_and_blur(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    lm = astronaut_landmarks
    box = face_box(lm, astronaut.shape, "v15")
    crop = crop_box(box)
    cw = crop[2] - crop[0]
    region = mask_region(lm, box, crop)
    assert region.shape == (cw, cw) and region.dtype == np.uint8 and set(np.unique(region)) == {0, 255}
    half = int(cw * 0.5)
    assert not region[:half].any()
    bx1, by1, bx2, by2 = (box[0] - crop[0], box[1] - crop[1], box[2] - crop[0], box[3] - crop[1])
    outside_box = np.ones_like(region, bool)
    outside_box[by1:by2, bx1:bx2] = False
    assert not region[outside_box].any()
    # Every kept pixel lies in the face-oval polygon (1 px of rasterisation slack).
    oval: np.ndarray = (lm[list(FACE_OVAL_INDICES)] - np.array(crop[:2], np.float32)).reshape(-1, 1, 2)
    ys, xs = np.nonzero(region)
    assert all(cv2.pointPolygonTest(oval, (float(x), float(y)), True) >= -1.0 for y, x in zip(ys[::7], xs[::7]))
    assert region.sum() / 255 > 2000  # the lower face, not a sliver
    blurred = blend_mask(lm, box, crop)
    k = int(0.1 * cw // 2 * 2) + 1
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(region, (k, k), 0))
    assert not np.array_equal(blurred, cv2.GaussianBlur(region, (k + 2, k + 2), 0))
    assert not blurred[: half - k // 2 - 1].any()  # the blur reaches at most k//2 rows above the half line
