"""Stepped sessions: the output clock is advanced by the test, so hours of media run in seconds."""

import asyncio

import numpy as np
import pytest

from core.events import Event, EventKind
from core.items import Source
from core.units import TICK_SAMPLES
from pipeline.actions import ActionClip
from pipeline.session import Session, SessionClosed, SessionOptions
from testing.probe import (
    FACE_BOX,
    ProbeEngine,
    face_value,
    probe_audio,
    probe_value,
    synthetic_avatar,
)

NO_FADE = SessionOptions(crossfade_ticks=0)


async def make_session(engine: ProbeEngine | None = None, options: SessionOptions = NO_FADE, **kw) -> Session:
    session = Session("s", synthetic_avatar(), engine or ProbeEngine(), options=options, stepped=True, **kw)
    await session.start()
    return session


def outside_face(frame: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = FACE_BOX
    f = frame.copy()
    f[y1:y2, x1:x2] = 0
    return f


async def test_video_frame_i_travels_with_audio_frames_2i_and_2i_plus_1() -> None:
    engine = ProbeEngine(batch_size=4, lead_ticks=3)
    session = await make_session(engine)
    audio = probe_audio(30)
    for start in range(0, len(audio), 777):  # odd chunk sizes: framing must not shift anything
        await session.push_audio(audio[start : start + 777])
    await session.end_speech()
    outs = [session.step() for _ in range(40)]
    speech = [o for o in outs if o.source is Source.SPEECH]
    assert [o.tick for o in speech] == list(range(3, 33))
    for j, o in enumerate(speech):
        # the audio of tick 3+j is exactly audio frames 2j and 2j+1 of the input ...
        assert np.array_equal(o.audio, audio[j * TICK_SAMPLES : (j + 1) * TICK_SAMPLES])
        # ... and the video shown with it was made from exactly that audio
        assert face_value(o.frame) == probe_value(o.audio)
        # composited onto the avatar frame of the same tick (the idle cycle continues under the face)
        idle_frame = session.avatar.frames[session.avatar.cycle_index(o.tick)]
        assert np.array_equal(outside_face(o.frame), outside_face(idle_frame))
    assert all(o.source is Source.IDLE and not o.audio.any() for o in outs[:3] + outs[33:])
    await session.close()


async def test_no_drift_over_ten_minutes_of_media() -> None:
    """15,000 ticks with speech bursts: every burst starts exactly `lead` ticks after its audio and stays paired."""
    session = await make_session(ProbeEngine(batch_size=4, lead_ticks=3))
    burst = probe_audio(20)
    starts, k = [], 0
    while k < 15_000:
        if k % 500 == 0:
            await session.push_audio(burst)
            await session.end_speech()
            starts.append(k)
        out = session.step()
        assert out.tick == k
        if out.source is Source.SPEECH:
            assert face_value(out.frame) == probe_value(out.audio)
        k += 1
    assert session.stats.ticks == 15_000
    assert session.stats.speech_frames == 20 * len(starts)
    assert session.stats.repeated_frames == 0 and session.stats.dropped_frames == 0
    assert session.stats.last_latency_ms == pytest.approx(3 * 40, abs=1e-6)
    await session.close()


async def test_silent_batches_skip_the_model_and_show_the_avatar_frames() -> None:
    engine = ProbeEngine(batch_size=4)
    session = await make_session(engine)
    await session.push_audio(np.zeros(TICK_SAMPLES * 8, np.float32))
    await session.end_speech()
    for _ in range(200):  # the worker consumes the silent ticks in its own thread (counted after taking them)
        if not len(session.worker.inbox) and session.stats.silent_batches >= 2:
            break
        await asyncio.sleep(0.01)
    outs = [session.step() for _ in range(14)]
    assert engine.calls == 0 and session.stats.silent_batches == 2
    for o in outs:
        assert o.source is Source.IDLE
        assert np.array_equal(o.frame, session.avatar.frames[session.avatar.cycle_index(o.tick)])
    await session.close()


async def test_events_fire_when_their_audio_is_played() -> None:
    session = await make_session()
    listener = session.subscribe()
    await session.push_audio(probe_audio(5), events=[Event(EventKind.SENTENCE_START, "Hi.")])
    await session.end_speech(events=[Event(EventKind.SENTENCE_END, "Hi.")])
    fired = {}
    for _ in range(12):
        out = session.step()
        for e in out.events:
            fired[e.kind] = out.tick
    assert fired == {EventKind.SENTENCE_START: 3, EventKind.SENTENCE_END: 7}
    assert listener.get_nowait().kind is EventKind.SENTENCE_START
    await session.close()
    assert listener.get_nowait().kind is EventKind.SENTENCE_END and listener.get_nowait() is None


async def test_interrupt_drops_old_turn_items_at_every_stage() -> None:
    engine = ProbeEngine(batch_size=4, lead_ticks=3)
    session = await make_session(engine)
    old_turn = session.turn
    await session.push_audio(probe_audio(200))
    await session.push_audio(np.full(100, 0.1, np.float32))  # a partial frame waiting in the framer
    for _ in range(10):
        assert session.step().source in (Source.IDLE, Source.SPEECH)
    assert len(session.worker.inbox) > 0 and session.output.scheduled_ticks > 0
    new_turn = session.interrupt()
    assert new_turn == old_turn + 1
    # every stage is empty of the old turn
    assert session.output.scheduled_ticks == 0 and len(session.worker.inbox) == 0
    assert len(session.worker.outbox) == 0 and session.framer.buffered_samples == 0
    # the very next tick is silent and leaving speech; the one after is the plain idle frame
    first, second = session.step(), session.step()
    assert not first.audio.any() and first.source is Source.IDLE
    assert np.array_equal(second.frame, session.avatar.frames[session.avatar.cycle_index(second.tick)])
    # a producer of the old turn is refused; the new turn plays normally
    assert await session.push_audio(probe_audio(4), turn=old_turn) is False
    assert await session.end_speech(turn=old_turn) is False
    assert await session.push_audio(probe_audio(4), turn=new_turn) is True
    await session.end_speech()
    outs = [session.step() for _ in range(8)]
    assert sum(o.source is Source.SPEECH for o in outs) == 4 and all(o.turn == new_turn for o in outs)
    assert session.stats.dropped_stale > 0
    await session.close()


async def test_render_in_flight_during_interrupt_is_discarded() -> None:
    engine = ProbeEngine(batch_size=4, lead_ticks=3, delay=0.3)
    session = await make_session(engine)
    await session.push_audio(probe_audio(8))
    await session.end_speech()
    for _ in range(100):  # wait until the worker is inside render()
        if engine.calls:
            break
        await asyncio.sleep(0.01)
    session.interrupt()
    await asyncio.sleep(0.5)  # the render finishes after the interrupt
    outs = [session.step(wait_for_video=0.2) for _ in range(12)]
    assert all(o.source is Source.IDLE for o in outs)
    await session.close()


async def test_crossfade_at_switches_between_idle_speech_and_action() -> None:
    avatar = synthetic_avatar()
    clip = ActionClip(frames=np.full((4, 64, 64, 3), 250, np.uint8), audio=np.full(4 * TICK_SAMPLES, 0.05, np.float32))
    session = Session(
        "s",
        avatar,
        ProbeEngine(batch_size=2, lead_ticks=2),
        actions={7: clip},
        options=SessionOptions(crossfade_ticks=2),
        stepped=True,
    )
    await session.start()
    idle0 = session.step()
    session.set_audiotype(7)
    a1, a2, a3, a4 = (session.step() for _ in range(4))
    assert [o.source for o in (a1, a2, a3, a4)] == [Source.ACTION] * 4
    # fade from the last idle frame into the clip: 1/3, 2/3, then the clip itself
    idle_px, clip_px = int(idle0.frame[0, 0, 0]), 250
    assert int(a1.frame[0, 0, 0]) == round(idle_px + (clip_px - idle_px) / 3)
    assert int(a2.frame[0, 0, 0]) == round(idle_px + 2 * (clip_px - idle_px) / 3)
    assert int(a3.frame[0, 0, 0]) == clip_px and int(a4.frame[0, 0, 0]) == clip_px
    assert np.allclose(a3.audio, 0.05)  # the clip's own audio plays with it
    back = session.step()
    assert back.source is Source.IDLE and 0 < abs(int(back.frame[0, 0, 0]) - clip_px) < abs(
        int(avatar.frames[avatar.cycle_index(back.tick)][0, 0, 0]) - clip_px
    )
    assert session.stats.action_frames == 4
    with pytest.raises(KeyError):
        session.set_audiotype(99)
    await session.close()


async def test_speech_takes_over_from_an_action_clip() -> None:
    clip = ActionClip(frames=np.full((100, 64, 64, 3), 250, np.uint8))
    session = Session(
        "s",
        synthetic_avatar(),
        ProbeEngine(batch_size=2, lead_ticks=2),
        actions={1: clip},
        options=NO_FADE,
        stepped=True,
    )
    await session.start()
    session.set_audiotype(1)
    await session.push_audio(probe_audio(4))
    await session.end_speech()
    sources = [session.step().source for _ in range(8)]
    assert sources == [Source.IDLE, Source.ACTION] + [Source.SPEECH] * 4 + [Source.IDLE] * 2
    await session.close()


async def test_engine_falling_behind_keeps_real_time_and_counts_it() -> None:
    engine = ProbeEngine(batch_size=2, lead_ticks=2, delay=0.15)
    session = await make_session(engine)
    await session.push_audio(probe_audio(10))
    await session.end_speech()
    outs = [session.step(wait_for_video=0.0) for _ in range(14)]  # the output never waits for the engine
    assert [o.tick for o in outs] == list(range(14))
    speech_audio = [o for o in outs if o.audio.any()]
    assert len(speech_audio) == 10  # every audio frame still played, on time
    assert session.stats.repeated_frames > 0
    await asyncio.sleep(1.0)
    session.step()
    assert session.stats.dropped_frames > 0  # the late frames were thrown away, not played late
    # the next stretch is scheduled further ahead: far enough for the batches measured so far
    assert session.worker.lead_ticks >= 1 + 0.15 / 0.04 > engine.lead_ticks
    await session.push_audio(probe_audio(2))
    assert session.output._audio[-1].tick - session._next_tick >= session.worker.lead_ticks - 1
    await session.close()


async def test_closed_session_refuses_input() -> None:
    session = await make_session()
    await session.close()
    await session.close()  # idempotent
    with pytest.raises(SessionClosed):
        await session.push_audio(probe_audio(1))
    assert not session.worker.alive
