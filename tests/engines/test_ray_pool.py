"""The render pool on Ray Serve (engines.ray_serve_app, engines.ray_pool) on a real local Ray cluster: a head and a
second node process on 127.0.0.1, CPU only, two replicas of the tiny models; front ends as processes of their own
and in this one (docs/render_pool.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import aiohttp
import numpy as np
import pytest

from engines.batcher import Job, StaleJob
from engines.render_pool import AvatarRows, PoolError, pool_address
from musetalk.avatar import Avatar
from testing.ray_cluster import LocalRayCluster, quiet_env, replica_actors
from testing.rtc import require_loopback_namespace

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from testing.server_client import Server

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 2
# Two applications of two replicas each on the cluster: the tiny models, for stepped front ends checking the faces
# one by one (a CPU runs them far slower than real time), and, under the name app.py front ends look up, the
# models' stand-ins of a fixed small cost (--fake_cost_ms), for front ends in real time.
TINY_APP = "musetalk-pool-tiny"
FAKE_COST_MS = 5


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_nothing_of_ray_is_imported_without_the_option() -> None:
    code = (
        "import sys, app; from server.config import parse_args; from engines.factory import create_engine; "
        "c = parse_args([]); e = create_engine('lite'); e.close(); "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = _run("-c", code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_pool_addresses() -> None:
    assert pool_address("ray") == "auto"
    assert pool_address("ray://10.0.0.5:10001") == "ray://10.0.0.5:10001"
    for bad in ("ray://", "http://x", "", "rays"):
        with pytest.raises(ValueError, match="--render_pool must be"):
            pool_address(bad)
    rows = AvatarRows("a", "t", np.arange(10))[[3, 4, 9]][:2]
    assert len(rows) == 2 and rows.indices.tolist() == [3, 4] and rows.avatar_id == "a"


def test_render_pool_option() -> None:
    from server.config import parse_args

    assert parse_args([]).render_pool is None
    assert parse_args(["--render_pool", "ray://10.0.0.5:10001"]).render_pool == "ray://10.0.0.5:10001"
    for bad in (["--render_pool", "redis://x"], ["--render_pool", "ray", "--engine", "lite"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_stand_in_models_make_faces_from_their_inputs() -> None:
    """--fake_cost_ms: the replica's batcher runs stand-ins whose outputs depend only on each row's inputs (the
    same job gives the same faces in every replica), a batch taking at least the given time."""
    from engines.musetalk_batch import ENCODER, FACES, LATENTS
    from engines.ray_serve_app import stand_in_batcher, stand_in_face_levels

    rng = np.random.default_rng(0)
    batcher = stand_in_batcher(0.02, {}, {ENCODER: (1, 2), FACES: (1, 2, 4), LATENTS: (1, 2)})
    try:
        chunks, latents = rng.random((3, 50, 384), np.float32), rng.random((3, 8, 32, 32), np.float32)
        started = time.monotonic()
        faces = batcher.submit(Job(FACES, (chunks, latents), 0.0)).result(timeout=10)
        assert time.monotonic() - started >= 0.02
        assert faces.shape == (3, 256, 256, 3) and faces.dtype == np.uint8
        assert (faces[:, 128, 128, :2] == stand_in_face_levels(chunks, latents)).all() and not faces[..., 2].any()
        assert (batcher.submit(Job(FACES, (chunks[1:2], latents[1:2]), 0.0)).result(timeout=10) == faces[1]).all()
        mels = np.stack([np.zeros((80, 3000), np.float32), np.ones((80, 3000), np.float32)])
        quiet, loud = batcher.submit(Job(ENCODER, (mels, np.array([0, 10]), np.array([7, 3])), 0.0)).result(10)
        assert quiet.shape == (7, 5, 384) and loud.shape == (3, 5, 384) and not quiet.any() and loud.all()
        crops = np.full((2, 256, 256, 3), 51, np.uint8)
        assert batcher.submit(Job(LATENTS, (crops,), 0.0)).result(timeout=10).shape == (2, 8, 32, 32)
    finally:
        batcher.stop()


def test_unreachable_pool_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    require_loopback_namespace()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(tmp_path))  # no cluster there to join
    done = _run(
        "app.py",
        "--render_pool",
        "ray",
        "--engine",
        "musetalk",
        "--host",
        "127.0.0.1",
        "--listenport",
        "18017",
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "cannot start: cannot join the Ray cluster" in done.stderr and "docs/render_pool.md" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def cluster(demo_avatar: Avatar) -> Iterator[LocalRayCluster]:
    """A two-node local cluster running both applications of the pool (see TINY_APP)."""
    require_loopback_namespace()
    with LocalRayCluster(nodes=2, cpus_per_node=2) as cluster:
        common = [
            "-m",
            "engines.ray_serve_app",
            "--address",
            cluster.address,
            "--replicas",
            str(REPLICAS),
            "--tiny",
            "--num_gpus",
            "0",
            "--batch_size",
            "4",
            "--avatars_dir",
            str(demo_avatar.path.parent),
        ]
        # Stepped sessions' clocks wait for their frames: no job of theirs is too late to be shown.
        for extra in (["--name", TINY_APP, "--late_grace_s", "1e9"], ["--fake_cost_ms", str(FAKE_COST_MS)]):
            done = _run(*common, *extra, env=quiet_env())
            assert done.returncode == 0, done.stderr[-3000:]
        yield cluster
        assert cluster.processes()  # still running until the teardown below
    assert not cluster.processes()  # every process of the cluster ended


@pytest.fixture(scope="module")
def pool(cluster: LocalRayCluster) -> dict[str, str]:
    """The environment of the pool's drivers (front ends)."""
    return {**quiet_env(), "RAY_ADDRESS": cluster.address}


