"""server/recording.py: record file names, and what a recording holds: every tick's frame and sound at the tick's
time (H.264 + AAC in mp4), the video size made even, ticks that came while the encoder was behind counted as
dropped, nothing taken after the end. A stop before the first frame and an encoder failure:
tests/server/test_hardening.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from core.items import OutputTick
from core.units import SAMPLE_RATE, TICK_SAMPLES
from pipeline.session import Session
from server import recording
from server.errors import ApiError
from server.recording import Recorder, record_path
from testing.media import marker_tick
from testing.probe import ProbeEngine, synthetic_avatar
from testing.server_client import until

SIZE = HEIGHT, WIDTH = 63, 81  # odd on purpose: H.264 in yuv420p wants even sizes


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    """A stepped session that is never stepped: the tests hand the recorder their own ticks."""
    session = Session("rec", synthetic_avatar(), ProbeEngine(), stepped=True)
    await session.start()
    yield session
    await session.close()


async def record(session: Session, path: Path, ticks: list[OutputTick]) -> Recorder:
    recorder = Recorder(session, path)
    recorder.start()
    for out in ticks:
        recorder(out)
    # the encoder is given all the time it needs: what it drops past DRAIN_SECONDS is a test of its own
    assert await until(lambda: recorder.frames == len(ticks), 30)
    assert await asyncio.wait_for(recorder.finish(), 30) == path
    return recorder


def seconds(frame: av.VideoFrame | av.AudioFrame) -> float:
    assert frame.time is not None, "a decoded frame without a timestamp"
    return frame.time


def read_back(path: Path) -> tuple[list[tuple[float, np.ndarray]], float, np.ndarray]:
    """(time in s, picture) of every video frame; the audio's start time in s and its samples."""
    with av.open(str(path)) as container:
        (video,) = container.streams.video
        (audio,) = container.streams.audio
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert audio.codec_context.sample_rate == SAMPLE_RATE and audio.codec_context.layout.nb_channels == 1
        frames = [(seconds(f), f.to_ndarray(format="bgr24")) for f in container.decode(video)]
        container.seek(0)
        parts = list(container.decode(audio))
    return frames, seconds(parts[0]), np.concatenate([p.to_ndarray()[0] for p in parts])


@pytest.mark.parametrize("session_id", ["abc", "A-b_9", "x" * 64])
def test_a_record_is_named_after_its_session(session_id: str, tmp_path: Path) -> None:
    assert record_path(tmp_path, session_id) == tmp_path / f"{session_id}.mp4"


@pytest.mark.parametrize("session_id", ["", "../etc/passwd", "a/b", "a.b", "x" * 65, "é"])
def test_a_session_id_that_is_not_a_plain_file_name_is_a_bad_request(session_id: str, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as e:
        record_path(tmp_path, session_id)
    assert e.value.status == 400


async def test_every_tick_is_one_frame_at_25fps_and_the_picture_meets_its_sound(
    session: Session, tmp_path: Path
) -> None:
    first, onset = 100, 130  # ticks are numbered from the session's start; the file starts at 0
    path = tmp_path / "records" / "rec.mp4"  # the folder is made when the recording starts
    recorder = await record(session, path, [marker_tick(k, onset, SIZE) for k in range(first, first + 50)])
    assert recorder.frames == 50 and recorder.dropped == 0
    assert [p.name for p in path.parent.iterdir()] == ["rec.mp4"]  # no partial file left beside it

    frames, audio_start, samples = read_back(path)
    assert len(frames) == 50
    assert [round(t * 25) for t, _ in frames] == list(range(50))
    assert {f.shape for _, f in frames} == {(HEIGHT - 1, WIDTH - 1, 3)}
    white = next(t for t, f in frames if f.mean() > 128)
    loud = np.flatnonzero(np.abs(samples) > 0.1)
    sound = audio_start + loud[0] / SAMPLE_RATE
    assert white == pytest.approx((onset - first) / 25)
    assert abs(sound - white) < 0.005  # the same instant: the tone starts with its frame
    assert len(samples) >= 50 * TICK_SAMPLES - 1024  # all of the audio (AAC may hold back a frame's priming)


async def test_ticks_beyond_the_queue_are_dropped_and_counted_and_nothing_is_taken_after_the_end(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "QUEUE_TICKS", 3)
    recorder = Recorder(session, tmp_path / "rec.mp4")
    for k in range(5):  # before the thread runs: the queue holds 3 ticks
        recorder(marker_tick(k, 0, SIZE))
    assert recorder.dropped == 2
    recorder.start()
    assert await until(lambda: recorder.frames == 3, 30)
    path = await asyncio.wait_for(recorder.finish(), 30)
    assert len(read_back(path)[0]) == 3 and recorder.dropped == 2
    recorder(marker_tick(5, 0, SIZE))  # after the end
    assert recorder.frames == 3 and recorder.dropped == 2 and recorder._queue.empty()
    assert await asyncio.wait_for(recorder.finish(), 5) == path  # ending again gives the same file
