"""Names for the arrays that travel between the packages, so that a signature says what an array holds."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

Pcm: TypeAlias = NDArray[np.float32]  # mono audio in [-1, 1], at core.units.SAMPLE_RATE unless a rate is given
Image: TypeAlias = NDArray[np.uint8]  # BGR pictures: one (H, W, 3) frame or face crop, or a stack of them
