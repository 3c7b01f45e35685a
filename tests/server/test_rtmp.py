"""RTMP output against a real RTMP server (Debian's nginx with its RTMP module, started here on 127.0.0.1), read
back with PyAV: 25 fps H.264, AAC audio, audio and picture in sync, reconnection after the server restarts, and
the pushed session driven through the API while WebRTC sessions run beside it."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from bench.measure import mouth_darkening, mouth_region
from core.tasks import TaskOwner
from server.config import parse_args
from server.rtmp import RtmpPusher
from testing.fake_services import free_port
from testing.media import marker_tick
from testing.rtc import skip_or_fail
from testing.server_client import Client, until, upload

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
INSTALL_HINT = "the RTMP tests need Debian's nginx with its RTMP module: apt-get install -y nginx libnginx-mod-rtmp"
MAX_OFFSET_MS = 20.0


@dataclass
class Nginx:
    """An nginx RTMP server on 127.0.0.1, a child of the test, that can be killed and started again."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def url(self, stream: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{stream}"

    def start(self) -> None:
        conf = self.folder / "nginx.conf"
        conf.write_text(f"""load_module {RTMP_MODULE};
daemon off;
master_process off;
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log info;
events {{ worker_connections 64; }}
rtmp {{ server {{ listen 127.0.0.1:{self.port}; application live {{ live on; record off; }} }} }}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.folder), "-e", str(self.folder / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


@pytest.fixture
def nginx(tmp_path: Path, loopback_only: None):
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) or not RTMP_MODULE.exists():
        skip_or_fail(INSTALL_HINT)
    server = Nginx(tmp_path)
    server.start()
    yield server
    server.kill()


@dataclass
class Readback:
    """What a PyAV player read from the RTMP server: (seconds, frame) of video, (seconds, samples, rate) of audio."""

    video: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray, int]] = field(default_factory=list)
    codecs: set[str] = field(default_factory=set)
    error: Exception | None = None

    def fps(self) -> float:
        times = [t for t, _ in self.video]
        return (len(times) - 1) / (times[-1] - times[0])

    def audio_onset(self, after: float, level: float = 0.05) -> float | None:
        for t, samples, rate in self.audio:
            if t + len(samples) / rate < after:
                continue
            loud = np.flatnonzero(np.abs(samples) > level)
            if loud.size:
                return t + loud[0] / rate
        return None


def read_stream(url: str, seconds: float, into: Readback) -> None:
    """Play `url` for `seconds` of media (a thread: PyAV blocks)."""
    try:
        with av.open(url, timeout=(10, 10)) as container:
            into.codecs = {s.codec_context.name for s in container.streams}
            first = None
            for frame in container.decode(*container.streams):
                t = float(frame.time)
                first = t if first is None else first
                if isinstance(frame, av.VideoFrame):
                    into.video.append((t, frame.to_ndarray(format="bgr24")))
                else:
                    into.audio.append((t, frame.to_ndarray()[0].astype(np.float32), frame.sample_rate))
                if t - first >= seconds:
                    break
    except Exception as e:  # noqa: BLE001  (reported by the test)
        into.error = e


def reader(url: str, seconds: float) -> tuple[threading.Thread, Readback]:
    into = Readback()
    thread = threading.Thread(target=read_stream, args=(url, seconds, into), daemon=True)
    thread.start()
    return thread, into


class StubSession:
    """What a pusher needs of a session: an id and its sinks."""

    session_id = "stub"

    def __init__(self) -> None:
        self.tasks = TaskOwner("stub")

    def add_sink(self, sink) -> None:
        pass

    def remove_sink(self, sink) -> None:
        pass


def push_ticks(pusher: RtmpPusher, ticks: range, onset_tick: int) -> None:
    started = time.monotonic()
    for k in ticks:
        time.sleep(max(0.0, started + (k - ticks.start) * 0.04 - time.monotonic()))
        pusher(marker_tick(k, onset_tick))


def test_the_pushed_stream_is_25_fps_h264_with_aac_and_the_marker_frame_meets_its_sound(nginx: Nginx) -> None:
    pusher = RtmpPusher(StubSession(), nginx.url("marker"))  # type: ignore[arg-type]
    pusher.start()
    feeder = threading.Thread(target=push_ticks, args=(pusher, range(200), 125), daemon=True)
    feeder.start()  # the onset 5 s in: after two key frames
    try:
        assert pusher.wait_connected(10), pusher.last_error
        thread, got = reader(nginx.url("marker"), seconds=6.0)
        feeder.join(20)
        thread.join(15)
    finally:
        pusher.stop()
    assert got.error is None, got.error
    assert got.codecs == {"h264", "aac"} and {rate for _, _, rate in got.audio} == {48000}
    assert abs(got.fps() - 25.0) < 0.01
    steps = np.diff([t for t, _ in got.video])
    assert np.allclose(steps, 0.04, atol=0.0011), steps  # FLV stores milliseconds
    video_onset = next(t for t, frame in got.video if frame.mean() > 128)
    audio_onset = got.audio_onset(after=video_onset - 1.0)
    assert audio_onset is not None
    offset_ms = 1000 * (video_onset - audio_onset)
    print(f"marker frame - sound onset: {offset_ms:+.1f} ms")
    assert abs(offset_ms) <= MAX_OFFSET_MS
    assert pusher.connects == 1 and pusher.dropped == 0 and not thread.is_alive()


def test_the_pusher_reconnects_after_the_server_restarts(nginx: Nginx) -> None:
    pusher = RtmpPusher(StubSession(), nginx.url("again"), backoff=(0.2, 1.0))  # type: ignore[arg-type]
    pusher.start()
    feeding = True

    def feed() -> None:
        k = 0
        while feeding:
            pusher(marker_tick(k, onset=10**9))
            k += 1
            time.sleep(0.04)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        assert pusher.wait_connected(10), pusher.last_error
        thread, got = reader(nginx.url("again"), seconds=3.0)  # a key frame comes every 2 s
        thread.join(15)
        assert got.error is None and len(got.video) >= 20
        nginx.kill()
        deadline = time.monotonic() + 15
        while pusher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pusher.connected and pusher.last_error
        time.sleep(1.5)  # a few failed attempts while it is down (the backoff grows to its cap)
        nginx.start()
        deadline = time.monotonic() + 15
        while pusher.connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pusher.connects == 2
        thread, got = reader(nginx.url("again"), seconds=3.0)  # a key frame comes every 2 s
        thread.join(15)
        assert got.error is None and len(got.video) >= 20 and got.audio
    finally:
        feeding = False
        feeder.join()
        pusher.stop()
    assert not [t for t in threading.enumerate() if t.name == "rtmp-stub"]


def wav(seconds_silent: float, seconds_tone: float) -> bytes:
    silence = np.zeros(int(16000 * seconds_silent), np.float32)
    t = np.arange(int(16000 * seconds_tone)) / 16000
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([silence, 0.6 * np.sin(2 * np.pi * 220 * t)]), 16000, format="WAV")
    return buf.getvalue()


async def test_the_server_pushes_a_session_driven_by_the_api_beside_webrtc_sessions(serve, config, nginx) -> None:
    import asyncio

    from musetalk.avatar import load_avatar

    url = nginx.url("avatar")
    async with serve(config, transports=("webrtc", "rtmp"), push_url=url, push_session_id="0") as server:
        live = server.state.registry.get("0")
        assert live is not None and live.pusher is not None and live.pc is None
        assert await until(lambda: live.pusher.connected, 10), live.pusher.last_error
        browser = Client(server)  # a WebRTC session at the same time
        await browser.connect()
        thread, got = reader(url, seconds=6.0)
        assert await until(lambda: len(got.video) >= 10, 10)  # playing from a key frame on
        status, body = await upload(server, "0", wav(0.4, 1.0))
        assert status == 200, body
        await asyncio.to_thread(thread.join, 20)
        await browser.wait_video(50)
        status, body = await server.post("/set_avatar", {"sessionid": "0", "avatar": "nobody"})
        assert status == 404
    assert got.error is None, got.error
    assert got.codecs == {"h264", "aac"} and abs(got.fps() - 25.0) < 0.01
    region = mouth_region(load_avatar("demo", config.avatars_dir))
    audio_onset = got.audio_onset(after=got.video[0][0])
    assert audio_onset is not None, "the uploaded tone never reached the stream"
    before = [frame for t, frame in got.video if t < audio_onset - 0.1]
    mouth_onset = next(
        t for t, frame in got.video if t > audio_onset - 0.2 and mouth_darkening(frame, before[-1], region) > 1.0
    )
    offset_ms = 1000 * (mouth_onset - audio_onset)
    print(f"mouth opening - sound onset over RTMP: {offset_ms:+.1f} ms")
    assert abs(offset_ms) <= MAX_OFFSET_MS
    assert not [t for t in threading.enumerate() if t.name.startswith("rtmp-")]  # the server stopped it


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--transport", "rtmp"], "--push_url"),
        (["--transport", "rtmp", "--push_url", "http://x/y"], "--push_url"),
        (["--transport", "srt"], "unknown transport"),
        (["--transport", "rtmp", "--push_url", "rtmp://h/a/s", "--push_session_id", "../x"], "--push_session_id"),
    ],
)
def test_bad_transport_options(argv: list[str], words: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert words in capsys.readouterr().err


def test_transport_options() -> None:
    assert parse_args([]).transports == ("webrtc",)
    c = parse_args(["--transport", "rtmp", "--push_url", "rtmp://127.0.0.1/live/s"])
    assert c.transports == ("webrtc", "rtmp") and c.push_url == "rtmp://127.0.0.1/live/s" and c.push_session_id == "0"
    assert parse_args(["--transport", "webrtc,rtmp", "--push_url", "rtmps://h/a/s"]).transports == ("webrtc", "rtmp")
