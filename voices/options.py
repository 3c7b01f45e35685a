"""What each voice, chat and speech-recognition backend is built from: one frozen, typed options class per backend,
checked when it is made (OptionError names the field and why), and the functions that build a backend from its
options. The server translates its command line (LiveTalking's --tts, --REF_FILE, --REF_TEXT, --TTS_SERVER) into
these at its edge; nothing here knows those names.

Importing this module loads no backend: each builder imports its backend when it is called, so choosing one voice
never imports another's dependencies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, assert_never, get_args

from voices.openai_api import OpenAIEndpoint

if TYPE_CHECKING:
    from voices.asr import Transcriber
    from voices.llm import ChatModel, Conversation
    from voices.realtime import RealtimeClient
    from voices.tts import TTS

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly, in a spoken, conversational style."
GPT_SOVITS_SERVER = "http://127.0.0.1:9880"
COSYVOICE_SERVER = "http://127.0.0.1:50000"
EDGE_VOICE = "zh-CN-YunxiaNeural"
OPENAI_VOICE = "alloy"
OPENAI_TTS_MODEL = "gpt-4o-mini-tts"
REALTIME_MODEL = "gpt-realtime"
TurnDetection = Literal["server_vad", "semantic_vad"]
TURN_DETECTION: tuple[str, ...] = get_args(TurnDetection)
ASRDevice = Literal["cpu", "cuda"]
ASR_DEVICES: tuple[str, ...] = get_args(ASRDevice)


class OptionError(Exception):
    """An option a backend cannot be built with; ``field`` is the option's name, the message says why."""

    def __init__(self, owner: object, field: str, why: str) -> None:
        super().__init__(f"{type(owner).__name__}.{field}: {why}")
        self.field, self.why = field, why


def _need_text(owner: object, field: str, what: str) -> None:
    value = getattr(owner, field)
    if not isinstance(value, str) or not value.strip():
        raise OptionError(owner, field, f"needs {what}, got {value!r}")


def _need_url(owner: object, field: str, schemes: tuple[str, ...]) -> None:
    value = getattr(owner, field)
    if not isinstance(value, str) or not value.startswith(schemes) or not value.split("://", 1)[1]:
        raise OptionError(owner, field, f"must be a URL starting with {' or '.join(schemes)}, got {value!r}")


