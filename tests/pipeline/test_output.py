"""The output's picture switches: the mouth starting or stopping on the avatar's own frames is never faded (lips
must not lag the sound); switches to or from an action clip, a different picture, are."""

import numpy as np

from core.items import Source
from core.units import TICK_SAMPLES
from pipeline.actions import ActionClip
from pipeline.compositor import Compositor
from pipeline.session import Session, SessionOptions
from testing.probe import ProbeEngine, probe_audio, probe_value, synthetic_avatar

FADE = SessionOptions(crossfade_ticks=2)


def speaking_frame(session: Session, tick: int, pcm: np.ndarray) -> np.ndarray:
    """What the probe engine's face for `pcm`, pasted into the avatar frame of `tick`, looks like: exactly."""
    index = session.avatar.cycle_index(tick)
    face = np.full((256, 256, 3), probe_value(pcm), np.uint8)
    return Compositor(session.avatar).compose(index, face)


def idle_frame(session: Session, tick: int) -> np.ndarray:
    return np.asarray(session.avatar.frames[session.avatar.cycle_index(tick)])


async def test_speech_starts_and_stops_on_the_avatar_frames_without_a_crossfade() -> None:
    session = Session("s", synthetic_avatar(), ProbeEngine(batch_size=2, lead_ticks=2), options=FADE, stepped=True)
    await session.start()
    await session.push_audio(probe_audio(4, first=100))
    await session.end_speech()
    outs = [session.step() for _ in range(9)]
    assert [o.source for o in outs] == [Source.IDLE] * 2 + [Source.SPEECH] * 4 + [Source.IDLE] * 3
    for o in outs:  # every frame is exactly the engine's speaking frame or the avatar's idle frame: no blend
        speaking = o.source is Source.SPEECH
        expected = speaking_frame(session, o.tick, o.audio) if speaking else idle_frame(session, o.tick)
        assert np.array_equal(o.frame, expected), (o.tick, o.source)
    await session.close()


async def test_interrupt_shows_the_idle_frame_at_once() -> None:
    session = Session("s", synthetic_avatar(), ProbeEngine(batch_size=2, lead_ticks=2), options=FADE, stepped=True)
    await session.start()
    await session.push_audio(probe_audio(50, first=100))
    assert [session.step().source for _ in range(5)][-1] is Source.SPEECH
    session.interrupt()
    first = session.step()
    assert first.source is Source.IDLE and np.array_equal(first.frame, idle_frame(session, first.tick))
    await session.close()


async def test_switches_to_and_from_an_action_clip_still_crossfade() -> None:
    clip = ActionClip(frames=np.full((3, 64, 64, 3), 250, np.uint8), audio=np.zeros(3 * TICK_SAMPLES, np.float32))
    session = Session(
        "s", synthetic_avatar(), ProbeEngine(batch_size=2, lead_ticks=2), actions={5: clip}, options=FADE, stepped=True
    )
    await session.start()
    last_idle = session.step().frame.astype(float)
    session.set_audiotype(5)
    a1 = session.step()
    assert a1.source is Source.ACTION
    assert np.allclose(a1.frame, last_idle + (250 - last_idle) / 3, atol=0.51)  # 1/3 of the way into the clip
    # speech takes over from the clip: a switch of picture, faded from the clip's frame
    await session.push_audio(probe_audio(4, first=100))
    await session.end_speech()
    outs = [session.step() for _ in range(3)]
    speech = next(o for o in outs if o.source is Source.SPEECH)
    before = outs[outs.index(speech) - 1] if outs.index(speech) else a1
    assert before.source is Source.ACTION
    plain = speaking_frame(session, speech.tick, speech.audio).astype(float)
    blend = before.frame.astype(float) + (plain - before.frame.astype(float)) / 3
    assert np.allclose(speech.frame, blend, atol=0.51) and not np.array_equal(speech.frame, plain.astype(np.uint8))
    await session.close()


async def test_an_action_clip_whose_ticks_were_skipped_is_over() -> None:
    """The clock skips ticks after a long stall of the event loop: a clip it skipped past ends (it once raised an
    IndexError in the ticker, which then stopped the session's output)."""
    clip = ActionClip(frames=np.full((3, 64, 64, 3), 250, np.uint8))
    session = Session("s", synthetic_avatar(), ProbeEngine(), actions={5: clip}, stepped=True)
    await session.start()
    session.step()
    session.set_audiotype(5)  # from tick 1
    assert session.output.tick(30).source is Source.IDLE and session.output.action is None
    await session.close()
