"""A real aiortc peer receives the session's tracks over loopback."""
import asyncio

import numpy as np

from engines.lite import LiteEngine
from pipeline.session import Session
from testing.rtc import media_time_ms, received


async def test_receiver_gets_25fps_video_and_48khz_audio_and_sees_the_avatar_speak(demo_avatar) -> None:
    session = Session("rtc", demo_avatar, LiteEngine())
    async with received(session) as receiver:
        await asyncio.sleep(1.5)
        idle_count = len(receiver.frames["video"])
        idle = receiver.frames["video"][-1].data
        speech = (0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.float32)
        await session.push_audio(speech)
        await session.end_speech()
        await asyncio.sleep(1.5)
    assert session.closed and not session.worker.alive

    video, audio = receiver.frames["video"], receiver.frames["audio"]
    assert receiver.unmatched == 0
    assert video[0].data.shape == demo_avatar.frames.shape[1:]
    span_s = (video[-1].arrival_ms - video[0].arrival_ms) / 1000
    assert 23 <= (len(video) - 1) / span_s <= 27  # ~25 fps
    assert np.all(np.diff([f.rtp_ts for f in video]) == 3600)  # 90 kHz clock, one tick per frame, no gaps
    assert all(len(f.data) == 960 for f in audio)  # 20 ms at 48 kHz
    assert np.all(np.diff([f.rtp_ts for f in audio]) == 960)
    levels = [float(np.abs(f.data).max()) for f in audio]
    assert max(levels[: 2 * idle_count - 10]) < 0.01 and max(levels) > 0.15  # silence, then the speech
    x1, y1, x2, y2 = (int(v) for v in demo_avatar.face_boxes[0])
    mouth = (slice((y1 + y2) // 2, y2), slice(x1, x2))
    change = [np.abs(f.data[mouth].astype(float) - idle[mouth]).mean() for f in video[idle_count:]]
    assert max(change) > 6  # the mouth opened
    # the video and audio clocks advance together at the receiver (same media time per second of wall time)
    v_t, a_t = media_time_ms(video, 90000), media_time_ms(audio, 48000)
    assert abs((v_t[-1] - v_t[0]) - (video[-1].arrival_ms - video[0].arrival_ms)) < 80
    assert abs((a_t[-1] - a_t[0]) - (audio[-1].arrival_ms - audio[0].arrival_ms)) < 80