def _need_choice(owner: object, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(owner, field)
    if value not in choices:
        raise OptionError(owner, field, f"must be one of {', '.join(choices)}, got {value!r}")


# ------------------------------------------------------------------------------------------------------------- TTS


@dataclass(frozen=True)
class PiperOptions:
    """The offline piper voice: a voice model file (its ``.onnx.json`` beside it), or None for the CC0 one."""

    model_path: Path | None = None


@dataclass(frozen=True)
class EdgeTTSOptions:
    """Microsoft edge-tts: a voice name such as ``en-US-AriaNeural``."""

    voice: str = EDGE_VOICE

    def __post_init__(self) -> None:
        _need_text(self, "voice", "an edge-tts voice name")


@dataclass(frozen=True)
class OpenAITTSOptions:
    """OpenAI(-compatible) ``/audio/speech``."""

    endpoint: OpenAIEndpoint
    voice: str = OPENAI_VOICE
    model: str = OPENAI_TTS_MODEL

    def __post_init__(self) -> None:
        _need_text(self, "voice", "a voice name")
        _need_text(self, "model", "a model name")


@dataclass(frozen=True)
class GPTSoVITSOptions:
    """A GPT-SoVITS ``api_v2`` server cloning the voice of ``ref_audio_path`` (a path on that server), whose
    transcript is ``prompt_text``."""

    ref_audio_path: str
    prompt_text: str = ""
    server: str = GPT_SOVITS_SERVER

    def __post_init__(self) -> None:
        _need_text(self, "ref_audio_path", "the reference audio's path on the GPT-SoVITS server")
        _need_url(self, "server", ("http://", "https://"))

    def with_reference(self, audio: str | None, text: str) -> Self:
        """Another reference voice (audio None: the same audio with another transcript)."""
        return dataclasses.replace(self, ref_audio_path=audio or self.ref_audio_path, prompt_text=text)


@dataclass(frozen=True)
class CosyVoiceOptions:
    """A CosyVoice server cloning the voice of ``recording`` (a WAV file here, sent with each sentence), whose
    transcript is ``transcript`` (without one, CosyVoice's cross-lingual mode)."""

    recording: Path
    transcript: str = ""
    server: str = COSYVOICE_SERVER

    def __post_init__(self) -> None:
        if not isinstance(self.recording, Path) or not self.recording.name:
            raise OptionError(self, "recording", f"needs the path of a WAV recording, got {self.recording!r}")
        _need_url(self, "server", ("http://", "https://"))

    def with_reference(self, audio: str | None, text: str) -> Self:
        """Another reference voice (audio None: the same recording with another transcript)."""
        return dataclasses.replace(self, recording=Path(audio) if audio else self.recording, transcript=text)


TTSOptions = PiperOptions | EdgeTTSOptions | OpenAITTSOptions | GPTSoVITSOptions | CosyVoiceOptions
CloningOptions = GPTSoVITSOptions | CosyVoiceOptions  # the backends that take a reference voice per session


def create_tts(options: TTSOptions) -> TTS:
    """The backend of ``options``. Blocking: piper loads its voice, CosyVoice reads its recording (TTSError if it
    cannot); MissingExtraError without the backend's extra."""
    match options:
        case PiperOptions():
            from voices.tts import PiperTTS

            return PiperTTS(options.model_path)
        case EdgeTTSOptions():
            from voices.tts_edge import EdgeTTS

            return EdgeTTS(options.voice)
        case OpenAITTSOptions():
            from voices.tts_http import OpenAITTS

            return OpenAITTS(options.endpoint, model=options.model, voice=options.voice)
        case GPTSoVITSOptions():
            from voices.tts_http import GPTSoVITSTTS

            return GPTSoVITSTTS(options.server, ref_audio_path=options.ref_audio_path, prompt_text=options.prompt_text)
        case CosyVoiceOptions():
            from voices.tts_cosyvoice import CosyVoiceTTS

            return CosyVoiceTTS.from_file(options.server, options.recording, options.transcript)
        case _:
            assert_never(options)


# ------------------------------------------------------------------------------------------------------------- LLM


@dataclass(frozen=True)
class LLMOptions:
    """Chat: an OpenAI-compatible ``endpoint`` and its ``model`` (None: the offline SmolLM2, which ignores
    ``model``); every conversation starts from ``system_prompt`` and keeps ``max_turns`` exchanges."""

    endpoint: OpenAIEndpoint | None = None
    model: str = "gpt-4o-mini"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_turns: int = 8

    def __post_init__(self) -> None:
        _need_text(self, "model", "a model name")
        if not isinstance(self.max_turns, int) or self.max_turns < 1:
            raise OptionError(self, "max_turns", f"must be at least 1, got {self.max_turns!r}")


def create_llm(options: LLMOptions) -> ChatModel:
    """The chat model of ``options`` (the offline one loads its weights on the first chat, once per process)."""
    from voices.llm import ChatLLM, LocalChatLLM

    return ChatLLM(options.endpoint, options.model) if options.endpoint is not None else LocalChatLLM()


def new_conversation(llm: ChatModel, options: LLMOptions) -> Conversation:
    """A conversation of one session with ``llm``, as ``options`` say."""
    from voices.llm import Conversation

    return Conversation(llm, options.system_prompt, options.max_turns)


# ------------------------------------------------------------------------------------------------------------- ASR


@dataclass(frozen=True)
class ASROptions:
    """Speech recognition: ``model`` a CTranslate2 whisper folder or a faster-whisper model name (None: the
    bundled English tiny.en), ``language`` a whisper language code (None: detected), where it runs."""

    model: str | None = None
    language: str | None = None
    device: ASRDevice = "cpu"

    def __post_init__(self) -> None:
        _need_choice(self, "device", ASR_DEVICES)
        if self.model is not None:
            _need_text(self, "model", "a whisper folder or model name")
        if self.language is not None:
            _need_text(self, "language", "a language code such as en or zh")


def create_transcriber(options: ASROptions) -> Transcriber:
    """Blocking: loads the whisper model (once per process)."""
    from voices.asr import Transcriber

    return Transcriber(options.model, language=options.language, device=options.device)


# -------------------------------------------------------------------------------------------------------- realtime


@dataclass(frozen=True)
class RealtimeOptions:
    """The OpenAI Realtime API speaking for a session: ``url`` the WebSocket endpoint (``wss://.../v1/realtime``;
    None: the endpoint's), ``voice`` None for the service's default."""

    endpoint: OpenAIEndpoint = OpenAIEndpoint()
    model: str = REALTIME_MODEL
    url: str | None = None
    voice: str | None = None
    turn_detection: TurnDetection = "server_vad"
    instructions: str = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        _need_text(self, "model", "a model name")
        _need_choice(self, "turn_detection", TURN_DETECTION)
        if self.url is not None:
            _need_url(self, "url", ("ws://", "wss://"))
        if self.voice is not None:
            _need_text(self, "voice", "a voice name")

    def client(self) -> RealtimeClient:
        """A new connection (not yet connected)."""
        from voices.realtime import RealtimeClient

        return RealtimeClient(self.endpoint, self.model, self.url)

    def session_config(self) -> dict[str, Any]:
        """The ``session.update`` body a new connection is configured with."""
        from voices.realtime import session_config

        return session_config(self.instructions, self.voice, self.turn_detection)
