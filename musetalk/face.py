"""Face landmarks (mediapipe face mesh), MuseTalk's face/crop boxes and the blend mask.

MuseTalk states its crop rule on the 68 iBUG landmarks that DWPose finds (reference musetalk.md 6.1). We use
mediapipe 0.10.21's legacy face mesh instead (468 points, model bundled in the wheel, no mmcv), so the rule needs
the few iBUG points it reads, expressed as mesh indices:

=================  ===========================================  ============================================
rule needs         iBUG-68                                      mediapipe face mesh (468)
=================  ===========================================  ============================================
x range, chin      jaw 0..16 (ear level -> chin -> ear level)   lower arc of the face oval, 127 -> 152 -> 356
                                                                (23 points, ``JAW_INDICES``); 152 = chin
nose bridge        27 (nasion), 28, 29, 30 (tip), equally       6, 197, 195, 5 along the ridge line
                   spaced down the ridge                        168-6-197-195-5-4-1 (``NOSE_BRIDGE``)
"half face" point  29                                           195 (``HALF_FACE_INDEX``)
=================  ===========================================  ============================================

Why these: iBUG 0/16 sit at the outer eye-corner level and the jaw runs through the chin (8); mesh points 127/356
are the face-oval points at that level and 152 is the chin, so min/max x and max y over the arc are what the 68
points give (in iBUG the jaw points are the extreme ones in x and y). iBUG 27..30 divide the nose ridge into
equal thirds from the nasion to the tip; in the canonical 68-point mean shape, 29 lies about a third of the way from
the brow tops to the chin. Checked on ``skimage.data.astronaut()`` (512x512): mesh brow tops y=86.7, chin y=175.5,
x range 178.3..271.9 (dlib's 68 points on the same image, reference probes.md 5b: x 179..272, y 87..178);
the ridge points are 6: y=106.4, 197: 111.4, 195: 116.0, 5: 121.0, and a third of the way from brow to chin is
y=116.3, i.e. point 195. A picture with the jaw arc, the four ridge points, the face box, the crop box and the mask
drawn on the astronaut was inspected: the arc follows the jaw line from the temples around the chin, 195 sits at
the middle of the nose, the box runs from the forehead to just under the chin.

The blend mask: MuseTalk's BiSeNet face parsing (``musetalk.face_parsing``) when its weights are present; without
them, the filled face-oval polygon of the mesh. Either region then goes through the same upstream steps (face box and
lower-half intersection, ``lower_face``; Gaussian blur with the realtime kernel size, ``blur_mask``; musetalk.md 6.3).
"""

from __future__ import annotations

import os
from types import TracebackType

import cv2
import numpy as np

from core.extras import require
from musetalk.config import Version, check_version

Box = tuple[int, int, int, int]

N_LANDMARKS = 468
# Face-oval outline of the mesh in polygon order (mediapipe's FACEMESH_FACE_OVAL edge set, chained clockwise from
# the forehead); a test checks that it is exactly the chain of that edge set.
FACE_OVAL_INDICES: tuple[int, ...] = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
# Lower arc of the oval from 356 (right temple, image left-to-right is 127 .. 356) around the chin to 127.
JAW_INDICES: tuple[int, ...] = FACE_OVAL_INDICES[FACE_OVAL_INDICES.index(356) : FACE_OVAL_INDICES.index(127) + 1]
CHIN_INDEX = 152
NOSE_BRIDGE: dict[int, int] = {27: 6, 28: 197, 29: 195, 30: 5}  # iBUG index -> mesh index
HALF_FACE_INDEX = NOSE_BRIDGE[29]
# The points face_box reads, standing for the 68 of upstream's rule (brows, eyes and mouth lie inside the jaw's x
# range and above the chin, so they never set the box); point 29 is among them, at BOX_HALF_FACE.
BOX_INDICES: tuple[int, ...] = JAW_INDICES + tuple(NOSE_BRIDGE.values())
BOX_HALF_FACE = BOX_INDICES.index(HALF_FACE_INDEX)

