"""Paste a generated 256x256 face back into the full frame (upstream blending.py, musetalk.md 6.3).

Upstream pastes the face (resized to the face box) into the expanded square crop, then composites the crop over
the frame with the blurred mask as alpha. Outside the face box the pasted crop equals the frame, so the net effect
is: inside the face box, ``out = face*a + frame*(1-a)`` with ``a = mask/255``; every other pixel is unchanged.
A ``BlendPlan`` precomputes, per avatar frame, the part of the face box where the alpha is non-zero (clipped to the
frame) and that alpha as float32, so a frame costs one resize, one copy and a small weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from musetalk.face import Box


@dataclass(frozen=True, eq=False)
class BlendPlan:
    frame_shape: tuple[int, int]  # (H, W)
    box_size: tuple[int, int]  # (w, h) the face is resized to
    dst: tuple[slice, slice]  # rows, cols of the frame that change
    src: tuple[slice, slice]  # the same pixels in the resized face
    alpha: np.ndarray  # float32 (rows, cols, 1) in [0, 1]

    def apply(self, frame: np.ndarray, face: np.ndarray) -> np.ndarray:
        """A new BGR frame with ``face`` (any size BGR uint8, normally 256x256) blended in."""
        if frame.shape[:2] != self.frame_shape or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame shape {frame.shape} does not match the plan's {self.frame_shape}")
        if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
            raise ValueError(f"expected an (h, w, 3) uint8 BGR face, got {face.shape} {face.dtype}")
        out = frame.copy()
        if self.alpha.size == 0:
            return out
        resized = cv2.resize(np.ascontiguousarray(face), self.box_size, interpolation=cv2.INTER_LINEAR)
        base = frame[self.dst].astype(np.float32)
        blended = base + (resized[self.src].astype(np.float32) - base) * self.alpha
        out[self.dst] = (blended + 0.5).astype(np.uint8)  # round half up; values stay in [0, 255]
        return out


def prepare_blend(face_box: Box, crop_box: Box, mask: np.ndarray, frame_shape: tuple[int, ...]) -> BlendPlan:
    """Precompute the paste of a face into ``face_box`` with the crop-sized ``mask`` (uint8 0..255).

    The crop box and the face box may extend outside the frame; pixels outside it are dropped.
    """
    h, w = frame_shape[:2]
    bx1, by1, bx2, by2 = face_box
    cx1, cy1, cx2, cy2 = crop_box
    if bx2 <= bx1 or by2 <= by1:
        raise ValueError(f"empty face box {face_box}")
    if mask.shape != (cy2 - cy1, cx2 - cx1):
        raise ValueError(f"mask shape {mask.shape} does not match the crop box {crop_box}")
    # Only face-box pixels can change (the crop outside it holds the original frame); clip to frame and crop.
    x1, y1 = max(bx1, cx1, 0), max(by1, cy1, 0)
    x2, y2 = min(bx2, cx2, w), min(by2, cy2, h)
    alpha = np.zeros((0, 0, 1), np.float32)
    dst = src = (slice(0, 0), slice(0, 0))
    if x2 > x1 and y2 > y1:
        sub = mask[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1]
        rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
        if rows.size:
            r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            alpha = (sub[r0:r1, c0:c1].astype(np.float32) / 255.0)[:, :, None]
            dst = (slice(y1 + r0, y1 + r1), slice(x1 + c0, x1 + c1))
            src = (slice(y1 + r0 - by1, y1 + r1 - by1), slice(x1 + c0 - bx1, x1 + c1 - bx1))
    return BlendPlan((h, w), (bx2 - bx1, by2 - by1), dst, src, alpha)


def paste_face(frame: np.ndarray, face: np.ndarray, face_box: Box, crop_box: Box, mask: np.ndarray) -> np.ndarray:
    """One-off paste; for a stream, build the plan once per avatar frame with prepare_blend."""
    return prepare_blend(face_box, crop_box, mask, frame.shape).apply(frame, face)