@pytest.fixture(scope="module")
def front_end(pool: dict[str, str]) -> Iterator[object]:
    """This process as a front end of the pool (batches of 2 frames)."""
    import ray

    from engines.ray_pool import PooledMuseTalkEngine, create_pooled_engine

    os.environ["RAY_ADDRESS"] = pool["RAY_ADDRESS"]
    try:
        engine: PooledMuseTalkEngine = create_pooled_engine("ray", "v15", batch_size=2, app_name=TINY_APP)
    finally:
        del os.environ["RAY_ADDRESS"]
    yield engine
    engine.close()
    assert not ray.is_initialized()


@pytest.mark.slow
def test_two_front_ends_share_the_pool(pool: dict[str, str], demo_avatar: Avatar) -> None:
    """Two front-end processes, two sessions each speaking at once: every speech tick shows a face rendered for
    it (25 frames per second of media time, none repeated or late), and the frames come from both replicas."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testing.pool_frontend",
                "--render_pool",
                "ray",
                "--app",
                TINY_APP,
                "--avatars_dir",
                str(demo_avatar.path.parent),
                "--sessions",
                "2",
                "--seconds",
                "0.8",
            ],
            cwd=ROOT,
            env=pool,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    replicas: set[str] = set()
    for result in results:
        for session in result["sessions"]:
            assert session["speech"] == result["ticks"] == 20, result
            assert session["repeat"] == session["render_errors"] == session["dropped_frames"] == 0, result
        replicas |= set(result["replicas"])
        assert result["lead_ticks"] > 0 and result["hop_ms"] > 0
    assert len(replicas) == REPLICAS, results


@pytest.mark.slow
def test_a_stale_turn_never_reaches_the_session(front_end) -> None:
    """A job whose turn ends while it is in the pool raises StaleJob (cancelled there, or dropped on return)."""
    runner = front_end.pool
    turn = [0]
    chunks = np.zeros((2, 50, 384), np.float32)
    rows = np.zeros((2, 8, 32, 32), np.float32)
    future = runner.submit(Job("faces", (chunks, rows), time.monotonic() + 5, 0, lambda: turn[0]))
    turn[0] = 1
    with pytest.raises(StaleJob):
        future.result(timeout=120)
    stale = runner.stats.stale
    with pytest.raises(StaleJob):  # one of an ended turn is not even sent
        runner.submit(Job("faces", (chunks, rows), time.monotonic() + 5, 0, lambda: 1)).result(timeout=5)
    assert runner.stats.stale == stale + 1
    # and one of the current turn is rendered
    faces = runner.submit(Job("faces", (chunks, rows), time.monotonic() + 5, 1, lambda: turn[0])).result(timeout=120)
    assert faces.shape == (2, 256, 256, 3)


@pytest.mark.slow
async def test_a_replica_dying_mid_speech(front_end, demo_avatar: Avatar) -> None:
    """Killing a replica in the middle of a batch while sessions speak: an affected session shows its last frame
    again for the ticks of the failed batch and reports one render_error; its next batches are rendered by the
    replica left, and Serve starts a new replica."""
    import ray
    from ray import serve
    from ray.serve.schema import ReplicaState

    from pipeline.session import Session, SessionOptions
    from testing.pool_frontend import speech, step_together

    engine = front_end
    sessions = [
        Session(f"k{i}", demo_avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True) for i in range(2)
    ]
    events = [s.subscribe() for s in sessions]
    ticks = 20
    for i, s in enumerate(sessions):
        await s.start()
        await s.push_audio(speech(ticks / 25, i))
        await s.end_speech()
    # Long batches first (their deadline is the earliest), sent one by one so that Serve, which sends a call to the
    # replica with fewer calls in flight, spreads them over both: the replica killed is in the middle of a batch,
    # with sessions' jobs queued behind it.
    ballast = []
    for _ in range(4):
        ballast.append(
            engine.pool.submit(
                Job("faces", (np.zeros((8, 50, 384), np.float32), np.zeros((8, 8, 32, 32), np.float32)), 0.0)
            )
        )
        await asyncio.sleep(0.3)
    deadline = time.monotonic() + 60  # the sessions' jobs in the pool too (theirs have a turn getter)
    while not any(job.current_turn is not None for job in engine.pool.in_flight()):
        assert time.monotonic() < deadline, engine.pool.stats
        await asyncio.sleep(0.02)
    actors = list(replica_actors(TINY_APP).values())
    ongoing = [await actor.get_num_ongoing_requests.remote() for actor in actors]
    # The ballast is spread evenly: the busier replica holds a session's job too.
    ray.kill(actors[ongoing.index(max(ongoing))])
    killed = time.monotonic()
    # Ticks of a failed batch wait for their frame in vain (stepped sessions): a short wait, then the last frame.
    outs = await asyncio.to_thread(step_together, sessions, engine.lead_ticks + ticks + 8, 8.0)
    spoken_for = time.monotonic() - killed
    await asyncio.sleep(0.1)  # the render_error events, published on this loop
    for s in sessions:
        await s.close()
    assert any(isinstance(b.exception(timeout=60), PoolError) for b in ballast)  # the batch in the dead replica
    errors = 0
    for s, q, out in zip(sessions, events, outs):
        names = [e.kind for e in iter(q.get_nowait, None)]  # close() ended the stream with None
        played = [o.source for o in out if o.kind.name == "SPEECH"]
        assert len(played) == ticks
        errors += s.stats.render_errors
        if s.stats.render_errors:
            assert names.count("render_error") == 1, names  # one event per outage, not one per failed batch
            # the failed batch's ticks: the last frame again (the avatar's own one before any speech frame)
            assert {"repeat", "idle"} & set(played), played
        else:
            assert "render_error" not in names
        assert played[-3:] == ["speech"] * 3, played  # recovered: the end of the utterance is rendered again
    assert errors >= 1, engine.pool.stats
    assert spoken_for < 180
    deadline = time.monotonic() + 90  # Serve replaces the dead replica
    while time.monotonic() < deadline:
        app = serve.status().applications[TINY_APP]
        if app.deployments["MuseTalkReplica"].replica_states.get(ReplicaState.RUNNING, 0) == REPLICAS:
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError(f"the pool did not get back to {REPLICAS} replicas: {serve.status()}")


def _wav(seconds: float, seed: int) -> bytes:
    import io
    import wave

    from testing.pool_frontend import speech

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((speech(seconds, seed) * 32767).astype("<i2").tobytes())
    return out.getvalue()


@dataclass
class Counts:
    """What a front end's /metrics says at one moment (--metrics_per_session)."""

    at: float
    frames: dict[str, float]  # by source: speech, repeat, dropped...
    render_errors: float
    ticks: dict[str, float]  # by session tag
    rendered: dict[str, float]
    skipped: dict[str, float]

    def __sub__(self, earlier: Counts) -> Counts:
        def diff(now: dict[str, float], then: dict[str, float]) -> dict[str, float]:
            return {k: v - then.get(k, 0.0) for k, v in now.items()}

        return Counts(
            self.at - earlier.at,
            diff(self.frames, earlier.frames),
            self.render_errors - earlier.render_errors,
            diff(self.ticks, earlier.ticks),
            diff(self.rendered, earlier.rendered),
            diff(self.skipped, earlier.skipped),
        )

    def fps(self) -> list[float]:
        """Per session, over a difference of two counts."""
        return [n / self.at for n in self.ticks.values()]