CROP_EXPAND = 1.5  # upstream HEAD (v1 used 1.2)
UPPER_BOUNDARY_RATIO = 0.5

# Face parsing modes (musetalk.md 6.2) and, per model version, upstream's realtime default mode and cheek width:
# v1.5 scripts pass --parsing_mode jaw with 90 px cheeks; v1 blends with "raw" and FaceParsing's class default 80.
PARSING_MODES = ("jaw", "raw", "neck")
DEFAULT_PARSING_MODE: dict[str, str] = {"v1": "raw", "v15": "jaw"}
DEFAULT_CHEEK_WIDTH: dict[str, int] = {"v1": 80, "v15": 90}
OVAL_MASK = "face-oval"  # the manifest's name for the fallback mask; BiSeNet masks are "bisenet-<mode>"


def check_parsing(mode: str, cheek_width: int) -> None:
    """ValueError unless `mode` is a parsing mode and `cheek_width` fits the 512 px parsing input (0..256)."""
    if mode not in PARSING_MODES:
        raise ValueError(f"unknown parsing mode {mode!r}; expected one of {', '.join(PARSING_MODES)}")
    if not isinstance(cheek_width, int) or not 0 <= cheek_width <= 256:
        raise ValueError(
            f"cheek_width must be an integer from 0 to 256 (px of the 512 px parsing input), got {cheek_width!r}"
        )


class FaceLandmarker:
    """One mediapipe FaceMesh for one video (tracking between frames) or for still images.

    Use as a context manager so the native graph is closed deterministically.
    """

    def __init__(self, static_image_mode: bool = False, min_detection_confidence: float = 0.5) -> None:
        # mediapipe logs through glog/absl at import and graph start; keep the console clean.
        os.environ.setdefault("GLOG_minloglevel", "2")
        # lazy: a 1-2 s import only preparation needs
        face_mesh = require("mediapipe.python.solutions.face_mesh", "prepare", "avatar preparation")

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=static_image_mode,
            max_num_faces=1,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
        )

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 pixel coordinates of the first face in a BGR uint8 frame, or None."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        h, w = frame_bgr.shape[:2]
        result = self._mesh.process(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x, p.y) for p in lm[:N_LANDMARKS]], dtype=np.float32)
        return pts * np.array([w, h], dtype=np.float32)

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_landmarks(landmarks: np.ndarray) -> None:
    if landmarks.shape != (N_LANDMARKS, 2):
        raise ValueError(f"expected ({N_LANDMARKS}, 2) landmarks, got {landmarks.shape}")


class FaceBoxRejected(ValueError):
    """The official rule rejects this landmark box (empty, or x1 < 0; see ``face_box``)."""


