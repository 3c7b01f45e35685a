"""The inference worker's batching rules, driven by hand on a settable clock (no thread): right context, the end of
an utterance, ticks past the engine's last frame, late audio, and the lead that keeps streamed audio on time."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from core.units import TICK_SAMPLES
from engines.base import RenderRequest, lead_ticks_for
from engines.batcher import StaleJob
from pipeline.compositor import Compositor
from pipeline.framer import AudioFramer
from pipeline.stats import SessionStats
from pipeline.worker import InferenceWorker
from testing.probe import ProbeEngine, ProbeRenderer, probe_audio, synthetic_avatar

TICK = 0.04


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    @staticmethod
    def tick_time(k: int) -> float:
        return k * TICK

    def current_tick(self) -> int:
        return int(self.t / TICK + 1e-9)


class Rig:
    """A worker (thread not started), its engine, a framer feeding it, and what came out."""

    def __init__(self, engine: ProbeEngine, lead: int = 10, budget: float = 0.02) -> None:
        self.clock, self.engine, self.avatar = Clock(), engine, synthetic_avatar()
        self.worker = InferenceWorker(
            engine,
            engine.bind(self.avatar).new_renderer(),
            Compositor(self.avatar),
            self.avatar.cycle_index,
            self.clock.tick_time,
            self.clock.now,
            lambda: 0,
            SessionStats(),
            queue_capacity=10_000,
            out_capacity=10_000,
            own_frame=lambda i: self.avatar.frames[i],
        )
        self.worker._budget = budget
        self.framer = AudioFramer(self.clock.current_tick, lead)

    def push(self, audio: np.ndarray) -> None:
        for t in self.framer.push(audio, 0):
            assert self.worker.inbox.put(t)

    def flush(self) -> None:
        for t in self.framer.flush(0):
            assert self.worker.inbox.put(t)

    def render_ready(self) -> int:
        """Render every batch the worker would take now; the number of batches."""
        n = 0
        while True:
            with self.worker.inbox.cond:  # as the worker's thread holds it
                if self.worker._plan() is None:
                    return n
            budget = self.worker._budget
            self.worker._render(*self.worker._next_batch())
            self.worker._budget = budget  # as measured on the clock of the test, not this machine's
            n += 1

    @property
    def requests(self) -> list[RenderRequest]:
        return self.engine.requests

    def results(self) -> dict[int, np.ndarray]:
        out = {}
        while (r := self.worker.outbox.peek()) is not None:
            self.worker.outbox.popleft()
            out[r.tick] = r.frame
        return out


def right_audio(request: RenderRequest) -> np.ndarray:
    return request.audio[len(request.audio) - request.right_samples :]


def test_a_batch_waits_for_its_right_context_and_at_the_deadline_takes_only_the_ticks_that_have_it() -> None:
    rig = Rig(ProbeEngine(batch_size=4, right=3), lead=10)
    audio = probe_audio(5)
    rig.push(audio)  # ticks 10..14: only 10 and 11 have three ticks after them
    assert rig.render_ready() == 0
    rig.clock.t = 10 * TICK - 0.03  # within a batch time (the budget) of tick 10's deadline, 0.38 s
    assert rig.render_ready() == 0
    rig.clock.t = 10 * TICK - 0.02
    assert rig.render_ready() == 1
    (request,) = rig.requests
    assert list(request.ticks) == [10, 11] and request.utterance_samples is None
    np.testing.assert_array_equal(right_audio(request), audio[2 * TICK_SAMPLES :])  # ticks 12..14, real audio


def test_mid_utterance_late_audio_is_waited_for_never_zero_filled_and_a_tick_past_its_time_is_dropped() -> None:
    rig = Rig(ProbeEngine(batch_size=4, right=3), lead=10)
    audio = probe_audio(12)
    rig.push(audio[: 6 * TICK_SAMPLES])  # ticks 10..15
    rig.clock.t = 0.39
    assert rig.render_ready() == 1  # 10, 11, 12 (their context: 13..15)
    rig.clock.t = 0.51  # tick 13's deadline has passed; its context (16..18) has not come
    assert rig.render_ready() == 0
    rig.push(audio[6 * TICK_SAMPLES : 10 * TICK_SAMPLES])  # late, but before tick 13 is due: 16..19
    assert rig.render_ready() == 1
    assert [list(r.ticks) for r in rig.requests] == [[10, 11, 12], [13, 14, 15, 16]]
    for r in rig.requests:
        assert r.right_samples == 3 * TICK_SAMPLES and r.utterance_samples is None
        first = r.ticks[-1] - 10 + 1
        np.testing.assert_array_equal(right_audio(r), audio[first * TICK_SAMPLES : (first + 3) * TICK_SAMPLES])
    rig.clock.t = 0.69  # tick 17 is due (0.68) and has no context: it can no longer be shown in time
    assert rig.render_ready() == 0 and rig.worker.stats.dropped_frames == 1
    rig.flush()  # the utterance ends with tick 19: 18 and 19 need no more context
    assert rig.render_ready() == 1
    last = rig.requests[-1]
    assert list(last.ticks) == [18, 19] and last.right_samples == 0
    assert last.utterance_samples == 10 * TICK_SAMPLES and last.utterance_pos == 8
    assert len(rig.worker.inbox) == 0


class OfficialCountRenderer(ProbeRenderer):
    """MuseTalk v1.5's frame count: floor((n / 16000) * 25) frames for an utterance of n samples."""

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        faces = super().render(request)
        if request.utterance_samples is None:
            return faces
        frames = math.floor((request.utterance_samples / 16000) * 25)
        return faces[: max(0, frames - request.utterance_pos)]


