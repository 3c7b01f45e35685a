from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from musetalk.blending import BlendPlan, paste_face, prepare_blend
from musetalk.face import Box


def slow_paste(frame: np.ndarray, face: np.ndarray, box: Box, crop: Box, mask: np.ndarray) -> np.ndarray:
    """Per-pixel statement: inside crop and face box, alpha = mask/255 blends the resized face over the frame."""
    bx1, by1, bx2, by2 = box
    cx1, cy1, cx2, cy2 = crop
    resized = cv2.resize(face, (bx2 - bx1, by2 - by1), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    out = frame.copy()
    for y in range(frame.shape[0]):
        for x in range(frame.shape[1]):
            if cx1 <= x < cx2 and cy1 <= y < cy2 and bx1 <= x < bx2 and by1 <= y < by2:
                a = mask[y - cy1, x - cx1] / 255.0
                value = resized[y - by1, x - bx1] * a + frame[y, x] * (1.0 - a)
                out[y, x] = np.floor(value + 0.5)
    return out


def pil_paste(frame: np.ndarray, face: np.ndarray, box: Box, crop: Box, mask: np.ndarray) -> np.ndarray:
    """Upstream get_image_blending: paste the face into the crop, then the crop into the frame through the mask."""
    body = Image.fromarray(frame[:, :, ::-1].copy())
    face_large = body.crop(crop)
    resized = cv2.resize(face, (box[2] - box[0], box[3] - box[1]))
    face_large.paste(Image.fromarray(resized[:, :, ::-1].copy()), (box[0] - crop[0], box[1] - crop[1]))
    body.paste(face_large, crop[:2], Image.fromarray(mask, mode="L"))
    return np.array(body)[:, :, ::-1]


def random_case(rng: np.random.Generator, h: int, w: int, box: Box, crop: Box) -> tuple[np.ndarray, ...]:
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (crop[3] - crop[1], crop[2] - crop[0]), dtype=np.uint8)
    mask[mask < 60] = 0  # some fully transparent pixels
    mask[mask > 230] = 255
    return frame, face, mask


CASES: list[tuple[int, int, Box, Box]] = [
    (40, 48, (12, 10, 30, 34), (6, 7, 36, 37)),  # all inside
    (40, 48, (0, 0, 20, 25), (-10, -8, 30, 32)),  # crop above / left of the frame
    (40, 48, (30, 20, 48, 40), (24, 15, 54, 45)),  # crop below / right of the frame
    (30, 30, (-5, -4, 35, 36), (-20, -20, 50, 50)),  # face box larger than the frame
    (30, 30, (40, 40, 50, 50), (35, 35, 55, 55)),  # entirely outside: nothing changes
]


@pytest.mark.parametrize(("h", "w", "box", "crop"), CASES)
def test_paste_matches_slow_reference(h: int, w: int, box: Box, crop: Box) -> None:
    rng = np.random.default_rng(h * w + box[0])
    frame, face, mask = random_case(rng, h, w, box, crop)
    inputs = [a.copy() for a in (frame, face, mask)]
    got = paste_face(frame, face, box, crop, mask)
    for before, after in zip(inputs, (frame, face, mask)):
        np.testing.assert_array_equal(before, after)  # inputs untouched
    assert got is not frame and got.dtype == np.uint8 and got.shape == frame.shape
    want = slow_paste(frame, face, box, crop, mask)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 rounding at .5 only


@pytest.mark.parametrize(("h", "w", "box", "crop"), CASES)
def test_paste_matches_upstream_pil_semantics(h: int, w: int, box: Box, crop: Box) -> None:
    frame, face, mask = random_case(np.random.default_rng(7), h, w, box, crop)
    got = paste_face(frame, face, box, crop, mask)
    want = pil_paste(frame, face, box, crop, mask)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # PIL's fixed-point blend rounds differently


def test_pixels_outside_the_mask_are_untouched() -> None:
    rng = np.random.default_rng(3)
    h, w, box, crop = 64, 80, (20, 16, 52, 56), (10, 10, 62, 62)
    frame, face, _ = random_case(rng, h, w, box, crop)
    mask = np.zeros((52, 52), np.uint8)
    mask[30:45, 15:40] = 200
    got = paste_face(frame, face, box, crop, mask)
    changed = np.zeros((h, w), bool)
    changed[10 + 30 : 10 + 45, 10 + 15 : 10 + 40] = True
    np.testing.assert_array_equal(got[~changed], frame[~changed])
    assert (got[changed] != frame[changed]).any()
    # Full alpha puts exactly the resized face in.
    mask[:] = 255
    full = paste_face(frame, face, box, crop, mask)
    np.testing.assert_array_equal(full[16:56, 20:52], cv2.resize(face, (32, 40), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(full[:16], frame[:16])


def test_plan_is_reusable_and_checks_shapes() -> None:
    rng = np.random.default_rng(4)
    h, w, box, crop = 40, 48, (12, 10, 30, 34), (6, 7, 36, 37)
    frame, face, mask = random_case(rng, h, w, box, crop)
    plan = prepare_blend(box, crop, mask, frame.shape)
    assert isinstance(plan, BlendPlan)
    other_face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for f in (face, other_face):
        np.testing.assert_array_equal(plan.apply(frame, f), paste_face(frame, f, box, crop, mask))
    with pytest.raises(ValueError, match="frame shape"):
        plan.apply(frame[:-1], face)
    with pytest.raises(ValueError, match="BGR face"):
        plan.apply(frame, face[..., 0])
    with pytest.raises(ValueError, match="mask shape"):
        prepare_blend(box, crop, mask[:-1], frame.shape)
    with pytest.raises(ValueError, match="empty face box"):
        prepare_blend((10, 10, 10, 20), crop, mask, frame.shape)
