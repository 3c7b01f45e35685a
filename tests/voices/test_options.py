"""The voices' option classes: typed and frozen, checked when made (a message naming the field), and the builders
that make each backend from its options."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from voices.llm import ChatLLM, Conversation, LocalChatLLM
from voices.openai_api import OpenAIEndpoint
from voices.options import (
    DEFAULT_SYSTEM_PROMPT,
    ASROptions,
    CosyVoiceOptions,
    EdgeTTSOptions,
    GPTSoVITSOptions,
    LLMOptions,
    OpenAITTSOptions,
    OptionError,
    PiperOptions,
    RealtimeOptions,
    create_llm,
    create_tts,
    new_conversation,
)
from voices.realtime import RealtimeClient
from voices.tts import TTSError
from voices.tts_cosyvoice import CosyVoiceTTS
from voices.tts_edge import EdgeTTS
from voices.tts_http import GPTSoVITSTTS, OpenAITTS

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = OpenAIEndpoint("http://127.0.0.1:1/v1", api_key="sk-test")


@pytest.mark.parametrize(
    ("make", "field", "words"),
    [
        (lambda: EdgeTTSOptions(" "), "voice", "needs an edge-tts voice name"),
        (lambda: OpenAITTSOptions(ENDPOINT, voice=""), "voice", "needs a voice name"),
        (lambda: OpenAITTSOptions(ENDPOINT, model=""), "model", "needs a model name"),
        (lambda: GPTSoVITSOptions(""), "ref_audio_path", "needs the reference audio's path on the GPT-SoVITS server"),
        (
            lambda: GPTSoVITSOptions("ref.wav", server="127.0.0.1:9880"),
            "server",
            "must be a URL starting with http:// or https://, got '127.0.0.1:9880'",
        ),
        (lambda: CosyVoiceOptions(Path("")), "recording", "needs the path of a WAV recording"),
        (lambda: CosyVoiceOptions(Path("ref.wav"), server="ftp://h"), "server", "starting with http:// or https://"),
        (lambda: LLMOptions(model=""), "model", "needs a model name"),
        (lambda: LLMOptions(max_turns=0), "max_turns", "must be at least 1, got 0"),
        (lambda: ASROptions(device="tpu"), "device", "must be one of cpu, cuda, got 'tpu'"),  # type: ignore[arg-type]
        (lambda: ASROptions(model=""), "model", "needs a whisper folder or model name"),
        (lambda: ASROptions(language=" "), "language", "needs a language code"),
        (lambda: RealtimeOptions(model=""), "model", "needs a model name"),
        (
            lambda: RealtimeOptions(turn_detection="loud"),  # type: ignore[arg-type]
            "turn_detection",
            "must be one of server_vad, semantic_vad, got 'loud'",
        ),
        (lambda: RealtimeOptions(url="https://api.openai.com/v1/realtime"), "url", "starting with ws:// or wss://"),
        (lambda: RealtimeOptions(voice=""), "voice", "needs a voice name"),
    ],
)
def test_a_bad_option_is_refused_with_its_field_and_why(make, field: str, words: str) -> None:
    with pytest.raises(OptionError) as e:
        make()
    assert e.value.field == field and words in e.value.why
    assert str(e.value).endswith(f".{field}: {e.value.why}")  # the class and the field, then why


def test_options_are_frozen_with_the_documented_defaults() -> None:
    assert EdgeTTSOptions().voice == "zh-CN-YunxiaNeural" and OpenAITTSOptions(ENDPOINT).voice == "alloy"
    assert GPTSoVITSOptions("ref.wav").server == "http://127.0.0.1:9880"
    assert CosyVoiceOptions(Path("ref.wav")).server == "http://127.0.0.1:50000"
    assert LLMOptions().endpoint is None and LLMOptions().system_prompt == DEFAULT_SYSTEM_PROMPT
    assert (ASROptions().model, ASROptions().device) == (None, "cpu")
    assert (RealtimeOptions().model, RealtimeOptions().turn_detection) == ("gpt-realtime", "server_vad")
    with pytest.raises(dataclasses.FrozenInstanceError):
        EdgeTTSOptions().voice = "x"  # type: ignore[misc]


def test_one_default_system_prompt() -> None:
    assert Conversation(LocalChatLLM()).system_prompt == DEFAULT_SYSTEM_PROMPT == RealtimeOptions().instructions


def test_a_reference_voice_replaces_the_audio_and_the_transcript() -> None:
    gpt = GPTSoVITSOptions("configured.wav", "configured text", "http://h:1")
    assert gpt.with_reference("mine.wav", "") == GPTSoVITSOptions("mine.wav", "", "http://h:1")
    assert gpt.with_reference(None, "new text") == GPTSoVITSOptions("configured.wav", "new text", "http://h:1")
    cosy = CosyVoiceOptions(Path("/refs/a.wav"), "a text")
    assert cosy.with_reference("/refs/b.wav", "") == CosyVoiceOptions(Path("/refs/b.wav"), "")


async def test_each_tts_backend_is_built_from_its_options(tmp_path: Path) -> None:
    edge = create_tts(EdgeTTSOptions("en-US-AriaNeural"))
    assert isinstance(edge, EdgeTTS) and edge.voice == "en-US-AriaNeural"
    gpt = create_tts(GPTSoVITSOptions("ref.wav", "its text", "http://127.0.0.1:9/"))
    assert isinstance(gpt, GPTSoVITSTTS) and gpt.url == "http://127.0.0.1:9/tts"
    async with create_tts(OpenAITTSOptions(ENDPOINT, voice="marin", model="tts-1")) as openai_tts:  # type: ignore[attr-defined]
        assert isinstance(openai_tts, OpenAITTS) and (openai_tts.voice, openai_tts.model) == ("marin", "tts-1")
    wav = tmp_path / "ref.wav"
    wav.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    cosy = create_tts(CosyVoiceOptions(wav, "its text", "http://127.0.0.1:9"))
    assert isinstance(cosy, CosyVoiceTTS) and (cosy.prompt_wav[:4], cosy.prompt_text) == (b"RIFF", "its text")
    with pytest.raises(TTSError, match="cannot read the reference recording"):
        create_tts(CosyVoiceOptions(tmp_path / "missing.wav"))
    with pytest.raises(TTSError, match="piper voice model not found"):
        create_tts(PiperOptions(tmp_path / "missing.onnx"))


async def test_chat_is_built_from_its_options() -> None:
    assert isinstance(create_llm(LLMOptions()), LocalChatLLM)
    remote = create_llm(LLMOptions(ENDPOINT, "my-model"))
    assert isinstance(remote, ChatLLM) and remote.model == "my-model" and remote.endpoint == ENDPOINT
    await remote.aclose()
    conversation = new_conversation(remote, LLMOptions(ENDPOINT, system_prompt="Be brief.", max_turns=3))
    assert (conversation.system_prompt, conversation.max_turns) == ("Be brief.", 3)


def test_realtime_options_make_the_client_and_the_session_update() -> None:
    options = RealtimeOptions(
        ENDPOINT, "my-realtime", "ws://127.0.0.1:9/v1/realtime", "marin", "semantic_vad", "Be a guide."
    )
    client = options.client()
    assert isinstance(client, RealtimeClient) and client.model == "my-realtime" and client.endpoint == ENDPOINT
    assert client.url == "ws://127.0.0.1:9/v1/realtime"
    setup = options.session_config()
    assert setup["instructions"] == "Be a guide." and setup["audio"]["output"]["voice"] == "marin"
    assert setup["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"


def test_the_options_module_loads_no_backend() -> None:
    """Options are made (and checked) at start without importing any backend's dependencies."""
    code = (
        "import sys, voices.options; heavy = [m for m in ('voices.tts', 'voices.tts_http', 'voices.tts_edge', "
        "'voices.tts_cosyvoice', 'voices.llm', 'voices.asr', 'voices.realtime', 'piper', 'faster_whisper') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