async def _counts(http: aiohttp.ClientSession, url: str) -> Counts:
    from testing.metrics import parse_metrics

    async with http.get(url + "/metrics") as resp:
        samples = parse_metrics(await resp.text())[1]
    at = time.monotonic()

    def by(name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}

    return Counts(
        at,
        by("avatar_frames_total", "source"),
        by("avatar_errors_total", "kind")["render"],
        by("avatar_session_ticks_total", "session"),
        by("avatar_session_rendered_frames_total", "session"),
        by("avatar_session_skipped_ticks_total", "session"),
    )


async def _all_counts(http: aiohttp.ClientSession, urls: list[str]) -> list[Counts]:
    return list(await asyncio.gather(*(_counts(http, url) for url in urls)))


def _in_time(window: list[Counts]) -> bool:
    """Every tick of every session in the window showed a face rendered for it: none repeated, none dropped as
    late, no tick skipped."""
    return all(
        w.frames["repeat"] == w.frames["dropped"] == 0
        and not any(w.skipped.values())
        and w.frames["speech"] == sum(w.ticks.values())
        for w in window
    )


async def _in_time_stretch(http: aiohttp.ClientSession, urls: list[str], within_s: float) -> tuple[float, list[Counts]]:
    """The first stretch of STRETCH_S from now on in which every session showed lip-synced faces only (`_in_time`),
    polled every POLL_S: its start and the front ends' counts over it. Fails when none starts within `within_s`.

    Lateness comes in bursts on a loaded 2-core machine (other processes taking the CPU from the front ends for
    a few hundred ms); on a quiet one the first stretch is in time."""
    snaps = [await _all_counts(http, urls)]
    started = snaps[0][0].at
    while True:
        await asyncio.sleep(POLL_S)
        last = await _all_counts(http, urls)
        snaps.append(last)
        for snap in snaps:  # counters only grow: the oldest in-time start is the one
            window = [a - b for a, b in zip(last, snap)]
            if window[0].at >= STRETCH_S and _in_time(window):
                for w in window:
                    assert len(w.ticks) == SESSIONS_PER_FRONT_END and all(n > 0 for n in w.rendered.values()), w
                return snap[0].at, window
        assert last[0].at - started < within_s + STRETCH_S, [a - b for a, b in zip(last, snaps[0])]


