"""The render pool on Ray Serve (engines.ray_serve_app, engines.ray_pool) on a real local Ray cluster: a head and a
second node process on 127.0.0.1, CPU only, two replicas of the tiny models; front ends as processes of their own
and in this one (docs/render_pool.md)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines.batcher import Job, StaleJob
from engines.render_pool import AvatarRows, PoolError, pool_address
from musetalk.avatar import Avatar
from testing.rtc import require_loopback_namespace

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 2


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_nothing_of_ray_is_imported_without_the_option() -> None:
    code = ("import sys, app; from server.config import parse_args; from engines.factory import create_engine; "
            "c = parse_args([]); e = create_engine('lite'); e.close(); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = _run("-c", code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_pool_addresses() -> None:
    assert pool_address("ray") == "auto"
    assert pool_address("ray://10.0.0.5:10001") == "ray://10.0.0.5:10001"
    for bad in ("ray://", "http://x", "", "rays"):
        with pytest.raises(ValueError):
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


def test_unreachable_pool_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    require_loopback_namespace()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(tmp_path))  # no cluster there to join
    done = _run("app.py", "--render_pool", "ray", "--engine", "musetalk", "--host", "127.0.0.1", "--listenport",
                "18017", env=env, timeout=120)
    assert done.returncode == 1
    assert "cannot start: cannot join the Ray cluster" in done.stderr and "docs/render_pool.md" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, demo_avatar: Avatar) -> Iterator[dict[str, str]]:
    """A two-node local cluster running the pool (two replicas, tiny models); the environment of its drivers."""
    require_loopback_namespace()
    from testing.ray_cluster import LocalRayCluster, quiet_env

    with LocalRayCluster(nodes=2, cpus_per_node=2) as cluster:
        env = {**quiet_env(), "RAY_ADDRESS": cluster.address}
        done = _run("-m", "engines.ray_serve_app", "--address", cluster.address, "--replicas", str(REPLICAS),
                    "--tiny", "--num_gpus", "0", "--batch_size", "4", "--avatars_dir",
                    str(demo_avatar.path.parent),
                    # Stepped sessions' clocks wait for their frames: no job of theirs is too late to be shown.
                    "--late_grace_s", "1e9", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        yield env
        assert cluster.processes()  # still running until the teardown below
    assert not cluster.processes()  # every process of the cluster ended


@pytest.fixture(scope="module")
def front_end(pool: dict[str, str]) -> Iterator[object]:
    """This process as a front end of the pool (batches of 2 frames)."""
    import ray

    from engines.ray_pool import PooledMuseTalkEngine, create_pooled_engine

    os.environ["RAY_ADDRESS"] = pool["RAY_ADDRESS"]
    try:
        engine: PooledMuseTalkEngine = create_pooled_engine("ray", "v15", batch_size=2)
    finally:
        del os.environ["RAY_ADDRESS"]
    yield engine
    engine.close()
    assert not ray.is_initialized()


@pytest.mark.slow
def test_two_front_ends_share_the_pool(pool: dict[str, str], demo_avatar: Avatar) -> None:
    """Two front-end processes, two sessions each speaking at once: every speech tick shows a face rendered for
    it (25 frames per second of media time, none repeated or late), and the frames come from both replicas."""
    procs = [subprocess.Popen([sys.executable, "-m", "testing.pool_frontend", "--render_pool", "ray",
                               "--avatars_dir", str(demo_avatar.path.parent), "--sessions", "2", "--seconds", "0.8"],
                              cwd=ROOT, env=pool, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
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


def _replica_actor(replica_id: str):  # noqa: ANN202
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].endswith("#" + replica_id):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no actor for replica {replica_id}")


@pytest.mark.slow
async def test_a_replica_dying_mid_speech(front_end, demo_avatar: Avatar) -> None:
    """Killing a replica in the middle of a batch while sessions speak: an affected session shows its last frame
    again for the ticks of the failed batch and reports one render_error; its next batches are rendered by the replica left, and Serve
    starts a new replica."""
    import ray
    from ray import serve

    from pipeline.session import Session, SessionOptions
    from testing.pool_frontend import speech, step_together

    engine = front_end
    sessions = [Session(f"k{i}", demo_avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
                for i in range(2)]
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
        ballast.append(engine.pool.submit(Job("faces", (np.zeros((8, 50, 384), np.float32),
                                                        np.zeros((8, 8, 32, 32), np.float32)), 0.0)))
        await asyncio.sleep(0.3)
    ray.kill(_replica_actor(next(iter(engine.pool.stats.by_replica))))
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
        names = [e.name for e in iter(q.get_nowait, None)]  # close() ended the stream with None
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
        app = serve.status().applications["musetalk-pool"]
        if app.deployments["MuseTalkReplica"].replica_states.get("RUNNING", 0) == REPLICAS:
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


async def _rendered_frames(http, url: str) -> float:  # noqa: ANN001 -- aiohttp.ClientSession
    """Faces the engine rendered for the server's sessions: shown in time, or too late and dropped."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(('avatar_frames_total{source="speech"}', 'avatar_frames_total{source="dropped"}')))


@pytest.mark.slow
async def test_app_front_ends_speak_through_the_pool(pool: dict[str, str], demo_avatar: Avatar,
                                                     tmp_path: Path) -> None:
    """Two app.py servers on two ports with --render_pool ray: both start on the pool (their lead measured through
    it), a session on each speaks an uploaded sentence whose faces the pool renders, and both stop on SIGINT with
    status 0. (Real time: on this CPU the tiny models cannot keep up with 25 fps; the stepped front ends above
    check the frames one by one.)"""
    import signal

    import aiohttp

    from testing.fake_services import free_port
    from testing.server_client import offer_sdp

    ports = [free_port(), free_port()]
    logs = [tmp_path / f"front-end-{port}.log" for port in ports]
    procs = []
    for port, log_path in zip(ports, logs):
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "app.py", "--engine", "musetalk", "--render_pool", "ray", "--batch_size", "2",
                 "--host", "127.0.0.1", "--listenport", str(port), "--avatars_dir", str(demo_avatar.path.parent),
                 "--records_dir", str(tmp_path / "records"), "--llm_base_url", f"http://127.0.0.1:{free_port()}/v1",
                 "--connect_timeout", "300"],  # the sessions' peers never connect: their media is not looked at
                cwd=ROOT, env=pool, stdout=log, stderr=subprocess.STDOUT))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
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
                async with http.post(url + "/offer", json={"sdp": await offer_sdp(), "type": "offer"}) as resp:
                    sid = (await resp.json())["sessionid"]
                form = aiohttp.FormData()
                form.add_field("sessionid", str(sid))
                form.add_field("file", _wav(1.0, i), filename="a.wav", content_type="audio/wav")
                async with http.post(url + "/humanaudio", data=form) as resp:
                    assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + 120
            for url, log_path in zip(urls, logs):
                while await _rendered_frames(http, url) == 0:
                    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                    await asyncio.sleep(0.5)
        for proc, log_path in zip(procs, logs):
            proc.send_signal(signal.SIGINT)
            assert await asyncio.to_thread(proc.wait, 60) == 0, log_path.read_text()[-3000:]
            text = log_path.read_text()
            assert "render pool 'musetalk-pool'" in text and "Traceback" not in text, text[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
