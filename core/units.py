"""The media units every package shares: one definition of each rate and frame size.

Audio inside the server is float32 mono at SAMPLE_RATE; video runs at VIDEO_FPS. MuseTalk was trained on exactly
these (whisper at 16 kHz, 25 fps video, one whisper step per 20 ms), so they are also the model's rates.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
VIDEO_FPS = 25
FRAME_SAMPLES = SAMPLE_RATE // 50  # one 20 ms audio frame: 320 samples, one whisper encoder step
TICK_SAMPLES = SAMPLE_RATE // VIDEO_FPS  # one video frame's worth of audio: 640 samples, two audio frames
TICK_SECONDS = 1.0 / VIDEO_FPS