SESSIONS_PER_FRONT_END = 2
CLIP_S, CLIPS = 3.0, 30  # each session speaks this many sentences one after the other: all through the test
STRETCH_S = 6.0
POLL_S = 0.5
WARM_UP_BOUND_S = 60.0  # from the first faces: the front ends' first batches and Ray's first calls (a few s)
STALL_S = 1.0  # the replica hangs this long before it dies (sessions with a call in it render nothing meanwhile)
HANG_TRIES = 20
RECOVERY_BOUND_S = 60.0  # docs/render_pool.md: sessions show lip-synced faces again within this of the death
RESTART_BOUND_S = 120.0  # docs/render_pool.md: Serve's new replica serves within this


async def _hang_then_kill(http: aiohttp.ClientSession, urls: list[str], actor: ActorHandle) -> tuple[float, float, int]:
    """Hang a replica (SIGSTOP) at a moment it holds calls, then kill it (SIGKILL) if sessions' calls seem stuck in
    it: sessions that rendered nothing while it hung. A replica found holding only calls that were about to
    finish is let go on (SIGCONT) and caught again. Returns when it hung, when it died, how many sessions rendered
    nothing meanwhile (on a loaded machine, not all of them because of the hung replica)."""
    import signal

    pid = await actor.__ray_call__.remote(lambda _: os.getpid())
    for _ in range(HANG_TRIES):
        while await actor.get_num_ongoing_requests.remote() == 0:
            await asyncio.sleep(0.005)
        os.kill(pid, signal.SIGSTOP)
        stalled = time.monotonic()
        before = await _all_counts(http, urls)
        await asyncio.sleep(STALL_S)
        hung = [a - b for a, b in zip(await _all_counts(http, urls), before)]
        stuck = sum(n == 0 for w in hung for n in w.rendered.values())
        if stuck:
            os.kill(pid, signal.SIGKILL)
            return stalled, time.monotonic(), stuck
        os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
    raise AssertionError(f"no session's calls were caught in the hung replica in {HANG_TRIES} tries")