@pytest.mark.parametrize(("n", "frames"), [(37120, 57), (36800, 57), (18560, 28)])
def test_the_end_of_an_utterance_reaches_the_renderer_and_ticks_past_its_frames_show_the_avatar(n, frames) -> None:
    rig = Rig(ProbeEngine(batch_size=8, left=4, right=7), lead=3)
    rig.worker.renderer = OfficialCountRenderer(rig.engine)
    rig.push(np.full(n, 0.1, np.float32))
    rig.flush()
    rig.render_ready()
    ticks = math.ceil(n / TICK_SAMPLES)
    finals = [r for r in rig.requests if r.utterance_samples is not None]
    assert finals and all(r.utterance_samples == n for r in finals)
    assert all(r.ticks[-1] + r.right_samples // TICK_SAMPLES == 3 + ticks - 1 for r in finals)  # up to the end
    results = rig.results()
    assert sorted(results) == list(range(3, 3 + ticks))
    avatar = rig.avatar
    for tick, frame in results.items():
        own = avatar.frames[avatar.cycle_index(tick)]
        assert np.array_equal(frame, own) == (tick - 3 >= frames), tick


def test_a_flush_splits_a_stretch_into_utterances_with_their_own_context() -> None:
    rig = Rig(ProbeEngine(batch_size=4, left=6, right=3), lead=2)
    a, b = probe_audio(6), probe_audio(6, first=50)
    rig.push(a)
    rig.flush()
    rig.push(b)  # on time: same stretch (ticks 8..13), next utterance
    rig.flush()
    rig.render_ready()
    assert [list(r.ticks) for r in rig.requests] == [[2, 3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13]]
    first_start, first_end, second_start, second_end = rig.requests
    # the right context of the first utterance stops at its end; the second one's left context starts at its start
    assert first_start.utterance_samples == first_end.utterance_samples == 6 * TICK_SAMPLES
    np.testing.assert_array_equal(right_audio(first_start), a[4 * TICK_SAMPLES :])
    assert first_end.right_samples == 0
    np.testing.assert_array_equal(first_end.audio[: first_end.left_samples], a[: 4 * TICK_SAMPLES])
    assert (second_start.utterance_pos, second_start.left_samples, second_start.seg_pos) == (0, 0, 6)
    assert second_start.utterance_samples == second_end.utterance_samples == 6 * TICK_SAMPLES
    np.testing.assert_array_equal(second_end.audio[: second_end.left_samples], b[: 4 * TICK_SAMPLES])


def test_silent_ticks_at_the_deadline_need_no_context() -> None:
    rig = Rig(ProbeEngine(batch_size=4, right=3), lead=5)
    rig.push(np.concatenate([np.zeros(2 * TICK_SAMPLES, np.float32), probe_audio(1, first=5)]))
    rig.clock.t = 5 * TICK - 0.02
    assert rig.render_ready() == 1 and rig.engine.calls == 0 and rig.worker.stats.silent_batches == 1
    assert len(rig.worker.inbox) == 1


def test_a_full_batch_waits_for_more_of_a_streamed_utterance_until_a_batch_time_before_its_deadline() -> None:
    """An engine that uses all the audio it is given gets the rest of the utterance when it comes in time."""

    class UsesAllItIsGiven(ProbeEngine):  # as MuseTalk: what comes after its right context helps too
        max_right_context_ticks = 40

    engine = UsesAllItIsGiven(batch_size=4, right=3)
    rig = Rig(engine, lead=12, budget=0.1)
    audio = probe_audio(20)
    rig.push(audio[: 8 * TICK_SAMPLES])  # ticks 12..19: a full batch with its context
    assert rig.render_ready() == 0  # more may come: tick 12 is due at 0.48 - 0.1
    rig.push(audio[8 * TICK_SAMPLES :])
    rig.flush()
    assert rig.render_ready() == 5  # the utterance is complete: every batch at once, with all of it
    assert [r.right_samples // TICK_SAMPLES for r in rig.requests] == [16, 12, 8, 4, 0]
    rig2 = Rig(engine, lead=12, budget=0.1)
    rig2.push(audio[: 8 * TICK_SAMPLES])
    rig2.clock.t = 0.28  # 2 budgets before tick 12
    assert rig2.render_ready() == 1 and list(rig2.requests[-1].ticks) == [12, 13, 14, 15]


@pytest.mark.parametrize(("right", "budget"), [(3, 0.05), (7, 0.15), (2, 0.3)])
@pytest.mark.parametrize("phase", [0.0, 0.013, 0.031])
def test_the_lead_keeps_audio_that_arrives_as_it_plays_on_time_with_its_context(right, budget, phase) -> None:
    """A voice streaming at real-time pace (each 20 ms frame complete 20 ms after the one before): with the lead of
    `lead_ticks_for`, every tick is rendered with its whole right context and done before it is due even when a
    batch takes the whole budget. The clock moves 1 ms at a time (the worker wakes at its deadlines); one tick less
    of lead fails this for some of these cases."""
    rig = Rig(ProbeEngine(batch_size=4, right=right), lead=lead_ticks_for(right, budget), budget=budget)
    audio = probe_audio(60)
    frames = len(audio) // 320
    done_by: dict[int, float] = {}
    pushed, ms = 0, 0
    while pushed < frames or len(rig.worker.inbox):
        rig.clock.t = ms / 1000
        arrived = min(frames, max(0, math.floor((rig.clock.t - phase) / 0.02 + 1e-9)))
        if arrived > pushed:
            rig.push(audio[pushed * 320 : arrived * 320])
            pushed = arrived
            if pushed == frames:
                rig.flush()
        before = len(rig.requests)
        rig.render_ready()
        for r in rig.requests[before:]:
            for t in r.ticks:
                done_by[t] = rig.clock.t + budget
        ms += 1
    assert rig.worker.stats.dropped_frames == 0
    first = rig.requests[0].ticks[0]
    assert sorted(done_by) == list(range(first, first + 60))
    assert all(done <= Clock.tick_time(t) + 0.001 for t, done in done_by.items())
    for r in rig.requests:
        if r.utterance_samples is None:
            assert r.right_samples >= right * TICK_SAMPLES


class TurnRenderer(ProbeRenderer):
    """Ends the session's turn while "its jobs wait for the models", as a batching engine then reports it."""

    def __init__(self, engine: ProbeEngine, turn: list[int]) -> None:
        super().__init__(engine)
        self.turn = turn

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        super().render(request)
        self.turn[0] += 1  # interrupted meanwhile
        if request.current_turn() != request.turn:
            raise StaleJob("turn ended before its job ran")
        return []


def test_a_request_carries_the_media_clock_deadline_and_its_turn_and_a_stale_render_is_a_drop() -> None:
    rig = Rig(ProbeEngine(batch_size=2, right=0), lead=10)
    turn = [0]
    rig.worker.current_turn = lambda: turn[0]
    rig.push(probe_audio(2))
    rig.clock.t = 10 * TICK - 0.02
    before = time.monotonic()
    assert rig.render_ready() == 1
    (request,) = rig.requests
    # due 20 ms from now on the session's clock: the same 20 ms from now in time.monotonic() seconds
    assert before + 0.02 <= request.deadline <= time.monotonic() + 0.02
    assert request.turn == 0 and request.current_turn() == 0
    rig.worker._stop.set()  # a closing session (stop()): no turn wants its queued model work any more
    assert request.current_turn() == -1

    rig = Rig(ProbeEngine(batch_size=2, right=0), lead=10)
    rig.worker.current_turn = lambda: turn[0]
    rig.worker.renderer = TurnRenderer(rig.engine, turn)
    rig.push(probe_audio(2))
    rig.clock.t = 10 * TICK
    with rig.worker.inbox.cond:
        batch = rig.worker._next_batch()
    rig.worker._render_or_drop(*batch)
    stats = rig.worker.stats
    assert (stats.dropped_stale, stats.render_errors) == (2, 0) and rig.results() == {}
