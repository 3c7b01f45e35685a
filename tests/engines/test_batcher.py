"""The cross-session batcher: scheduling with a fake model of known cost, then the tiny real MuseTalk models."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from core.items import Source
from engines.batcher import Batcher, BatcherStopped, Job, StaleJob
from engines.musetalk_batch import (
    ENCODER,
    FACES,
    encode_window_batched,
    musetalk_models,
)
from testing.fake_models import FakeFacesModel, FakeModel

FAR = 1e9  # a deadline that never comes


def rows(first: float, n: int) -> np.ndarray:
    """n rows of one column: first, first+1, ... (so every row says which job it came from)."""
    return (first + np.arange(n, dtype=np.float32))[:, None]


def job(first: float, n: int = 1, deadline: float = FAR, **kw) -> Job:
    return Job("fake", (rows(first, n),), deadline, **kw)


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


def test_earliest_deadline_first(fake) -> None:
    batcher = Batcher({"fake": fake}, sizes=(1,), gather_s=0)
    now = time.monotonic()
    futures = [batcher.submit(job(i, deadline=now + d)) for i, d in enumerate([30, 10, 20, 40, 0])]
    with batcher:  # all queued before the owner starts: the order is the deadlines'
        results = [f.result(5) for f in futures]
    assert fake.firsts() == [4, 1, 2, 0, 3]
    assert [float(r[0, 0]) for r in results] == [0, 2, 4, 6, 8]
    assert fake.threads == {"batcher"}  # only the owner thread runs the model


def test_jobs_of_several_sessions_share_one_batch(fake) -> None:
    with Batcher({"fake": fake}, sizes=(1, 2, 4, 8), gather_s=0.3) as batcher:
        with ThreadPoolExecutor(3) as sessions:  # three sessions' worker threads, 2 frames each
            futures = list(sessions.map(lambda i: batcher.submit(job(10 * i, 2)), range(3)))
        results = [f.result(5) for f in futures]
    assert [(size, n) for size, n, _ in fake.calls] == [(8, 6)]  # one call: 6 rows padded to 8
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, 2 * rows(10 * i, 2))
    assert batcher.stats.padded_rows == 2 and batcher.stats.jobs_done == 3


def test_padding_to_fixed_sizes_and_splitting_a_large_job(fake) -> None:
    with Batcher({"fake": fake}, sizes=(8, 1, 4, 2), gather_s=0) as batcher:
        alone = batcher.submit(job(0, 3)).result(5)  # 3 rows -> a batch of 4
    batcher = Batcher({"fake": fake}, sizes=(8, 1, 4, 2), gather_s=0)
    futures = [batcher.submit(job(100 * i, n, deadline=i)) for i, n in [(1, 5), (2, 11)]]
    with batcher:
        results = [alone] + [f.result(5) for f in futures]
    # then 5 + the first 3 of 11 -> 8; the remaining 8 -> 8
    assert [(size, n) for size, n, _ in fake.calls] == [(4, 3), (8, 8), (8, 8)]
    size, n, x = fake.calls[0]
    np.testing.assert_array_equal(x[n:], np.repeat(x[n - 1 : n], size - n, axis=0))  # padding repeats the last row
    for i, (r, n) in enumerate(zip(results, [3, 5, 11])):
        np.testing.assert_array_equal(r, 2 * rows(100 * i, n))  # a split job comes back whole and in order
    assert batcher.estimated_cost("fake", 5) > 0 and batcher.stats.batch_sizes == {("fake", 8): 2}


def test_stale_turns_are_dropped_and_never_run(fake) -> None:
    turn = {"a": 0, "b": 0}
    batcher = Batcher({"fake": fake}, sizes=(2,), gather_s=0)
    stale = batcher.submit(job(1, deadline=0, turn=0, current_turn=lambda: turn["a"]))
    kept = batcher.submit(job(2, deadline=1, turn=0, current_turn=lambda: turn["b"]))
    turn["a"] = 1  # session a was interrupted before the owner got to its job
    # a job split over two batches whose turn ends while its first part runs: the rest is not run
    split = batcher.submit(job(10, 4, deadline=2, turn=0, current_turn=lambda: turn["b"]))
    fake.before = lambda x: turn.__setitem__("b", 1) if 10 in x else None  # batch [2, 10]: a's job was dropped
    with batcher:
        np.testing.assert_array_equal(kept.result(5), [[4]])
        with pytest.raises(StaleJob):
            stale.result(5)
        with pytest.raises(StaleJob):
            split.result(5)
    # neither the stale job nor the split job's rest (11..13) ran; a job already packed is not recalled
    assert [x.ravel().tolist() for _, _, x in fake.calls] == [[2, 10]]
    assert batcher.stats.stale_jobs == 2


def test_a_broken_turn_getter_fails_only_its_own_job(fake) -> None:
    def broken() -> int:
        raise KeyError("session gone")

    batcher = Batcher({"fake": fake}, sizes=(2,), gather_s=0)
    bad, good = batcher.submit(job(1, current_turn=broken)), batcher.submit(job(2))
    with batcher:
        with pytest.raises(KeyError):
            bad.result(5)
        np.testing.assert_array_equal(good.result(5), [[4]])
    assert fake.firsts() == [2]


def test_a_cancelled_job_is_not_run(fake) -> None:
    batcher = Batcher({"fake": fake}, sizes=(1,), gather_s=0)
    gone, kept = batcher.submit(job(1)), batcher.submit(job(2))
    assert gone.cancel()  # the session closed
    with batcher:
        kept.result(5)
    assert fake.firsts() == [2] and batcher.stats.cancelled_jobs == 1


def test_a_late_job_is_still_run_first_and_counted(fake) -> None:
    batcher = Batcher({"fake": fake}, sizes=(1,), gather_s=0)
    on_time = batcher.submit(job(1, deadline=time.monotonic() + 60))
    late = batcher.submit(job(2, deadline=time.monotonic() - 0.5))
    with batcher:
        np.testing.assert_array_equal(late.result(5), [[4]])
        on_time.result(5)
    assert fake.firsts() == [2, 1] and batcher.stats.late_jobs == 1


def test_gathering_waits_no_later_than_the_deadline_allows(fake) -> None:
    with Batcher({"fake": fake}, sizes=(1, 2, 4), gather_s=10) as batcher:
        started = time.monotonic()
        urgent = batcher.submit(job(1, deadline=started + 0.05))
        urgent.result(5)  # a partial batch at its deadline, not after the 10 s gather window
        assert time.monotonic() - started < 2
        relaxed = [batcher.submit(job(i)) for i in range(4)]  # a full batch starts at once
        [f.result(5) for f in relaxed]
        assert time.monotonic() - started < 4
    assert [(size, n) for size, n, _ in fake.calls] == [(1, 1), (4, 4)]


def test_kinds_are_batched_separately_in_deadline_order() -> None:
    a, b = FakeModel(), FakeModel()
    batcher = Batcher({"a": a, "b": b}, sizes={"a": (4,), "b": (1, 2)}, gather_s=0)
    fa = [batcher.submit(Job("a", (rows(i, 1),), deadline=d)) for i, d in [(1, 1), (2, 3)]]
    fb = batcher.submit(Job("b", (rows(5, 2),), deadline=2))
    order = []
    a.before = lambda x: order.append("a")
    b.before = lambda x: order.append("b")
    with batcher:
        [f.result(5) for f in [*fa, fb]]
    assert order == ["a", "b"]  # the earliest job picks the kind; both a jobs ride in its batch
    assert [(s, n) for s, n, _ in a.calls] == [(4, 2)] and [(s, n) for s, n, _ in b.calls] == [(2, 2)]


def test_a_model_error_reaches_every_job_of_its_batch_and_the_owner_goes_on(fake) -> None:
    def explode(x):
        if 99 in x:
            raise RuntimeError("CUDA out of memory (fake)")

    fake.before = explode
    batcher = Batcher({"fake": fake}, sizes=(4,), gather_s=0)
    doomed = [batcher.submit(job(99)), batcher.submit(job(1, 2))]
    with batcher:
        errors = []
        for f in doomed:
            with pytest.raises(RuntimeError, match="out of memory") as info:
                f.result(5)
            errors.append(info.value)
        assert errors[0] is errors[1]
        np.testing.assert_array_equal(batcher.submit(job(3)).result(5), [[6]])
    assert batcher.stats.failed_batches == 1 and batcher.stats.batches == 1


def test_mixed_avatars_share_a_batch_and_each_job_gets_its_own_rows() -> None:
    model = FakeFacesModel()
    batcher = Batcher({"faces": model}, sizes=(4, 8), gather_s=0)
    avatars = {"alice": 1000.0, "bob": 2000.0}  # the latent rows say which avatar they are
    jobs = [("alice", 0, 3), ("bob", 10, 2), ("alice", 20, 2)]  # (avatar, first audio row, frames)
    futures = [
        batcher.submit(Job("faces", (rows(first, n), np.full((n, 1), avatars[a], np.float32)), FAR))
        for a, first, n in jobs
    ]
    with batcher:
        results = [f.result(5) for f in futures]
    assert model.calls == [(8, 7)]  # one batch of 7 rows of two avatars, padded to 8
    for (a, first, n), r in zip(jobs, results):
        np.testing.assert_array_equal(r, rows(first, n) + avatars[a])


def test_a_session_closing_mid_batch_loses_only_its_own_work(fake) -> None:
    release, entered = threading.Event(), threading.Event()
    fake.before = lambda x: (entered.set(), release.wait(5)) if 1 in x else None
    open_ = {"a": True}

    def turn_a() -> int:  # a closing worker's turn getter (InferenceWorker)
        return 0 if open_["a"] else -1

    with Batcher({"fake": fake}, sizes=(1, 2), gather_s=0) as batcher:
        in_flight = batcher.submit(job(1, deadline=0, current_turn=turn_a))
        assert entered.wait(5)
        queued_a = batcher.submit(job(2, deadline=1, current_turn=turn_a))
        cancelled_a = batcher.submit(job(3, deadline=2))
        queued_b = [batcher.submit(job(10 + i, deadline=3)) for i in range(2)]
        open_["a"] = False  # session a closes while its first job runs
        assert cancelled_a.cancel()
        release.set()
        np.testing.assert_array_equal(in_flight.result(5), [[2]])  # finished; a closed session just drops it
        with pytest.raises(StaleJob):
            queued_a.result(5)
        assert [f.result(5).ravel().tolist() for f in queued_b] == [[20], [22]]
        assert batcher.running
    assert fake.firsts() == [1, 10]  # a's queued work never ran; b's two jobs in one batch
    assert (batcher.stats.stale_jobs, batcher.stats.cancelled_jobs) == (1, 1)


def test_submit_checks_its_job(fake) -> None:
    batcher = Batcher({"fake": fake})
    with pytest.raises(ValueError, match="no model"):
        batcher.submit(Job("other", (rows(0, 1),), FAR))
    with pytest.raises(ValueError, match="same number"):
        batcher.submit(Job("fake", (rows(0, 1), rows(0, 2)), FAR))
    with pytest.raises(ValueError, match="non-empty tuple"):
        batcher.submit(Job("fake", [rows(0, 1)], FAR))


def test_stop_finishes_the_batch_in_flight_and_rejects_the_rest(fake) -> None:
    threads_before = threading.active_count()
    release, entered = threading.Event(), threading.Event()
    fake.before = lambda x: (entered.set(), release.wait(5))
    batcher = Batcher({"fake": fake}, sizes=(1,), gather_s=0).start()
    in_flight = batcher.submit(job(1))
    assert entered.wait(5)
    assert not in_flight.cancel()  # a session closing mid-batch cannot recall it; its result is just not used
    pending = [batcher.submit(job(i)) for i in range(2, 5)]
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive()  # stop waits for the model call in flight
    release.set()
    stopper.join(5)
    np.testing.assert_array_equal(in_flight.result(0), [[2]])
    for f in pending:
        with pytest.raises(BatcherStopped):
            f.result(0)
    with pytest.raises(BatcherStopped):
        batcher.submit(job(9)).result(0)
    assert fake.firsts() == [1] and not batcher.running and batcher.pending() == 0
    assert threading.active_count() == threads_before
    with pytest.raises(RuntimeError, match="already started"):
        batcher.start()


def test_stop_rejects_jobs_of_a_batcher_never_started(fake) -> None:
    batcher = Batcher({"fake": fake})
    f = batcher.submit(job(1))
    batcher.stop()
    with pytest.raises(BatcherStopped):
        f.result(0)


def test_concurrent_sessions_get_about_n_times_the_frames(fake) -> None:
    """Per-batch cost dominates (as host overhead does at small batches): 8 sessions that each wait for their
    frame get ~8x the frames per second of one session, because their frames share batches."""
    fake.per_batch, fake.per_row = 0.04, 0.0005
    frames = 6

    def session(batcher: Batcher, i: int) -> None:
        for k in range(frames):  # one frame at a time, each waited for, like a worker needing its batch
            batcher.submit(job(100 * i + k, deadline=time.monotonic() + 0.2)).result(10)

    def fps(n: int) -> float:
        with Batcher({"fake": fake}, sizes=(1, 2, 4, 8), gather_s=0.01) as batcher:
            started = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda i: session(batcher, i), range(n)))
            return n * frames / (time.perf_counter() - started)

    one, eight = fps(1), fps(8)
    print(f"1 session {one:.0f} frames/s, 8 sessions {eight:.0f} frames/s")
    assert eight > 3 * one, (one, eight)  # ideally ~7x; loose for a loaded machine


# ------------------------------------------------------------------------------------- the real tiny models


@pytest.fixture(scope="module")
def loaded(tiny_models):
    from musetalk.models import ModelPaths, load_models
    from musetalk.whisper import load_encoder

    models = load_models(tiny_models.root, "v15", "cpu")
    encoder = load_encoder(ModelPaths(tiny_models.root, "v15").whisper, "v15", models.device, models.dtype)
    return models, encoder


def test_tiny_musetalk_through_the_batcher_matches_direct_calls(loaded, demo_avatar) -> None:
    from musetalk.audio_features import encode_window
    from musetalk.avatar import face_crops
    from musetalk.inference import faces_to_latents, infer_faces

    models, encoder = loaded
    rng = np.random.default_rng(0)
    windows = [
        (0.1 * rng.standard_normal(16000 * s // 10).astype(np.float32), first)  # 0.6 s / 0.9 s of audio
        for s, first in [(6, 0), (9, 1490)]
    ]  # the second straddles a 30 s segment boundary: 2 inputs
    with Batcher(musetalk_models(models, encoder, "v15"), gather_s=0.5) as batcher:
        with ThreadPoolExecutor(2) as sessions:
            steps = list(sessions.map(lambda w: encode_window_batched(batcher, w[0], "v15", w[1], FAR), windows))
        assert [(s, n) for (kind, s), n in batcher.stats.batch_sizes.items()] == [(4, 1)]  # 3 inputs, one call
        for (audio, first), got in zip(windows, steps):
            want = encode_window(audio, encoder, "v15", first)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

        # Two sessions with different avatars' latents, 2 frames each: one faces call of 4
        crops = face_crops(np.asarray(demo_avatar.frames[:1]), demo_avatar.face_boxes[:1])
        avatar_latents = faces_to_latents(models.vae, crops).repeat(2, 1, 1, 1)
        other = avatar_latents.flip(-1) + torch.linspace(0, 1, 2)[:, None, None, None]  # a second "avatar"
        chunks = [torch.from_numpy(rng.standard_normal((2, 50, 384)).astype(np.float32)) for _ in range(2)]
        latents = [avatar_latents, other]
        futures = [batcher.submit(Job(FACES, (c, lat), FAR)) for c, lat in zip(chunks, latents)]
        faces = [f.result(60) for f in futures]
    assert batcher.stats.batch_sizes[(FACES, 4)] == 1 and ENCODER in batcher.models
    for c, lat, got in zip(chunks, latents, faces):
        want = infer_faces(models, c, lat)  # the per-session call, a batch of 2
        assert got.shape == want.shape == (2, 256, 256, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001  # CPU kernels may round differently per batch size


async def test_musetalk_engine_runs_every_model_call_through_its_batcher(tiny_models, demo_avatar) -> None:
    from engines.musetalk_engine import JobTag, MuseTalkEngine
    from musetalk.audio_features import StreamingFeatures
    from musetalk.inference import infer_faces
    from pipeline.session import Session, SessionOptions

    engine = MuseTalkEngine(models_dir=tiny_models.root, version="v15", batch_size=2, device="cpu")
    try:
        assert isinstance(engine.runner, Batcher) and engine.graph_mode is None  # no graphs on a CPU by default
        assert engine.runner.stats.batches > 0  # the warm-up went through it
        audio = (0.1 * np.random.default_rng(1).standard_normal(6400)).astype(np.float32)
        latents = np.zeros((2, 8, 32, 32), np.float32)
        direct = infer_faces(
            engine.models,
            StreamingFeatures(engine.encoder, "v15", batch_frames=2).chunks(audio, 0, final=True),
            latents,
        )
        diff = np.abs(engine.faces(audio, 0, 2, latents, final=True).astype(int) - direct)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001
        with pytest.raises(StaleJob):  # a render of an ended turn is dropped (its encoder job: never run)
            engine.faces(audio, 0, 2, latents, final=True, tag=JobTag(FAR, turn=0, current_turn=lambda: 1))

        sessions = [
            Session(f"s{i}", demo_avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
            for i in range(2)
        ]
        for s in sessions:
            await s.start()
            await s.push_audio(audio)
            await s.end_speech()
        outs = [[], []]
        batches = engine.runner.stats.batches
        for _ in range(engine.lead_ticks + 12):  # interleaved: both sessions' workers submit to the batcher
            for s, out in zip(sessions, outs):
                out.append(s.step(wait_for_video=30.0))
        for s, out in zip(sessions, outs):
            await s.close()
            assert sum(o.source is Source.SPEECH for o in out) == 10 and s.stats.render_errors == 0
        assert engine.runner.stats.batches > batches
    finally:
        engine.close()
    assert not engine.runner.running and not engine.runner._thread.is_alive()
