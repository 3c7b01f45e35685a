"""Avatar preparation and loading times.

    .venv/bin/python -m bench.avatar

Prepares the demo avatar (one still image) and a synthetic 100-frame 512x512 video (the astronaut drifting a
few pixels per frame, written with x264), then loads each many times. Without MuseTalk weights, so no VAE
latents are encoded (with weights on a GPU that adds one VAE encode per frame).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, summary
from musetalk.avatar import load_avatar
from musetalk.avatar_demo import demo_image
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from testing.media import shifted, write_video


def main() -> None:
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root, no_models = Path(tmp) / "avatars", Path(tmp) / "no-models"
        image = demo_image()
        video = write_video(Path(tmp) / "drift.mp4", [shifted(image, i % 7, i % 5) for i in range(100)])
        for avatar_id, source in (("demo", image), ("video100", video)):
            started = time.perf_counter()
            prepare_avatar(source, avatar_id, root, PrepareOptions(progress=False, models_dir=no_models))
            prepared = time.perf_counter() - started
            loads = []
            for _ in range(50):
                started = time.perf_counter()
                avatar = load_avatar(avatar_id, root)
                np.asarray(avatar.frames[0]).sum()  # touch one frame: the arrays are memory-mapped
                loads.append(1000 * (time.perf_counter() - started))
            print(
                f"{avatar_id}: {avatar.n_frames} frames {avatar.frames.shape[2]}x{avatar.frames.shape[1]}: "
                f"prepare {prepared:.2f} s ({1000 * prepared / avatar.n_frames:.1f} ms/frame); "
                f"load {summary(loads)}"
            )


if __name__ == "__main__":
    main()