def _app_front_end(port: int, log_path: Path, env: dict[str, str], avatar: Avatar, tmp_path: Path) -> subprocess.Popen:
    """An app.py server on the pool, writing its log to `log_path`."""
    from testing.fake_services import free_port

    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--engine",
                "musetalk",
                "--render_pool",
                "ray",
                "--batch_size",
                "8",
                "--host",
                "127.0.0.1",
                "--listenport",
                str(port),
                "--avatars_dir",
                str(avatar.path.parent),
                "--records_dir",
                str(tmp_path / "records"),
                "--llm_base_url",
                f"http://127.0.0.1:{free_port()}/v1",
                "--metrics_per_session",
                "--connect_timeout",
                "600",
            ],  # no peer connects: the server's counts
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_two_app_front_ends_speak_in_real_time_through_the_pool(
    pool: dict[str, str], demo_avatar: Avatar, tmp_path: Path
) -> None:
    """Two app.py servers on two ports with --render_pool ray, two sessions each speaking all the time, on the
    pool's two replicas of the models' stand-ins (5 ms a batch: real time on this CPU). After the warm-up every
    session shows a lip-synced face at each of its 25 ticks a second, none late. Then a replica hangs and dies:
    the sessions with calls in it repeat their last frame and get one render_error each, all show lip-synced faces
    again within RECOVERY_BOUND_S, and Serve's new replica runs within RESTART_BOUND_S. Frames came from both
    replicas and the new one; both servers stop on SIGINT with status 0. The times are printed (-s)."""
    import signal

    import ray
    from ray import serve
    from ray.serve.schema import ReplicaState

    from engines.render_pool import DEFAULT_APP
    from testing.fake_services import free_port
    from testing.server_client import offer_sdp, sse_events

    def running() -> int:
        states = serve.status().applications[DEFAULT_APP].deployments["MuseTalkReplica"].replica_states
        return states.get(ReplicaState.RUNNING, 0)

    ports = [free_port(), free_port()]
    logs = [tmp_path / f"front-end-{port}.log" for port in ports]
    procs = [_app_front_end(port, log_path, pool, demo_avatar, tmp_path) for port, log_path in zip(ports, logs)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    events: dict[str, list[dict]] = {}
    tasks = []
    ray.init(address=pool["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=False, ignore_reinit_error=True)
    try:
        async with aiohttp.ClientSession() as http:
            for url, proc, log_path in zip(urls, procs, logs):
                deadline = time.monotonic() + 180
                while True:
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    try:
                        async with http.get(url + "/healthz") as resp:
                            if (await resp.json()).get("ok"):
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                    await asyncio.sleep(0.5)
            for i, url in enumerate(urls):
                for j in range(SESSIONS_PER_FRONT_END):
                    async with http.post(url + "/offer", json={"sdp": await offer_sdp(), "type": "offer"}) as resp:
                        sid = str((await resp.json())["sessionid"])
                    ready = asyncio.Event()
                    events[sid] = []
                    server = cast("Server", SimpleNamespace(http=http, url=url))  # what sse_events reads of one
                    tasks.append(asyncio.create_task(sse_events(server, sid, events[sid], ready)))
                    await asyncio.wait_for(ready.wait(), 30)
                    for k in range(CLIPS):  # sentences, queued: each one an utterance, as a voice's are
                        form = aiohttp.FormData()
                        form.add_field("sessionid", sid)
                        form.add_field("file", _wav(CLIP_S, 2 * i + j + k), filename="a.wav", content_type="audio/wav")
                        async with http.post(url + "/humanaudio", data=form) as resp:
                            assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + 60
            while not all(c.frames["speech"] > 0 for c in await _all_counts(http, urls)):
                assert time.monotonic() < deadline, [p.read_text()[-3000:] for p in logs]
                await asyncio.sleep(0.2)
            first_faces = time.monotonic()
            in_time_at, window = await _in_time_stretch(http, urls, WARM_UP_BOUND_S)
            fps = [f for w in window for f in w.fps()]
            assert all(22 < f < 28 for f in fps), fps  # the media clock: 25 ticks a second
            before = await _all_counts(http, urls)

            # A replica hangs, with calls of the front ends' sessions in it, then dies.
            assert running() == REPLICAS
            victim, actor = next(iter(replica_actors(DEFAULT_APP).items()))
            stalled, died, stuck = await _hang_then_kill(http, urls, actor)
            recovered_at, _ = await _in_time_stretch(http, urls, RECOVERY_BOUND_S)
            while running() < REPLICAS or victim in (now := replica_actors(DEFAULT_APP)) or len(now) < REPLICAS:
                assert time.monotonic() - died < RESTART_BOUND_S, serve.status()
                await asyncio.sleep(POLL_S)
            restarted_s = time.monotonic() - died
            await _in_time_stretch(http, urls, RECOVERY_BOUND_S)  # the new replica takes its share meanwhile
            outage = [a - b for a, b in zip(await _all_counts(http, urls), before)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proc, log_path in zip(procs, logs):
            proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ray.shutdown()
    # The degradation: one render_error per affected session (at least one: the hung replica held calls), its last
    # frame repeated meanwhile; every speech tick showed a face or the last one again.
    errors = [sum(e.get("event") == "render_error" for e in evs) for evs in events.values()]
    assert all(n <= 1 for n in errors) and sum(errors) >= 1, (stuck, events)
    assert sum(o.render_errors for o in outage) == sum(errors)
    repeated = sum(o.frames["repeat"] for o in outage)
    assert repeated > 0
    assert sum(o.frames["speech"] + o.frames["repeat"] for o in outage) == sum(sum(o.ticks.values()) for o in outage)
    replicas: set[str] = set()
    for log_path in logs:
        text = log_path.read_text()
        assert "render pool 'musetalk-pool'" in text, text[-3000:]
        # the worker logs each failed batch with its traceback; nothing else failed
        assert text.count("Traceback") == text.count("render failed for ticks"), text[-3000:]
        line = next(x for x in text.splitlines() if "jobs rendered, by replica" in x)
        replicas |= set(json.loads(line.split("by replica ", 1)[1].split("; ", 1)[0]))
    assert len(replicas) == REPLICAS + 1, replicas  # both replicas, then the new one
    print(
        f"\n2 front ends x {SESSIONS_PER_FRONT_END} sessions: in time {in_time_at - first_faces:.1f} s after the "
        f"first faces, then {min(fps):.1f}-{max(fps):.1f} fps a session over {STRETCH_S:g} s, none late; a replica "
        f"hung {died - stalled:.1f} s and died: {sum(errors)} session(s) got a render_error, {repeated:.0f} "
        f"frames repeated in all; in time again {recovered_at - died:.1f} s after the death; Serve's new replica "
        f"running {restarted_s:.1f} s after it"
    )
