"""server/media.py: the 16 -> 48 kHz upsampler, the tracks' frames, timestamps and bounded queues, the tracks as a
session's sink; then a real aiortc peer receiving the session's tracks over loopback."""

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from core.clock import AUDIO_OUT_RATE, AUDIO_OUT_SAMPLES_PER_FRAME, VIDEO_CLOCK_RATE
from core.items import Kind, OutputTick, Source
from core.units import TICK_SAMPLES
from engines.lite import LiteEngine
from pipeline.session import Session
from server.media import QUEUE_TICKS, AvatarAudioTrack, AvatarVideoTrack, SessionTracks, Upsampler, to_s16
from testing.probe import ProbeEngine, synthetic_avatar
from testing.rtc import media_time_ms, received


def tick(k: int, level: float = 0.25) -> OutputTick:
    """Tick k: a frame whose pixels say k (and differ across the frame), audio at a constant level."""
    frame = (np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3) + k).astype(np.uint8)
    return OutputTick(
        tick=k,
        frame=frame,
        audio=np.full(TICK_SAMPLES, level, np.float32),
        kind=Kind.SPEECH,
        source=Source.SPEECH,
        events=[],
        turn=0,
    )


def tone(n: int, hz: float, rate: int, start: int = 0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * (start + np.arange(n)) / rate)


def test_upsampling_triples_the_rate_and_keeps_a_tone_with_half_a_millisecond_of_delay() -> None:
    out = Upsampler()(tone(1600, 440, 16000))
    assert len(out) == 3 * 1600
    delay = 47 / 2  # a linear-phase FIR of 48 taps: (taps - 1) / 2 samples at 48 kHz, about 0.5 ms
    want = 0.5 * np.sin(2 * np.pi * 440 * (np.arange(len(out)) - delay) / 48000)
    np.testing.assert_allclose(out[200:], want[200:], atol=0.01)  # past the filter's start-up


def test_upsampling_tick_by_tick_equals_upsampling_all_at_once() -> None:
    """The filter state carries over between ticks: no click at a tick boundary."""
    audio = tone(10 * TICK_SAMPLES, 300, 16000)
    whole = Upsampler()(audio)
    chunked = Upsampler()
    parts = [chunked(audio[i : i + TICK_SAMPLES]) for i in range(0, len(audio), TICK_SAMPLES)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-12)


def test_to_s16_scales_rounds_and_clips() -> None:
    got = to_s16(np.array([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0]))
    assert got.dtype == np.int16
    assert got.tolist() == [-32767, -32767, -16384, 0, 8192, 32767, 32767]


async def test_a_video_frame_is_the_ticks_picture_at_the_ticks_90khz_time() -> None:
    track = AvatarVideoTrack()
    out = tick(7)
    track.push(out)
    frame = await track.recv()
    assert frame.pts == 7 * 3600 and frame.time_base == Fraction(1, VIDEO_CLOCK_RATE)
    np.testing.assert_array_equal(frame.to_ndarray(format="bgr24"), out.frame)
    track.stop()


async def test_a_tick_becomes_two_20ms_audio_frames_at_48khz_with_consecutive_times() -> None:
    track = AvatarAudioTrack()
    track.push(tick(5, level=0.5))
    frames = [await track.recv() for _ in range(2)]
    assert [f.pts for f in frames] == [10 * 960, 11 * 960]
    for f in frames:
        assert f.sample_rate == AUDIO_OUT_RATE and f.time_base == Fraction(1, AUDIO_OUT_RATE) and f.format.name == "s16"
        assert f.samples == AUDIO_OUT_SAMPLES_PER_FRAME and f.layout.name == "mono"
    pcm = np.concatenate([f.to_ndarray().ravel() for f in frames])
    assert abs(int(pcm[-1]) - 16384) <= 40  # the level, once the low-pass has settled
    assert track.queue.empty()
    track.stop()


async def test_a_consumer_that_falls_behind_loses_the_oldest_ticks_and_gets_the_newest_in_order() -> None:
    video, audio = AvatarVideoTrack(), AvatarAudioTrack()
    for k in range(QUEUE_TICKS + 4):
        out = tick(k)
        video.push(out)
        audio.push(out)
    assert video.dropped == 4 and audio.dropped == 8  # two audio frames per tick
    assert [(await video.recv()).pts for _ in range(QUEUE_TICKS)] == [k * 3600 for k in range(4, QUEUE_TICKS + 4)]
    assert (await audio.recv()).pts == 2 * 4 * 960
    video.stop()
    audio.stop()


async def test_a_stopped_track_ends_its_reader_and_takes_nothing_more() -> None:
    track = AvatarVideoTrack()
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await waiting
    track.push(tick(0))
    assert track.queue.empty()
    with pytest.raises(MediaStreamError):
        await track.recv()
    track.stop()  # idempotent


async def test_session_tracks_get_every_tick_of_the_session_until_closed() -> None:
    session = Session("tracks", synthetic_avatar(), ProbeEngine(), stepped=True)
    await session.start()
    try:
        tracks = SessionTracks(session)
        shown = [session.step() for _ in range(3)]
        frames = [await tracks.video.recv() for _ in range(3)]
        assert [f.pts for f in frames] == [out.tick * 3600 for out in shown]
        for f, out in zip(frames, shown):
            np.testing.assert_array_equal(f.to_ndarray(format="bgr24"), out.frame)
        assert [(await tracks.audio.recv()).pts for _ in range(6)] == [shown[0].tick * 1920 + 960 * i for i in range(6)]
        tracks.close()
        assert tracks.video.readyState == "ended" and tracks.audio.readyState == "ended"
        session.step()  # no longer a sink: nothing is queued
        assert tracks.video.queue.qsize() == 1 and tracks.audio.queue.qsize() == 1  # only the end marker
    finally:
        await session.close()


async def test_receiver_gets_25fps_video_and_48khz_audio_and_sees_the_avatar_speak(demo_avatar, loopback_only) -> None:
    """A real aiortc peer receives the session's tracks over loopback."""
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
    assert 20 <= (len(video) - 1) / span_s <= 30  # paced at ~25 fps (loosely: a loaded machine stalls)
    assert np.all(np.diff([f.rtp_ts for f in video]) == 3600)  # 90 kHz clock, one tick per frame, no gaps
    assert all(len(f.data) == 960 for f in audio)  # 20 ms at 48 kHz
    assert np.all(np.diff([f.rtp_ts for f in audio]) == 960)
    levels = [float(np.abs(f.data).max()) for f in audio]
    assert max(levels[: 2 * idle_count - 10]) < 0.01 and max(levels) > 0.15  # silence, then the speech
    x1, y1, x2, y2 = (int(v) for v in demo_avatar.face_boxes[0])
    mouth = (slice((y1 + y2) // 2, y2), slice(x1, x2))
    change = [np.abs(f.data[mouth].astype(float) - idle[mouth]).mean() for f in video[idle_count:]]
    assert max(change) > 6  # the mouth opened
    # the video and audio clocks advance together at the receiver, as wall time does (within 10 %: a loaded
    # 2-core machine delays some frames; the offsets themselves are measured by bench/, not asserted here)
    for frames, rate in ((video, 90000), (audio, 48000)):
        media = media_time_ms(frames, rate)
        wall = frames[-1].arrival_ms - frames[0].arrival_ms
        assert abs((media[-1] - media[0]) - wall) < 0.1 * wall
