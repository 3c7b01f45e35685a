"""Command-line options: LiveTalking's names where they exist, ours beside them; parsed into one frozen config.

Each option is declared once, as a field of ServerConfig (`option(...)`: default, flags, group, argparse settings,
help); the parser, the --config file's keys and the config are all made from those declarations. The voices'
options (voices.options) are translated from LiveTalking's names (--tts, --REF_FILE, --REF_TEXT, --TTS_SERVER)
here, and only here."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.base import DEFAULT_RIGHT_CONTEXT_S
from musetalk.avatar import validate_avatar_id
from musetalk.cli import ArgumentParser
from pipeline.actions import parse_custom_config
from server.options import add_options, ignored_notices, with_config_file
from voices.openai_api import OpenAIEndpoint
from voices.options import (
    ASR_DEVICES,
    COSYVOICE_SERVER,
    DEFAULT_SYSTEM_PROMPT,
    GPT_SOVITS_SERVER,
    TURN_DETECTION,
    ASRDevice,
    ASROptions,
    CosyVoiceOptions,
    EdgeTTSOptions,
    GPTSoVITSOptions,
    LLMOptions,
    OpenAITTSOptions,
    OptionError,
    PiperOptions,
    RealtimeOptions,
    TTSOptions,
    TurnDetection,
)

TTS_CHOICES = ("piper", "edgetts", "openai", "gpt-sovits", "cosyvoice", "realtime")
ENGINE_CHOICES = ("auto", "musetalk", "lite")
TRANSPORTS = ("webrtc", "rtmp")
# LiveTalking's other outputs, refused by name: what each one is, so the message says why it is not here.
FOREIGN_TRANSPORTS = {
    "virtualcam": "a virtual camera on LiveTalking's desktop (pyvirtualcam)",
    "rtcpush": "WebRTC pushed to a WHIP server such as SRS",
}
# LiveTalking's --model names the lip-sync model; this server runs MuseTalk, so it picks the weights version.
MODEL_VERSIONS = {"musetalk": "v15", "musetalkV15": "v15", "v15": "v15", "musetalkV1": "v1", "v1": "v1"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AUTH_TOKEN_ENV = "AVATAR_AUTH_TOKEN"
MIN_TOKEN_CHARS = 16


class ConfigError(Exception):
    """A configuration that cannot run; the message names the options at fault."""


# ---------------------------------------------------------------------------------------- checks of single values


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _render_pool(text: str) -> str:
    from engines.render_pool import pool_address

    try:
        pool_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _avatar_id(text: str) -> str:
    try:
        return validate_avatar_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _model_version(text: str) -> str:
    if text not in MODEL_VERSIONS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not supported: this server runs MuseTalk; choose one of {', '.join(MODEL_VERSIONS)}"
        )
    return MODEL_VERSIONS[text]


def _ice_url(scheme: tuple[str, ...]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.startswith(scheme):
            raise argparse.ArgumentTypeError(f"{text!r} must start with {' or '.join(scheme)}")
        return text

    return check


def _transports(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for name in names:
        if name in FOREIGN_TRANSPORTS:
            raise argparse.ArgumentTypeError(
                f"{name} ({FOREIGN_TRANSPORTS[name]}) is a LiveTalking transport this "
                f"server does not have; it serves {' and '.join(TRANSPORTS)}"
            )
    unknown = [t for t in names if t not in TRANSPORTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown transport {', '.join(unknown) or text!r}; choose from {', '.join(TRANSPORTS)}"
        )
    return tuple(dict.fromkeys(("webrtc", *names)))


def auth_tokens(given: Sequence[str], file: Path | None, env: str | None) -> tuple[str, ...]:
    """The accepted tokens from the command line, a tokens file and the environment (ConfigError: a bad one)."""
    tokens = [*given, *([env] if env else [])]
    if file is not None:
        lines = file.read_text(encoding="utf-8").splitlines()
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for token in tokens:
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise ConfigError(
                f"an auth token must be at least {MIN_TOKEN_CHARS} printable characters without "
                f"spaces (got one of {len(token)})"
            )
    return tuple(dict.fromkeys(tokens))


# ------------------------------------------------------------------------------------------- option declarations

# The parser's groups, in the order --help shows them.
NET = "network"
ACCESS = "access (every API route, /sse and /metrics; /healthz and the page stay open)"
ICE = "ICE (no STUN or TURN server is used unless given)"
MODEL = "lip-sync engine and avatar"
VOICE = "voice and chat"
LIMITS = "limits"
LOGS = "logs and metrics"
GROUPS = (NET, ACCESS, ICE, MODEL, VOICE, LIMITS, LOGS)
_OPTION = "option"  # the metadata key of a field that is a command-line option


@dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    group: str
    argparse: Mapping[str, Any]


def option(default: Any, /, *flags: str, group: str, **argparse_settings: Any) -> Any:
    """A ServerConfig field that is also a command-line option (and a --config key): its default, its flags (the
    first is LiveTalking's or ours; more are other spellings), its --help group and argparse's settings (type,
    choices, action, help; a `default` here is the command line's spelling of the field's default)."""
    return field(default=default, metadata={_OPTION: _Option(flags, group, argparse_settings)})


@dataclass(frozen=True)
class ServerConfig:
    host: str = option("0.0.0.0", "--host", group=NET, help="address to listen on")
    listenport: int = option(8010, "--listenport", group=NET, type=_port, help="HTTP port (LiveTalking name)")
    max_session: int = option(5, "--max_session", group=NET, type=_positive_int, help="most concurrent sessions")
    idle_timeout: float = option(
        10.0,
        "--idle_timeout",
        group=NET,
        type=_positive_float,
        help="end a session whose client has stopped taking media (no RTCP receiver report, or no frame taken) for "
        "this many seconds",
    )
    connect_timeout: float = option(
        15.0,
        "--connect_timeout",
        group=NET,
        type=_positive_float,
        help="end a session whose client has not connected (ICE + DTLS) this many seconds after its offer was answered",
    )
    request_timeout: float = option(
        15.0,
        "--request_timeout",
        group=NET,
        type=_positive_float,
        help="close an HTTP connection that sends no complete request headers for this many seconds (also the "
        "idle keep-alive time)",
    )
    cors_origins: tuple[str, ...] = option(
        (),
        "--cors_origins",
        group=NET,
        action="append",
        metavar="ORIGIN",
        help="allow cross-origin API calls from this origin, e.g. https://app.example.org, or * for any "
        "(repeatable; default: same origin only)",
    )
    transports: tuple[str, ...] = option(
        ("webrtc",),
        "--transport",
        group=NET,
        type=_transports,
        default="webrtc",
        metavar="webrtc[,rtmp]",
        help="outputs, comma-separated: webrtc (a session per browser, always served) and rtmp (one more session, "
        "started with the server, pushed to --push_url as H.264 + AAC in FLV)",
    )
    push_url: str | None = option(
        None, "--push_url", group=NET, help="--transport rtmp: where to push, rtmp://host/app/stream"
    )
    push_session_id: str = option(
        "0",
        "--push_session_id",
        group=NET,
        help="--transport rtmp: the session id that drives the pushed stream (/human, /set_avatar...; LiveTalking's "
        "pages use 0)",
    )
    # the tokens of --auth_token, --auth_tokens_file and the environment (parse_args merges them)
    auth_tokens: tuple[str, ...] = option(
        (),
        "--auth_token",
        group=ACCESS,
        action="append",
        metavar="TOKEN",
        help=f"accept this token as 'Authorization: Bearer TOKEN' or ?token=TOKEN (repeatable; env {AUTH_TOKEN_ENV})",
    )
    stun: tuple[str, ...] = option(
        (),
        "--stun",
        group=ICE,
        action="append",
        type=_ice_url(("stun:", "stuns:")),
        help="STUN server URL, e.g. stun:stun.example.org:3478 (repeatable)",
    )
    turn: tuple[str, ...] = option(
        (),
        "--turn",
        group=ICE,
        action="append",
        type=_ice_url(("turn:", "turns:")),
        help="TURN server URL, e.g. turn:turn.example.org:3478 (repeatable)",
    )
    turn_user: str | None = option(None, "--turn_user", group=ICE, help="TURN user name")
    turn_password: str | None = option(None, "--turn_password", group=ICE, help="TURN password (or env TURN_PASSWORD)")
    turn_secret: str | None = option(
        None,
        "--turn_secret",
        group=ICE,
        help="TURN REST API secret shared with the TURN server (coturn: use-auth-secret, static-auth-secret); "
        'clients and sessions then get time-limited credentials "<expiry>:<--turn_user or avatar>" instead '
        "of a fixed password (or env TURN_SECRET)",
    )
    turn_ttl: float = option(
        86400.0, "--turn_ttl", group=ICE, type=_positive_float, help="seconds that TURN REST credentials stay valid"
    )
    ice_host: tuple[str, ...] = option(
        (),
        "--ice_host",
        group=ICE,
        action="append",
        type=_ip,
        help="offer ICE host candidates only on this address, e.g. 127.0.0.1 (repeatable)",
    )
    engine: str = option(
        "auto",
        "--engine",
        group=MODEL,
        choices=ENGINE_CHOICES,
        help="auto: musetalk with CUDA and weights present, else lite (CPU, no weights)",
    )
    version: str = option(
        "v15",
        "--model",
        group=MODEL,
        type=_model_version,
        default="musetalk",
        metavar="{" + ",".join(MODEL_VERSIONS) + "}",
        help="LiveTalking name of the model; here it picks the MuseTalk weights version (musetalk = v15)",
    )
    batch_size: int | None = option(
        None,
        "--batch_size",
        group=MODEL,
        type=_positive_int,
        help="video frames per inference batch (default: the engine's own)",
    )
    device: str | None = option(None, "--device", group=MODEL, help="torch device for musetalk, e.g. cuda:0")
    right_context: float = option(
        DEFAULT_RIGHT_CONTEXT_S,
        "--right_context",
        group=MODEL,
        type=_non_negative_float,
        metavar="SECONDS",
        help="musetalk: audio after a batch waited for before it is rendered (beyond whisper's own 80 ms): latency "
        "vs quality, the pipeline latency grows by this much and the lip features of streamed speech get "
        "closer to those of the whole sentence (BENCHMARKS.md section 9)",
    )
    render_pool: str | None = option(
        None,
        "--render_pool",
        group=MODEL,
        type=_render_pool,
        metavar="ray[://HOST:PORT]",
        help="run musetalk's models in the GPU render pool on Ray Serve, shared by several front ends: 'ray' joins "
        "this machine's Ray cluster (or RAY_ADDRESS), ray://HOST:PORT one through Ray Client "
        "(docs/render_pool.md; needs the 'ray' extra); default: in this process",
    )
    avatar_id: str = option(
        "demo",
        "--avatar_id",
        group=MODEL,
        type=_avatar_id,
        help="default avatar (the demo avatar is built on first start if missing)",
    )
    customvideo_config: Path | None = option(
        None,
        "--customvideo_config",
        group=MODEL,
        type=Path,
        help="LiveTalking's custom-video JSON: a list of {audiotype, imgpath, audiopath?} clips for every session "
        "(audiotype 1 loops as the idle video); /offer custom_config overrides it",
    )
    custom_dir: Path = option(
        Path("data"),
        "--custom_dir",
        group=MODEL,
        type=Path,
        help="the folder whose files an /offer custom_config may name (its images and sounds)",
    )
    avatars_dir: Path = option(Path("avatars"), "--avatars_dir", group=MODEL, type=Path, help="prepared avatars")
    models_dir: Path = option(Path("models"), "--models_dir", group=MODEL, type=Path, help="MuseTalk weights")
    records_dir: Path = option(
        Path("records"), "--records_dir", group=MODEL, type=Path, help="where /record writes mp4 files"
    )
    web_dir: Path = option(Path("web"), "--web_dir", group=MODEL, type=Path, help="static files served at /")
    tts: str = option(
        "piper",
        "--tts",
        group=VOICE,
        choices=TTS_CHOICES,
        help="piper: offline; edgetts; openai: OpenAI-compatible /audio/speech; gpt-sovits: api_v2 "
        "server; cosyvoice: CosyVoice FastAPI server (clones --REF_FILE); realtime: OpenAI "
        "Realtime API (speech to speech, replaces TTS and LLM)",
    )
    REF_FILE: str | None = option(
        None,
        "--REF_FILE",
        group=VOICE,
        help="voice: a piper .onnx voice file (its .onnx.json beside it), edge-tts voice name, OpenAI voice, "
        "realtime voice, GPT-SoVITS reference audio path (on that server), or CosyVoice reference recording (a "
        "WAV file here)",
    )
    REF_TEXT: str | None = option(
        None, "--REF_TEXT", group=VOICE, help="GPT-SoVITS, CosyVoice: transcript of the reference audio"
    )
    TTS_SERVER: str | None = option(
        None,
        "--TTS_SERVER",
        group=VOICE,
        help=f"TTS server URL: GPT-SoVITS (default {GPT_SOVITS_SERVER}), CosyVoice (default {COSYVOICE_SERVER}), "
        "OpenAI speech base URL with /v1 (default: --llm_base_url), or the realtime WebSocket URL ending in "
        "/realtime (default: OpenAI's, or OPENAI_BASE_URL's, or --llm_azure_endpoint's)",
    )
    llm_base_url: str | None = option(
        None,
        "--llm_base_url",
        group=VOICE,
        help="OpenAI-compatible chat endpoint incl. /v1; without it chat uses the offline SmolLM2",
    )
    llm_model: str = option(LLMOptions.model, "--llm_model", group=VOICE, help="chat model name at --llm_base_url")
    llm_api_key: str | None = option(
        None,
        "--llm_api_key",
        group=VOICE,
        help="API key (default: env OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --llm_azure_endpoint)",
    )
    llm_azure_endpoint: str | None = option(
        None,
        "--llm_azure_endpoint",
        group=VOICE,
        help="Azure OpenAI: https://NAME.openai.azure.com (model names are then deployment names); used for chat, "
        "openai TTS and realtime",
    )
    llm_api_version: str | None = option(
        None, "--llm_api_version", group=VOICE, help="Azure OpenAI api-version (default: env OPENAI_API_VERSION)"
    )
    system_prompt: str = option(
        DEFAULT_SYSTEM_PROMPT, "--system_prompt", group=VOICE, help="the chat model's instructions"
    )
    realtime_model: str = option(
        RealtimeOptions.model, "--realtime_model", group=VOICE, help="model for --tts realtime"
    )
    realtime_turn_detection: TurnDetection = option(
        RealtimeOptions.turn_detection,
        "--realtime_turn_detection",
        group=VOICE,
        choices=TURN_DETECTION,
        help="--tts realtime: how the service decides that the user finished speaking (microphone): server_vad "
        "(silence) or semantic_vad (what was said)",
    )
    asr: bool = option(
        True,
        "--no_asr",
        group=VOICE,
        action="store_false",
        help="ignore microphone audio sent by the page (default: transcribe it and chat)",
    )
    asr_model: str | None = option(
        None,
        "--asr_model",
        "--asr_model_dir",
        group=VOICE,
        help="speech recognition: a CTranslate2 whisper folder, or a faster-whisper model name (small, large-v3, "
        "...; downloaded once) (default: the bundled English tiny.en)",
    )
    asr_language: str | None = option(
        None,
        "--asr_language",
        group=VOICE,
        help="language code of the speech (en, zh, ...) for a multilingual model (default: detected)",
    )
    asr_device: ASRDevice = option(
        ASROptions.device, "--asr_device", group=VOICE, choices=ASR_DEVICES, help="where speech recognition runs"
    )
    max_upload_mb: float = option(
        20.0, "--max_upload_mb", group=LIMITS, type=_positive_float, help="largest /humanaudio upload"
    )
    max_audio_seconds: float = option(
        120.0, "--max_audio_seconds", group=LIMITS, type=_positive_float, help="longest /humanaudio audio"
    )
    max_text_chars: int = option(4000, "--max_text_chars", group=LIMITS, type=_positive_int, help="longest /human text")
    max_pending_requests: int = option(
        8,
        "--max_pending_requests",
        group=LIMITS,
        type=_positive_int,
        help="per session: /human and /humanaudio requests still waiting to be spoken (429 beyond)",
    )
    max_queued_seconds: float = option(
        180.0,
        "--max_queued_seconds",
        group=LIMITS,
        type=_positive_float,
        help="per session: seconds of speech accepted and not yet played (429 beyond)",
    )
    max_avatar_upload_mb: float = option(
        200.0,
        "--max_avatar_upload_mb",
        group=LIMITS,
        type=_positive_float,
        help="largest video or image uploaded to POST /api/avatars",
    )
    max_avatar_seconds: float = option(
        120.0,
        "--max_avatar_seconds",
        group=LIMITS,
        type=_positive_float,
        help="longest video uploaded to POST /api/avatars (also the most frames it is cut to)",
    )
    max_sse_per_session: int = option(
        8,
        "--max_sse_per_session",
        group=LIMITS,
        type=_positive_int,
        help="per session: concurrent /sse streams (429 beyond)",
    )
    log_level: str = option(
        "INFO", "--log_level", group=LOGS, type=str.upper, choices=LOG_LEVELS, help="least severe log shown"
    )
    log_json: bool = option(
        False,
        "--log_json",
        group=LOGS,
        action="store_true",
        help="write logs as JSON lines (time, level, logger, message, exception) for a log collector",
    )
    metrics_per_session: bool = option(
        False,
        "--metrics_per_session",
        group=LOGS,
        action="store_true",
        help="/metrics also has series labelled by session (one set per open session: a label value per session, "
        "so only for a few sessions)",
    )
    ignored_options: tuple[str, ...] = ()  # LiveTalking options given that mean nothing here: warned about

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_avatar_upload_bytes(self) -> int:
        return int(self.max_avatar_upload_mb * 1024 * 1024)

    # ------------------------------------------------- the voices' options, translated from LiveTalking's names

    def openai_endpoint(self, base_url: str | None = None) -> OpenAIEndpoint:
        """The OpenAI(-compatible) or Azure OpenAI service (base URL None: OPENAI_BASE_URL or OpenAI's)."""
        return OpenAIEndpoint(base_url, self.llm_api_key, self.llm_azure_endpoint, self.llm_api_version)

    def _livetalking_voice(self, backend: str) -> tuple[str | None, str, str | None]:
        """--REF_FILE, --REF_TEXT and --TTS_SERVER for `backend`: they describe the --tts backend only, another one
        starts from its defaults (an empty value, LiveTalking's default, is none)."""
        if backend != self.tts:
            return None, "", None
        return self.REF_FILE or None, self.REF_TEXT or "", self.TTS_SERVER or None

    def tts_options(self, backend: str | None = None) -> TTSOptions | None:
        """The options of a TTS backend named as --tts names it (default: --tts itself); None for realtime, which
        is no TTS. ConfigError naming the options at fault."""
        backend = backend or self.tts
        ref_file, ref_text, server = self._livetalking_voice(backend)
        with _named(f"--tts {backend}", _TTS_FLAGS):
            if backend == "piper":
                return PiperOptions(Path(ref_file) if ref_file else None)
            if backend == "edgetts":
                return EdgeTTSOptions(ref_file) if ref_file else EdgeTTSOptions()
            if backend == "openai":
                base_url = server or self.llm_base_url
                if not (base_url or self.llm_azure_endpoint):
                    raise ConfigError("--tts openai needs --TTS_SERVER (or --llm_base_url), the base URL incl. /v1")
                endpoint = self.openai_endpoint(base_url)
                return OpenAITTSOptions(endpoint, ref_file) if ref_file else OpenAITTSOptions(endpoint)
            if backend == "gpt-sovits":
                if not ref_file:
                    raise ConfigError(
                        "--tts gpt-sovits needs --REF_FILE (the reference audio path on the GPT-SoVITS server)"
                    )
                return GPTSoVITSOptions(ref_file, ref_text, server or GPT_SOVITS_SERVER)
            if backend == "cosyvoice":
                if not ref_file:
                    raise ConfigError("--tts cosyvoice needs --REF_FILE (a WAV recording of the voice to clone)")
                return CosyVoiceOptions(Path(ref_file), ref_text, server or COSYVOICE_SERVER)
            if backend == "realtime":
                return None
        raise ConfigError(f"unknown --tts {backend!r}: choose from {', '.join(TTS_CHOICES)}")

    def llm_options(self) -> LLMOptions:
        """Chat: --llm_base_url or Azure's endpoint, else the offline model."""
        endpoint = self.openai_endpoint(self.llm_base_url) if self.llm_base_url or self.llm_azure_endpoint else None
        with _named("chat", _LLM_FLAGS):
            return LLMOptions(endpoint, self.llm_model, self.system_prompt)

    def realtime_options(self) -> RealtimeOptions:
        """--tts realtime: --REF_FILE is the voice and --TTS_SERVER the WebSocket URL (of --tts realtime only)."""
        voice, _, url = self._livetalking_voice("realtime")
        with _named("--tts realtime", _REALTIME_FLAGS):
            return RealtimeOptions(
                self.openai_endpoint(),
                self.realtime_model,
                url,
                voice,
                self.realtime_turn_detection,
                self.system_prompt,
            )

    def asr_options(self) -> ASROptions:
        with _named("voice input", _ASR_FLAGS):
            return ASROptions(self.asr_model, self.asr_language, self.asr_device)

    def validate(self) -> None:
        """ConfigError naming the options at fault, for what no single option can check alone."""
        if self.turn and not (self.turn_user or self.turn_secret):
            raise ConfigError("--turn needs --turn_user and --turn_password, or --turn_secret (TURN REST credentials)")
        if self.turn_secret and not self.turn:
            raise ConfigError("--turn_secret needs --turn (the TURN server URL)")
        if self.render_pool is not None and self.engine == "lite":
            raise ConfigError("--render_pool runs the musetalk engine's models; it does not go with --engine lite")
        if "rtmp" in self.transports and not (self.push_url or "").startswith(("rtmp://", "rtmps://")):
            raise ConfigError("--transport rtmp needs --push_url rtmp://host/app/stream")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.push_session_id):
            raise ConfigError("--push_session_id must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
        if self.customvideo_config is not None:
            try:
                parse_custom_config(self.customvideo_config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"--customvideo_config {self.customvideo_config}: {e}") from e
        if self.max_queued_seconds < self.max_audio_seconds:
            raise ConfigError(
                f"--max_queued_seconds ({self.max_queued_seconds:g}) must be at least "
                f"--max_audio_seconds ({self.max_audio_seconds:g}), or the longest upload could "
                "never be accepted"
            )
        self.tts_options()
        self.llm_options()
        self.asr_options()
        if self.tts == "realtime":
            self.realtime_options()


# Which option a voice option's field comes from, to name it in a message.
_TTS_FLAGS = {
    "model_path": "--REF_FILE",
    "voice": "--REF_FILE",
    "ref_audio_path": "--REF_FILE",
    "recording": "--REF_FILE",
    "prompt_text": "--REF_TEXT",
    "transcript": "--REF_TEXT",
    "server": "--TTS_SERVER",
}
_LLM_FLAGS = {"model": "--llm_model", "system_prompt": "--system_prompt"}
_REALTIME_FLAGS = {
    "model": "--realtime_model",
    "url": "--TTS_SERVER",
    "voice": "--REF_FILE",
    "turn_detection": "--realtime_turn_detection",
    "instructions": "--system_prompt",
}
_ASR_FLAGS = {"model": "--asr_model", "language": "--asr_language", "device": "--asr_device"}


@contextmanager
def _named(what: str, flags: Mapping[str, str]) -> Iterator[None]:
    """An OptionError of a voice option, as a ConfigError naming the command-line option it came from."""
    try:
        yield
    except OptionError as e:
        raise ConfigError(f"{what}: {flags.get(e.field, e.field)} {e.why}") from e


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except a switch's (given or not, its help says what it does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python app.py",
        description="Real-time talking-avatar server: WebRTC sessions, the LiveTalking-compatible HTTP API and "
        "the demo page. With no options it runs on a CPU with the lite engine, the demo avatar, an "
        "offline voice (piper) and an offline chat model (SmolLM2).",
        formatter_class=_HelpFormatter,
    )
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        spec: _Option | None = f.metadata.get(_OPTION)
        if spec is None:
            continue
        settings = dict(spec.argparse)
        # argparse appends to a copy of the default, so a repeatable option's default must be a list
        default = getattr(defaults, f.name)
        settings.setdefault("default", list(default) if settings.get("action") == "append" else default)
        groups[spec.group].add_argument(*spec.flags, dest=f.name, **settings)
    groups[ACCESS].add_argument(
        "--auth_tokens_file",
        type=Path,
        default=None,
        help="a file with one accepted token per line (# comments and blank lines ignored)",
    )
    add_options(p)  # --config, LiveTalking's ignored options
    return p


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = build_parser()
    a = parser.parse_args(with_config_file(parser, argv))
    values = {f.name: getattr(a, f.name) for f in fields(ServerConfig) if _OPTION in f.metadata}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    try:
        tokens = auth_tokens(a.auth_tokens, a.auth_tokens_file, os.environ.get(AUTH_TOKEN_ENV))
    except (OSError, ConfigError) as e:
        parser.error(str(e))
    values.update(  # from the environment where the command line has none
        auth_tokens=tokens,
        llm_api_key=a.llm_api_key
        or (a.llm_azure_endpoint and os.environ.get("AZURE_OPENAI_API_KEY"))
        or os.environ.get("OPENAI_API_KEY")
        or None,
        turn_password=a.turn_password or os.environ.get("TURN_PASSWORD") or None,
        turn_secret=a.turn_secret or os.environ.get("TURN_SECRET") or None,
        ignored_options=ignored_notices(a),
    )
    config = ServerConfig(**values)
    try:
        config.validate()
    except ConfigError as e:
        parser.error(str(e))
    return config
