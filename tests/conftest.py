"""The fixtures shared by the whole suite (tests/ mirrors the packages; this is its only conftest).

With --import-mode=importlib a test module cannot import a conftest, so data and helpers that tests need are
handed out as fixtures (`media`, `fakes`, `speech_like`); the fakes themselves live in testing/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from engines.lite import LiteEngine
from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import demo_image, ensure_demo
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from musetalk.tiny import TinyLayout, write_tiny_layout
from musetalk.whisper import whisper_tiny_config
from pipeline.actions import save_action
from server.config import ServerConfig
from server.services import Services, build_llm, build_tts
from testing import fake_realtime, fake_services, official_audio, rtc
from testing.fake_hub import FakeHub, serve_fake_hub
from testing.media import decode_video, shifted, write_video
from testing.server_client import Server, running_server

CHROMIUM = Path("/usr/bin/chromium")
ACTION = 2  # the audiotype of the action clip saved into the server tests' demo avatar
BLANK = (3, 4, 9)  # frames of the synthetic face video with no face


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """The test machine's 2 cores are shared with the servers, peers and browsers the tests start: more torch
    threads only add contention (the tiny-model engine tests ask for 2 themselves: `tiny_models`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- network ------------------------------------------------------------------------------------------------------


@pytest.fixture
def loopback_only() -> None:
    """Requested by every test that uses WebRTC or a browser: it runs only inside a loopback-only network
    namespace (skipped outside one, failed under CI), with ICE host candidates on 127.0.0.1."""
    rtc.loopback_only()


@pytest.fixture
def chromium(loopback_only: None) -> Path:
    """Debian's Chromium, driven by the playwright package (its own browser downloads are never used)."""
    if importlib.util.find_spec("playwright") is None:
        rtc.skip_or_fail(
            "the playwright package is missing: .venv/bin/pip install -c constraints-cpu.txt playwright==1.65.2"
        )
    if not CHROMIUM.exists():
        rtc.skip_or_fail(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    return CHROMIUM


# -- avatars ------------------------------------------------------------------------------------------------------


def _demo_avatars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh avatars folder holding the demo avatar (prepared without model weights)."""
    root = tmp_path_factory.mktemp("avatars")
    ensure_demo(root, progress=False, models_dir=root / "no-models")
    return root


@pytest.fixture(scope="session")
def demo_avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    """The demo avatar as prepared (read only: tests that change an avatar make their own)."""
    return load_avatar("demo", _demo_avatars(tmp_path_factory))


@pytest.fixture(scope="session")
def avatars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server tests' avatars folder: the demo avatar with an action clip (audiotype ACTION) whose frames carry a
    red band, so that action frames are recognisable."""
    root = _demo_avatars(tmp_path_factory)
    demo = load_avatar("demo", root)
    frames = np.ascontiguousarray(demo.frames[[0, 0, 0]])
    frames[:, :40] = (0, 0, 255)
    save_action(demo.path, ACTION, frames)
    return root


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return demo_image()


@pytest.fixture(scope="session")
def astronaut_landmarks(astronaut: np.ndarray) -> np.ndarray:
    from musetalk.face import FaceLandmarker  # mediapipe: loaded only by the tests that detect faces

    with FaceLandmarker(static_image_mode=True) as detector:
        lm = detector.detect(astronaut)
    assert lm is not None
    return lm


class Media:
    """Video helpers (testing.media) and the synthetic video's blank frames, handed to tests as a fixture."""

    blank = BLANK
    write_video = staticmethod(write_video)
    decode_video = staticmethod(decode_video)
    shifted = staticmethod(shifted)


@pytest.fixture(scope="session")
def media() -> type[Media]:
    return Media


@pytest.fixture(scope="session")
def face_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """12 frames of the astronaut drifting a few pixels per frame; frames in BLANK are plain grey."""
    frames = [np.full_like(astronaut, 128) if i in BLANK else shifted(astronaut, 3 * i, 2 * i) for i in range(12)]
    return write_video(tmp_path_factory.mktemp("video") / "drift.mp4", frames)


@pytest.fixture(scope="session")
def prepared_video(tmp_path_factory: pytest.TempPathFactory, face_video: Path) -> Path:
    return prepare_avatar(
        face_video,
        "drift",
        tmp_path_factory.mktemp("avatars"),
        PrepareOptions(progress=False, models_dir=tmp_path_factory.mktemp("no_models")),
    )


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return prepare_avatar(
        astronaut,
        "demo",
        tmp_path_factory.mktemp("avatars"),
        PrepareOptions(progress=False, models_dir=tmp_path_factory.mktemp("no_models")),
    )


# -- models -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyLayout]:
    """An official-layout models folder with tiny random weights (whisper included), run with 2 torch threads
    by the module's tests (module scope: the thread count goes back afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield write_tiny_layout(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> TinyLayout:
    """The tiny official-layout models folder without whisper (the model loading and download tests)."""
    return write_tiny_layout(tmp_path_factory.mktemp("models"), whisper=False)


@pytest.fixture(scope="session")
def tiny_encoder() -> WhisperEncoder:
    return official_audio.seeded_encoder(whisper_tiny_config(), 0)


@pytest.fixture(scope="session")
def micro_encoder() -> WhisperEncoder:
    return official_audio.seeded_encoder(official_audio.micro_config(), 1)


@pytest.fixture(scope="session")
def micro_config() -> WhisperConfig:
    return official_audio.micro_config()


@pytest.fixture(scope="session")
def speech_like() -> Callable[..., np.ndarray]:
    return official_audio.speech_like


# -- services -----------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with serve_fake_hub() as hub:
        yield hub


@pytest.fixture
async def openai_server() -> AsyncIterator[tuple[str, fake_services.Recorder]]:
    async with fake_services.openai_service() as served:
        yield served


@pytest.fixture
async def sovits_server() -> AsyncIterator[tuple[str, fake_services.Recorder]]:
    async with fake_services.sovits_service() as served:
        yield served


@pytest.fixture
async def realtime_server() -> AsyncIterator[tuple[str, fake_realtime.RealtimeRecorder]]:
    async with fake_realtime.realtime_service() as served:
        yield served


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The fake services' scripted data and helpers."""
    fs, fr = fake_services, fake_realtime
    return SimpleNamespace(
        ANSWER_DELTAS=fs.ANSWER_DELTAS,
        TONE_HZ=fs.TONE_HZ,
        tone_pcm16=fs.tone_pcm16,
        free_port=fs.free_port,
        SOVITS_RATE=fs.SOVITS_RATE,
        REALTIME_TEXT=fr.REALTIME_TEXT,
        REALTIME_SAMPLES=fr.REALTIME_SAMPLES,
        heard_transcript=fr.heard_transcript,
    )


# -- the server ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine() -> LiteEngine:
    return LiteEngine()


@pytest.fixture
def config(avatars_dir: Path, tmp_path: Path) -> ServerConfig:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>avatar test page</title>")
    (web / "client.js").write_text("// test asset")
    return ServerConfig(
        host="127.0.0.1",
        listenport=0,
        engine="lite",
        avatars_dir=avatars_dir,
        records_dir=tmp_path / "records",
        web_dir=web,
        ice_host=("127.0.0.1",),
        max_session=3,
        idle_timeout=30.0,
    )


@pytest.fixture
def serve(engine: LiteEngine) -> Callable[..., AbstractAsyncContextManager[Server]]:
    """serve(config, **changes) -> async context manager yielding a testing.server_client.Server."""

    def start(config: ServerConfig, **changes: Any) -> AbstractAsyncContextManager[Server]:
        config = dataclasses.replace(config, **changes)
        return running_server(config, Services(config, engine, build_tts(config), build_llm(config)))

    return start