def face_box(
    landmarks: np.ndarray, frame_shape: tuple[int, ...], version: Version, bbox_shift: int = 0, extra_margin: int = 10
) -> Box:
    """MuseTalk's face box (x1, y1, x2, y2): upstream ``get_landmark_and_bbox`` on the mapped points (musetalk.md 6.1).

    Step by step, as upstream does it on its 68 points (here ``BOX_INDICES``: the jaw arc and the nose ridge):
    the coordinates are truncated toward zero (``astype(np.int32)``, so -20.5 -> -20); v1 only adds ``bbox_shift``
    to point 29's y *in place*, so the shifted point takes part in the max below (v1.5 ignores the shift, as
    upstream); ``y2`` = max y, ``y1 = max(0, 2*y29 - y2)``, ``x1, x2`` = min/max x. Nothing is clipped to the frame:
    ``y2`` and ``x2`` may lie beyond it (the crop ``frame[y1:y2, x1:x2]`` then holds the part inside, as upstream).
    The box is rejected (``FaceBoxRejected``) when it is empty or ``x1 < 0`` -- upstream then falls back to its S3FD
    detector's box; we have no S3FD and the caller uses the nearest good frame -- and, beyond upstream, when it lies
    wholly right of or below the frame (upstream's crop would be empty). Only after that, v1.5 adds
    ``extra_margin`` under the chin and clamps that to the frame: ``y2 = min(y2 + extra_margin, H)``.
    """
    _check_landmarks(landmarks)
    check_version(version)
    h, w = frame_shape[:2]
    lm = landmarks[list(BOX_INDICES)].astype(np.int32)  # truncation toward zero, not floor
    if version == "v1" and bbox_shift:
        lm[BOX_HALF_FACE, 1] += bbox_shift  # in place: the shifted point takes part in the max
    y_half = int(lm[BOX_HALF_FACE, 1])
    y2 = int(lm[:, 1].max())
    y1 = max(0, y_half - (y2 - y_half))
    x1, x2 = int(lm[:, 0].min()), int(lm[:, 0].max())
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        raise FaceBoxRejected(f"face box {(x1, y1, x2, y2)} rejected by the official rule (empty or x1 < 0)")
    if x1 >= w or y1 >= h:
        raise FaceBoxRejected(f"face box {(x1, y1, x2, y2)} lies outside the {w}x{h} frame")
    if version == "v15":
        y2 = min(y2 + extra_margin, h)
    return x1, y1, x2, y2


def crop_box(box: Box, expand: float = CROP_EXPAND) -> Box:
    """Upstream get_crop_box: a square of side 2s around the box centre; it may extend outside the frame."""
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, xc + s, yc + s


def blur_kernel_size(crop_width: int) -> int:
    """Realtime upstream kernel (get_image_prepare_material): odd, about a tenth of the crop width."""
    return int(0.1 * crop_width // 2 * 2) + 1


def lower_face(region: np.ndarray, box: Box, crop: Box) -> np.ndarray:
    """A crop-sized uint8 0/255 region kept only inside the face box and in the lower half of the crop (rows from
    ``int(crop height * 0.5)``), as upstream get_image_prepare_material does to the parsing mask."""
    cx1, cy1, cx2, cy2 = crop
    ch = cy2 - cy1
    if region.shape != (ch, cx2 - cx1):
        raise ValueError(f"region shape {region.shape} does not match the crop box {crop}")
    keep = np.zeros_like(region)
    bx1, by1, bx2, by2 = box[0] - cx1, box[1] - cy1, box[2] - cx1, box[3] - cy1
    top = max(by1, int(ch * UPPER_BOUNDARY_RATIO), 0)
    keep[top : max(by2, 0), max(bx1, 0) : max(bx2, 0)] = 255
    return cv2.bitwise_and(region, keep)


def blur_mask(region: np.ndarray) -> np.ndarray:
    """The alpha mask: the region Gaussian-blurred with the realtime kernel for its (crop) width."""
    k = blur_kernel_size(region.shape[1])
    return cv2.GaussianBlur(region, (k, k), 0)


def mask_region(landmarks: np.ndarray, box: Box, crop: Box) -> np.ndarray:
    """The unblurred blend region in crop coordinates, uint8 0/255: face oval ∩ face box ∩ lower half of the crop."""
    _check_landmarks(landmarks)
    cx1, cy1, cx2, cy2 = crop
    region = np.zeros((cy2 - cy1, cx2 - cx1), np.uint8)
    oval: np.ndarray = (landmarks[list(FACE_OVAL_INDICES)] - np.array([cx1, cy1], np.float32)).round().astype(np.int32)
    cv2.fillPoly(region, [oval], (255,))
    return lower_face(region, box, crop)


def blend_mask(landmarks: np.ndarray, box: Box, crop: Box) -> np.ndarray:
    """The crop-sized uint8 alpha mask (0..255) used to paste a generated face back (see mask_region)."""
    return blur_mask(mask_region(landmarks, box, crop))
