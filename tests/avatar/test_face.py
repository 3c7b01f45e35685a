from __future__ import annotations

import cv2
import numpy as np
import pytest
from mediapipe.python.solutions.face_mesh import FACEMESH_FACE_OVAL

from musetalk.face import (
    FACE_OVAL_INDICES, HALF_FACE_INDEX, JAW_INDICES, FaceLandmarker, blend_mask, blur_kernel_size, crop_box, face_box,
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
        with pytest.raises(ValueError):
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


def test_face_box_clipping() -> None:
    lm = synthetic_landmarks(-20.5, 90.0, chin=95.2, y29=40.0)  # left edge and bottom outside a 100x80 frame
    assert face_box(lm, (100, 80, 3), "v1") == (0, 0, 80, 95)  # top = max(0, 80 - 95)
    assert face_box(lm, (100, 80, 3), "v15", extra_margin=10) == (0, 0, 80, 100)  # margin clipped to height
    with pytest.raises(ValueError, match="empty face box"):
        face_box(lm + 500, (100, 80, 3), "v1")
    with pytest.raises(ValueError):
        face_box(lm, (100, 80, 3), "v2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        face_box(lm[:68], (100, 80, 3), "v1")


def plain_face_box(lm: np.ndarray, height: int, version: str, shift: int, margin: int) -> tuple[int, ...]:
    jaw = [(int(np.floor(lm[i, 0])), int(np.floor(lm[i, 1]))) for i in JAW_INDICES]
    bottom = max(y for _, y in jaw)
    y29 = int(np.floor(lm[HALF_FACE_INDEX, 1]))
    if version == "v1":
        y29 += shift
    top = 2 * y29 - bottom
    if top < 0:
        top = 0
    if version == "v15":
        bottom += margin
    if bottom > height:
        bottom = height
    return min(x for x, _ in jaw), top, max(x for x, _ in jaw), bottom


def test_face_box_random_vs_plain_statement() -> None:
    rng = np.random.default_rng(1)
    for seed in range(30):
        x_min, chin = rng.uniform(0, 200), rng.uniform(150, 430)
        lm = synthetic_landmarks(x_min, x_min + rng.uniform(30, 200), chin, chin - rng.uniform(20, 140), seed)
        shift, margin = int(rng.integers(-9, 10)), int(rng.integers(0, 20))
        for version in ("v1", "v15"):
            got = face_box(lm, (420, 640, 3), version, bbox_shift=shift, extra_margin=margin)
            assert got == plain_face_box(lm, 420, version, shift, margin)


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
    oval = (lm[list(FACE_OVAL_INDICES)] - np.array(crop[:2], np.float32)).reshape(-1, 1, 2)
    ys, xs = np.nonzero(region)
    assert all(cv2.pointPolygonTest(oval, (float(x), float(y)), True) >= -1.0 for y, x in zip(ys[::7], xs[::7]))
    assert region.sum() / 255 > 2000  # the lower face, not a sliver
    blurred = blend_mask(lm, box, crop)
    k = int(0.1 * cw // 2 * 2) + 1
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(region, (k, k), 0))
    assert not np.array_equal(blurred, cv2.GaussianBlur(region, (k + 2, k + 2), 0))
    assert not blurred[:half - k // 2 - 1].any()  # the blur reaches at most k//2 rows above the half line
