import numpy as np
import pytest

from core.events import Event, EventKind
from core.items import Kind
from core.units import FRAME_SAMPLES
from pipeline.framer import SILENCE_RMS, AudioFramer


class Ticks:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@pytest.mark.parametrize("chunk", [1, 7, 319, 320, 321, 640, 1000, 4801])
def test_any_chunk_size_gives_exact_20ms_frames_and_nothing_is_lost(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    audio = rng.uniform(-0.5, 0.5, 16000 + 123).astype(np.float32)
    framer = AudioFramer(Ticks(), lead_ticks=3)
    ticks = []
    for start in range(0, len(audio), chunk):
        ticks += framer.push(audio[start : start + chunk], turn=0)
    ticks += framer.flush(turn=0)
    frames = [f.pcm for t in ticks for f in t.frames]
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    joined = np.concatenate(frames)
    assert np.array_equal(joined[: len(audio)], audio)  # same samples, same order
    assert not joined[len(audio) :].any()  # only silence padding after the end
    assert len(joined) - len(audio) < 2 * FRAME_SAMPLES
    # ticks are consecutive from the lead, each one exactly two frames
    assert [t.tick for t in ticks] == list(range(3, 3 + len(ticks)))
    assert [t.seg_pos for t in ticks] == list(range(len(ticks)))
    assert ticks[-1].last and not any(t.last for t in ticks[:-1])


def test_late_audio_starts_a_new_stretch_at_the_lead_and_on_time_audio_continues() -> None:
    clock = Ticks()
    framer = AudioFramer(clock, lead_ticks=4)
    one_tick = np.full(640, 0.1, np.float32)
    assert [t.tick for t in framer.push(one_tick, 0)] == [4]
    clock.now = 2  # still ahead of the output: continues contiguously
    assert [t.tick for t in framer.push(one_tick, 0)] == [5]
    clock.now = 9  # the slot for tick 6 has passed: restart `lead` ahead of now
    late = framer.push(one_tick, 0)
    assert [(t.tick, t.seg_pos) for t in late] == [(13, 0)]


def test_silence_and_speech_tagging() -> None:
    framer = AudioFramer(Ticks(), lead_ticks=1)
    quiet = np.full(FRAME_SAMPLES, SILENCE_RMS * 0.5, np.float32)
    loud = np.full(FRAME_SAMPLES, SILENCE_RMS * 2, np.float32)
    (t1,) = framer.push(np.concatenate([quiet, quiet]), 0)
    (t2,) = framer.push(np.concatenate([quiet, loud]), 0)
    assert [f.kind for f in t1.frames] == [Kind.SILENCE, Kind.SILENCE] and t1.silent
    assert [f.kind for f in t2.frames] == [Kind.SILENCE, Kind.SPEECH] and not t2.silent


def test_events_ride_on_the_first_and_last_frames() -> None:
    framer = AudioFramer(Ticks(), lead_ticks=1)
    start, end = Event(EventKind.SENTENCE_START, "Hello."), Event(EventKind.SENTENCE_END, "Hello.")
    ticks = framer.push(np.full(1000, 0.1, np.float32), 0, events=[start])
    ticks += framer.flush(0, events=[end])
    frames = [f for t in ticks for f in t.frames]
    assert frames[0].events == [start]
    assert frames[-1].events == [end]
    assert all(not f.events for f in frames[1:-1])


def test_end_event_without_pending_audio_joins_the_last_unplayed_tick_or_gets_a_silent_one() -> None:
    clock = Ticks()
    framer = AudioFramer(clock, lead_ticks=1)
    (last,) = framer.push(np.full(640, 0.1, np.float32), 0)
    end = Event(EventKind.SENTENCE_END, "x")
    assert framer.flush(0, events=[end]) == []
    assert last.frames[1].events == [end] and last.last  # not played yet: it carries the event
    clock.now = last.tick  # now it is being played: a new silent tick is needed
    (tick,) = framer.flush(0, events=[end])
    assert tick.silent and tick.frames[1].events == [end] and tick.last
    assert framer.flush(0) == []


def test_events_pushed_without_audio_ride_on_the_end_too_and_are_not_left_for_the_next_utterance() -> None:
    framer = AudioFramer(Ticks(), lead_ticks=1)
    (last,) = framer.push(np.full(640, 0.1, np.float32), 0)
    start, end = Event(EventKind.SENTENCE_START, "Hi."), Event(EventKind.SENTENCE_END, "Hi.")
    assert framer.push(np.zeros(0, np.float32), 0, events=[start]) == []
    assert framer.flush(0, events=[end]) == []
    assert last.frames[1].events == [start, end]
    (following,) = framer.push(np.full(640, 0.1, np.float32), 0)
    assert not any(f.events for f in following.frames)


def test_reset_forgets_unscheduled_audio() -> None:
    framer = AudioFramer(Ticks(), lead_ticks=1)
    assert framer.push(np.full(500, 0.1, np.float32), 0) == []
    assert framer.buffered_samples == 500
    framer.reset()
    assert framer.buffered_samples == 0 and framer.flush(1) == []


def test_rejects_non_finite_audio() -> None:
    with pytest.raises(ValueError, match="NaN"):
        AudioFramer(Ticks(), 1).push(np.array([0.0, np.nan], np.float32), 0)


def test_a_flush_ends_the_utterance_and_says_how_much_of_its_last_tick_is_audio() -> None:
    clock = Ticks()
    framer = AudioFramer(clock, lead_ticks=2)
    first = framer.push(np.full(3 * 640 + 100, 0.1, np.float32), 0)
    first += framer.flush(0)  # 100 samples padded to a whole tick
    assert [(t.tick, t.seg_pos, t.utterance_pos, t.samples, t.last) for t in first] == [
        (2, 0, 0, 640, False),
        (3, 1, 1, 640, False),
        (4, 2, 2, 640, False),
        (5, 3, 3, 100, True),
    ]
    # on time: the stretch goes on, the next utterance starts over
    second = framer.push(np.full(640 + 320 + 7, 0.1, np.float32), 0) + framer.flush(0)
    assert [(t.tick, t.seg_pos, t.utterance_pos, t.samples, t.last) for t in second] == [
        (6, 4, 0, 640, False),
        (7, 5, 1, 327, True),
    ]
    # a flush with nothing pending marks the last tick scheduled; its audio is whole
    third = framer.push(np.full(1280, 0.1, np.float32), 0)
    assert framer.flush(0) == [] and third[-1].last and third[-1].samples == 640
    clock.now = 20  # late audio starts a new stretch, and a new utterance
    (late,) = framer.push(np.full(640, 0.1, np.float32), 0)
    assert (late.tick, late.seg_pos, late.utterance_pos) == (22, 0, 0)


def test_an_event_carrier_after_the_utterance_holds_no_audio_of_it() -> None:
    clock = Ticks()
    framer = AudioFramer(clock, lead_ticks=1)
    (last,) = framer.push(np.full(640, 0.1, np.float32), 0)
    clock.now = last.tick
    (carrier,) = framer.flush(0, events=[Event(EventKind.SENTENCE_END, "x")])
    assert carrier.last and carrier.samples == 0 and carrier.silent
