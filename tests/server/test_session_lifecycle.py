"""Every task and thread of a session is owned by its Session.tasks and ends with it (issue 15): sessions opened
and closed against a real server, each using every feature, leave no asyncio task and no thread behind."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from testing import fake_realtime, fake_services
from testing.fake_services import tone_pcm16
from testing.receiver_audio import spoken
from testing.server_client import ScriptedMicrophone, Server, connect_with_events, until

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow]

ACTION = 2  # the demo avatar's action clip (tests/server/conftest.py)
SESSIONS = 50
AT_ONCE = 3  # sessions open at the same time (the config's max_session)
# Process-wide executors, shared by all sessions and bounded (asyncio's default one, where aiortc encodes, and the
# voices' and uploads' pools): their idle workers are no session's.
POOL_THREADS = ("asyncio_", "pool-")


@pytest.fixture
def twin_avatars(avatars_dir: Path, tmp_path: Path) -> Path:
    """The demo avatar (with its action clip) and "twin", a copy of it to switch to."""
    shutil.copytree(avatars_dir / "demo", tmp_path / "demo")
    shutil.copytree(avatars_dir / "demo", tmp_path / "twin")
    return tmp_path


class QuickTranscriber:
    """Stands in for faster-whisper (loading it takes seconds): the microphone path, VAD to chat, is the same."""

    async def transcribe(self, audio: np.ndarray) -> str:
        return "What is the weather like?"


async def quick_transcriber() -> QuickTranscriber:
    return QuickTranscriber()


def describe(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', coro)})"


def new_tasks(before: set[asyncio.Task]) -> list[str]:
    return sorted(describe(t) for t in asyncio.all_tasks() - before if t is not asyncio.current_task())


def new_threads(before: Iterable[threading.Thread]) -> list[str]:
    return sorted(t.name for t in set(threading.enumerate()) - set(before) if not t.name.startswith(POOL_THREADS))


async def nothing_left(server: Server, tasks: set[asyncio.Task], threads: list[threading.Thread]) -> None:
    """No session, and (after a short settle) no task or thread that was not there before the sessions."""
    await server.close_clients()
    assert await until(lambda: len(server.state.registry) == 0, 15)
    # Keep-alive connections each hold a server task: those of this test's HTTP client, and those of the app's
    # shared TTS/LLM clients to the fake services, are no session's. Closed as at shutdown.
    await server.http.close()
    await server.state.services.aclose()
    settled = await until(lambda: not new_tasks(tasks) and not new_threads(threads), 10, step=0.1)
    assert settled, f"left behind: tasks {new_tasks(tasks)}, threads {new_threads(threads)}"
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("inference-", "record-", "rtmp-"))]


async def ws_utterance(server: Server, sid: str, text: str) -> aiohttp.ClientWebSocketResponse:
    """A /ws/audio stream that has sent one short utterance (left open)."""
    ws = await server.http.ws_connect(server.url.replace("http", "ws", 1) + f"/ws/audio?sessionid={sid}")
    await ws.send_json({"type": "start", "sample_rate": 16000})
    while (await ws.receive_json(timeout=5)).get("type") != "ready":  # the session's events may come first
        pass
    await ws.send_json({"type": "text", "text": text})
    await ws.send_bytes(tone_pcm16(16000, 0.3))
    await ws.send_json({"type": "end_of_utterance"})
    return ws


async def post_ok(server: Server, path: str, body: dict) -> dict:
    status, reply = await server.post(path, body)
    assert status == 200, (path, status, reply)
    return reply


async def session_with_every_feature(server: Server, i: int, speech: np.ndarray) -> None:
    """Open a session and use all it offers, some of it still running when the client goes away."""
    mic = ScriptedMicrophone()
    client, events, sse = await connect_with_events(server, mic)
    sid = client.sessionid
    ws = await ws_utterance(server, sid, f"streamed {i}")
    await post_ok(server, "/record", {"sessionid": sid, "type": "start_record"})
    await post_ok(server, "/human", {"sessionid": sid, "text": "Hello there. How are you today?", "type": "echo"})
    await post_ok(server, "/set_audiotype", {"sessionid": sid, "audiotype": ACTION})
    await post_ok(server, "/human", {"sessionid": sid, "text": "Who are you?", "type": "chat"})
    if i % 10 == 0:  # the microphone: speech detected, transcribed, answered by chat
        mic.play(speech)
        assert await until(lambda: any(e.get("event") == "user_text" for e in events), 10), events
    assert await until(lambda: any(e.get("status") == "start" for e in events), 10), events  # speech is played
    frames = len(client.video_times)
    assert await until(lambda: len(client.video_times) >= frames + 3, 10)  # and recorded
    await post_ok(server, "/interrupt_talk", {"sessionid": sid})
    if i % 5 == 0:  # another avatar: a worker of its own starts, the old one is retired
        await post_ok(server, "/set_avatar", {"sessionid": sid, "avatar": "twin"})
    await post_ok(server, "/human", {"sessionid": sid, "text": "Tell me more.", "type": "chat"})  # left running
    status, reply = await server.post("/record", {"sessionid": sid, "type": "end_record"})
    assert (status, reply["code"]) in ((200, 0), (409, -1)), reply
    if i % 3 == 0:
        await post_ok(server, "/record", {"sessionid": sid, "type": "start_record"})  # ended by the session's end
    if i % 2:
        await ws.close()  # else the session's end closes it
    sse.cancel()
    await client.close()
    assert await until(lambda: server.state.registry.get(sid) is None, 15), "the session did not end"
    await ws.close()


async def open_and_close(server: Server, sessions: int, one: Callable[[Server, int], Awaitable[None]]) -> None:
    """`sessions` sessions through `one(server, i)`, AT_ONCE at a time."""
    slots = asyncio.Semaphore(AT_ONCE)

    async def run(i: int) -> None:
        async with slots:
            await one(server, i)

    await asyncio.gather(*(run(i) for i in range(1, sessions + 1)))


async def test_fifty_sessions_with_every_feature_leave_no_task_and_no_thread(serve, config, twin_avatars) -> None:
    speech = await spoken("What is the weather like today?")
    async with fake_services.openai_service() as (base, _):
        async with serve(
            config,
            llm_base_url=base,
            llm_model="ok",
            tts="openai",
            TTS_SERVER=base,
            max_session=AT_ONCE,
            avatars_dir=twin_avatars,
        ) as server:
            server.state.services.transcriber = quick_transcriber  # type: ignore[method-assign]
            await session_with_every_feature(server, 0, speech)  # warm-up: first-use pools and caches
            tasks, threads = asyncio.all_tasks(), threading.enumerate()
            await open_and_close(server, SESSIONS, lambda s, i: session_with_every_feature(s, i, speech))
            await nothing_left(server, tasks, threads)


async def realtime_session(server: Server, i: int) -> None:
    """A speech-to-speech session: typed chat and echo, the microphone streamed to the service, a /ws/audio
    utterance, interrupt; the connection to the service still open when the client goes away."""
    client, events, sse = await connect_with_events(server, ScriptedMicrophone())
    sid = client.sessionid
    await post_ok(server, "/human", {"sessionid": sid, "text": "Hello", "type": "chat"})
    ws = await ws_utterance(server, sid, f"streamed {i}")
    assert await until(lambda: any(e.get("status") == "end" for e in events), 10), events
    await post_ok(server, "/human", {"sessionid": sid, "text": "long", "type": "chat"})
    await post_ok(server, "/interrupt_talk", {"sessionid": sid})
    await post_ok(server, "/human", {"sessionid": sid, "text": "Read this aloud.", "type": "echo"})
    sse.cancel()
    await client.close()
    assert await until(lambda: server.state.registry.get(sid) is None, 15), "the session did not end"
    await ws.close()


async def test_realtime_sessions_leave_no_task_and_no_thread(serve, config) -> None:
    async with fake_realtime.realtime_service() as (url, _):
        async with serve(
            config, tts="realtime", TTS_SERVER=url, realtime_model="gpt-realtime", max_session=AT_ONCE
        ) as server:
            await realtime_session(server, 0)  # warm-up
            tasks, threads = asyncio.all_tasks(), threading.enumerate()
            await open_and_close(server, 10, realtime_session)
            await nothing_left(server, tasks, threads)
