"""Command-line options: LiveTalking's names where they exist, ours beside them; parsed into one frozen config."""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.base import DEFAULT_RIGHT_CONTEXT_S
from musetalk.avatar import validate_avatar_id
from musetalk.cli import ArgumentParser
from pipeline.actions import parse_custom_config
from server.options import add_options, ignored_notices, with_config_file

TTS_CHOICES = ("piper", "edgetts", "openai", "gpt-sovits", "cosyvoice", "realtime")
ENGINE_CHOICES = ("auto", "musetalk", "lite")
TRANSPORTS = ("webrtc", "rtmp")
# LiveTalking's --model names the lip-sync model; this server runs MuseTalk, so it picks the weights version.
MODEL_VERSIONS = {"musetalk": "v15", "musetalkV15": "v15", "v15": "v15", "musetalkV1": "v1", "v1": "v1"}
AUTH_TOKEN_ENV = "AVATAR_AUTH_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly, in a spoken, conversational style."


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    listenport: int = 8010
    engine: str = "auto"
    version: str = "v15"
    batch_size: int | None = None
    device: str | None = None
    right_context: float = DEFAULT_RIGHT_CONTEXT_S
    render_pool: str | None = None  # ray[://HOST:PORT]: musetalk's models run in the Ray Serve render pool
    avatar_id: str = "demo"
    avatars_dir: Path = Path("avatars")
    models_dir: Path = Path("models")
    records_dir: Path = Path("records")
    web_dir: Path = Path("web")
    max_session: int = 5
    idle_timeout: float = 10.0
    connect_timeout: float = 15.0
    request_timeout: float = 15.0
    auth_tokens: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    tts: str = "piper"
    REF_FILE: str | None = None
    REF_TEXT: str | None = None
    TTS_SERVER: str | None = None
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: str | None = None
    llm_azure_endpoint: str | None = None
    llm_api_version: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    realtime_model: str = "gpt-realtime"
    realtime_turn_detection: str = "server_vad"
    asr: bool = True
    asr_model: str | None = None
    asr_language: str | None = None
    asr_device: str = "cpu"
    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = None
    turn_secret: str | None = None
    turn_ttl: float = 86400.0
    ice_host: tuple[str, ...] = ()
    max_upload_mb: float = 20.0
    max_audio_seconds: float = 120.0
    max_text_chars: int = 4000
    max_pending_requests: int = 8
    max_queued_seconds: float = 180.0
    max_sse_per_session: int = 8
    max_avatar_upload_mb: float = 200.0
    max_avatar_seconds: float = 120.0
    transports: tuple[str, ...] = ("webrtc",)
    push_url: str | None = None
    push_session_id: str = "0"
    customvideo_config: Path | None = None
    custom_dir: Path = Path("data")

    log_level: str = "INFO"
    log_json: bool = False
    metrics_per_session: bool = False
    ignored_options: tuple[str, ...] = ()  # LiveTalking options given that mean nothing here: warned about

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_avatar_upload_bytes(self) -> int:
        return int(self.max_avatar_upload_mb * 1024 * 1024)


_D = ServerConfig()  # the parser's defaults are the config's: one place to change them


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


def _ice_url(scheme: tuple[str, ...]):  # noqa: ANN202
    def check(text: str) -> str:
        if not text.startswith(scheme):
            raise argparse.ArgumentTypeError(f"{text!r} must start with {' or '.join(scheme)}")
        return text
    return check


def auth_tokens(given: Sequence[str], file: Path | None, env: str | None) -> tuple[str, ...]:
    """The accepted tokens from the command line, a tokens file and the environment (ValueError: a bad one)."""
    tokens = [*given, *([env] if env else [])]
    if file is not None:
        lines = file.read_text(encoding="utf-8").splitlines()
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for token in tokens:
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise ValueError(f"an auth token must be at least {MIN_TOKEN_CHARS} printable characters without "
                             f"spaces (got one of {len(token)})")
    return tuple(dict.fromkeys(tokens))


def _transports(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in names if t not in TRANSPORTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown transport {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(TRANSPORTS)}")
    return tuple(dict.fromkeys(("webrtc", *names)))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python app.py",
        description="Real-time talking-avatar server: WebRTC sessions, the LiveTalking-compatible HTTP API and "
                    "the demo page. With no options it runs on a CPU with the lite engine, the demo avatar, an "
                    "offline voice (piper) and an offline chat model (SmolLM2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    net = p.add_argument_group("network")
    net.add_argument("--host", default=_D.host, help="address to listen on")
    net.add_argument("--listenport", type=_port, default=_D.listenport, help="HTTP port (LiveTalking name)")
    net.add_argument("--max_session", type=_positive_int, default=_D.max_session, help="most concurrent sessions")
    net.add_argument("--idle_timeout", type=_positive_float, default=_D.idle_timeout,
                     help="end a session whose client has stopped taking media (no RTCP receiver report, or no "
                          "frame taken) for this many seconds")
    net.add_argument("--connect_timeout", type=_positive_float, default=_D.connect_timeout,
                     help="end a session whose client has not connected (ICE + DTLS) this many seconds after its "
                          "offer was answered")
    net.add_argument("--request_timeout", type=_positive_float, default=_D.request_timeout,
                     help="close an HTTP connection that sends no complete request headers for this many seconds "
                          "(also the idle keep-alive time)")
    net.add_argument("--cors_origins", action="append", default=[], metavar="ORIGIN",
                     help="allow cross-origin API calls from this origin, e.g. https://app.example.org, or * for "
                          "any (repeatable; default: same origin only)")
    auth = p.add_argument_group("access (every API route, /sse and /metrics; /healthz and the page stay open)")
    auth.add_argument("--auth_token", action="append", default=[], metavar="TOKEN",
                      help=f"accept this token as 'Authorization: Bearer TOKEN' or ?token=TOKEN (repeatable; "
                           f"env {AUTH_TOKEN_ENV})")
    auth.add_argument("--auth_tokens_file", type=Path, default=None,
                      help="a file with one accepted token per line (# comments and blank lines ignored)")
    net.add_argument("--transport", type=_transports, default=",".join(_D.transports),
                     help="outputs, comma-separated: webrtc (a session per browser, always served) and rtmp (one "
                          "more session, started with the server, pushed to --push_url as H.264 + AAC in FLV)")
    net.add_argument("--push_url", default=None, help="--transport rtmp: where to push, rtmp://host/app/stream")
    net.add_argument("--push_session_id", default=_D.push_session_id,
                     help="--transport rtmp: the session id that drives the pushed stream (/human, /set_avatar...; "
                          "LiveTalking's pages use 0)")
    ice = p.add_argument_group("ICE (no STUN or TURN server is used unless given)")
    ice.add_argument("--stun", action="append", type=_ice_url(("stun:", "stuns:")), default=[],
                     help="STUN server URL, e.g. stun:stun.example.org:3478 (repeatable)")
    ice.add_argument("--turn", action="append", type=_ice_url(("turn:", "turns:")), default=[],
                     help="TURN server URL, e.g. turn:turn.example.org:3478 (repeatable)")
    ice.add_argument("--turn_user", help="TURN user name")
    ice.add_argument("--turn_password", help="TURN password (or env TURN_PASSWORD)")
    ice.add_argument("--turn_secret", default=None,
                     help="TURN REST API secret shared with the TURN server (coturn: use-auth-secret, "
                          "static-auth-secret); clients and sessions then get time-limited credentials "
                          "\"<expiry>:<--turn_user or avatar>\" instead of a fixed password (or env TURN_SECRET)")
    ice.add_argument("--turn_ttl", type=_positive_float, default=_D.turn_ttl,
                     help="seconds that TURN REST credentials stay valid")
    ice.add_argument("--ice_host", action="append", type=_ip, default=[],
                     help="offer ICE host candidates only on this address, e.g. 127.0.0.1 (repeatable)")
    model = p.add_argument_group("lip-sync engine and avatar")
    model.add_argument("--engine", choices=ENGINE_CHOICES, default=_D.engine,
                       help="auto: musetalk with CUDA and weights present, else lite (CPU, no weights)")
    model.add_argument("--model", default="musetalk", metavar="{" + ",".join(MODEL_VERSIONS) + "}",
                       help="LiveTalking name of the model; here it picks the MuseTalk weights version "
                            "(musetalk = v15)")
    model.add_argument("--batch_size", type=_positive_int, default=None,
                       help="video frames per inference batch (default: the engine's own)")
    model.add_argument("--device", default=None, help="torch device for musetalk, e.g. cuda:0")
    model.add_argument("--right_context", type=_non_negative_float, default=_D.right_context, metavar="SECONDS",
                       help="musetalk: audio after a batch waited for before it is rendered (beyond whisper's own "
                            "80 ms): latency vs quality, the pipeline latency grows by this much and the lip "
                            "features of streamed speech get closer to those of the whole sentence (BENCHMARKS.md "
                            "section 9)")
    model.add_argument("--render_pool", type=_render_pool, default=None, metavar="ray[://HOST:PORT]",
                       help="run musetalk's models in the GPU render pool on Ray Serve, shared by several front "
                            "ends: 'ray' joins this machine's Ray cluster (or RAY_ADDRESS), ray://HOST:PORT one "
                            "through Ray Client (docs/render_pool.md; needs the 'ray' extra); default: in this "
                            "process")
    model.add_argument("--avatar_id", type=_avatar_id, default=_D.avatar_id,
                       help="default avatar (the demo avatar is built on first start if missing)")
    model.add_argument("--customvideo_config", type=Path, default=None,
                       help="LiveTalking's custom-video JSON: a list of {audiotype, imgpath, audiopath?} clips for "
                            "every session (audiotype 1 loops as the idle video); /offer custom_config overrides it")
    model.add_argument("--custom_dir", type=Path, default=_D.custom_dir,
                       help="the folder whose files an /offer custom_config may name (its images and sounds)")
    model.add_argument("--avatars_dir", type=Path, default=_D.avatars_dir, help="prepared avatars")
    model.add_argument("--models_dir", type=Path, default=_D.models_dir, help="MuseTalk weights")
    model.add_argument("--records_dir", type=Path, default=_D.records_dir, help="where /record writes mp4 files")
    model.add_argument("--web_dir", type=Path, default=_D.web_dir, help="static files served at /")
    voice = p.add_argument_group("voice and chat")
    voice.add_argument("--tts", choices=TTS_CHOICES, default=_D.tts,
                       help="piper: offline; edgetts; openai: OpenAI-compatible /audio/speech; gpt-sovits: "
                            "api_v2 server; cosyvoice: CosyVoice FastAPI server (clones --REF_FILE); realtime: "
                            "OpenAI Realtime API (speech to speech, replaces TTS and LLM)")
    voice.add_argument("--REF_FILE", default=None,
                       help="voice: a piper .onnx voice file (its .onnx.json beside it), edge-tts voice name, "
                            "OpenAI voice, realtime voice, GPT-SoVITS reference audio path (on that server), or "
                            "CosyVoice reference recording (a WAV file here)")
    voice.add_argument("--REF_TEXT", default=None, help="GPT-SoVITS, CosyVoice: transcript of the reference audio")
    voice.add_argument("--TTS_SERVER", default=None,
                       help="TTS server URL: GPT-SoVITS (default http://127.0.0.1:9880), CosyVoice (default "
                            "http://127.0.0.1:50000), OpenAI speech base URL "
                            "with /v1 (default: --llm_base_url), or the realtime WebSocket URL ending in /realtime "
                            "(default: OpenAI's, or OPENAI_BASE_URL's, or --llm_azure_endpoint's)")
    voice.add_argument("--llm_base_url", default=None,
                       help="OpenAI-compatible chat endpoint incl. /v1; without it chat uses the offline SmolLM2")
    voice.add_argument("--llm_model", default=_D.llm_model, help="chat model name at --llm_base_url")
    voice.add_argument("--llm_api_key", default=None,
                       help="API key (default: env OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --llm_azure_endpoint)")
    voice.add_argument("--llm_azure_endpoint", default=None,
                       help="Azure OpenAI: https://NAME.openai.azure.com (model names are then deployment names); "
                            "used for chat, openai TTS and realtime")
    voice.add_argument("--llm_api_version", default=None,
                       help="Azure OpenAI api-version (default: env OPENAI_API_VERSION)")
    voice.add_argument("--system_prompt", default=_D.system_prompt, help="the chat model's instructions")
    voice.add_argument("--realtime_model", default=_D.realtime_model, help="model for --tts realtime")
    voice.add_argument("--realtime_turn_detection", choices=("server_vad", "semantic_vad"),
                       default=_D.realtime_turn_detection,
                       help="--tts realtime: how the service decides that the user finished speaking (microphone): "
                            "server_vad (silence) or semantic_vad (what was said)")
    voice.add_argument("--no_asr", action="store_true",
                       help="ignore microphone audio sent by the page (default: transcribe it and chat)")
    voice.add_argument("--asr_model", "--asr_model_dir", default=None,
                       help="speech recognition: a CTranslate2 whisper folder, or a faster-whisper model name "
                            "(small, large-v3, ...; downloaded once) (default: the bundled English tiny.en)")
    voice.add_argument("--asr_language", default=None,
                       help="language code of the speech (en, zh, ...) for a multilingual model (default: detected)")
    voice.add_argument("--asr_device", choices=("cpu", "cuda"), default=_D.asr_device,
                       help="where speech recognition runs")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max_upload_mb", type=_positive_float, default=_D.max_upload_mb,
                        help="largest /humanaudio upload")
    limits.add_argument("--max_audio_seconds", type=_positive_float, default=_D.max_audio_seconds,
                        help="longest /humanaudio audio")
    limits.add_argument("--max_text_chars", type=_positive_int, default=_D.max_text_chars, help="longest /human text")
    limits.add_argument("--max_pending_requests", type=_positive_int, default=_D.max_pending_requests,
                        help="per session: /human and /humanaudio requests still waiting to be spoken (429 beyond)")
    limits.add_argument("--max_queued_seconds", type=_positive_float, default=_D.max_queued_seconds,
                        help="per session: seconds of speech accepted and not yet played (429 beyond)")
    limits.add_argument("--max_avatar_upload_mb", type=_positive_float, default=_D.max_avatar_upload_mb,
                        help="largest video or image uploaded to POST /api/avatars")
    limits.add_argument("--max_avatar_seconds", type=_positive_float, default=_D.max_avatar_seconds,
                        help="longest video uploaded to POST /api/avatars (also the most frames it is cut to)")
    limits.add_argument("--max_sse_per_session", type=_positive_int, default=_D.max_sse_per_session,
                        help="per session: concurrent /sse streams (429 beyond)")
    add_options(p)  # --config, logs and metrics, LiveTalking's ignored options
    return p


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = build_parser()
    a = parser.parse_args(with_config_file(parser, argv))
    if a.model not in MODEL_VERSIONS:
        parser.error(f"--model {a.model!r} is not supported: this server runs MuseTalk; "
                     f"choose one of {', '.join(MODEL_VERSIONS)}")
    if a.tts == "gpt-sovits" and not a.REF_FILE:
        parser.error("--tts gpt-sovits needs --REF_FILE (the reference audio path on the GPT-SoVITS server)")
    if a.tts == "cosyvoice" and not a.REF_FILE:
        parser.error("--tts cosyvoice needs --REF_FILE (a WAV recording of the voice to clone)")
    if a.tts == "openai" and not (a.TTS_SERVER or a.llm_base_url or a.llm_azure_endpoint):
        parser.error("--tts openai needs --TTS_SERVER (or --llm_base_url), the base URL incl. /v1")
    turn_secret = a.turn_secret or os.environ.get("TURN_SECRET") or None
    if a.turn and not (a.turn_user or turn_secret):
        parser.error("--turn needs --turn_user and --turn_password, or --turn_secret (TURN REST credentials)")
    if turn_secret and not a.turn:
        parser.error("--turn_secret needs --turn (the TURN server URL)")
    if a.render_pool is not None and a.engine == "lite":
        parser.error("--render_pool runs the musetalk engine's models; it does not go with --engine lite")
    if "rtmp" in a.transport and not (a.push_url or "").startswith(("rtmp://", "rtmps://")):
        parser.error("--transport rtmp needs --push_url rtmp://host/app/stream")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", a.push_session_id):
        parser.error("--push_session_id must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    if a.customvideo_config is not None:
        try:
            parse_custom_config(a.customvideo_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            parser.error(f"--customvideo_config {a.customvideo_config}: {e}")
    if a.max_queued_seconds < a.max_audio_seconds:
        parser.error(f"--max_queued_seconds ({a.max_queued_seconds:g}) must be at least --max_audio_seconds "
                     f"({a.max_audio_seconds:g}), or the longest upload could never be accepted")
    try:
        tokens = auth_tokens(a.auth_token, a.auth_tokens_file, os.environ.get(AUTH_TOKEN_ENV))
    except (OSError, ValueError) as e:
        parser.error(str(e))
    return ServerConfig(
        host=a.host, listenport=a.listenport, engine=a.engine, version=MODEL_VERSIONS[a.model],
        batch_size=a.batch_size, device=a.device, right_context=a.right_context, render_pool=a.render_pool,
        avatar_id=a.avatar_id, avatars_dir=a.avatars_dir,
        models_dir=a.models_dir, records_dir=a.records_dir, web_dir=a.web_dir, max_session=a.max_session,
        idle_timeout=a.idle_timeout, tts=a.tts, REF_FILE=a.REF_FILE, REF_TEXT=a.REF_TEXT, TTS_SERVER=a.TTS_SERVER,
        llm_base_url=a.llm_base_url, llm_model=a.llm_model,
        llm_api_key=a.llm_api_key or (a.llm_azure_endpoint and os.environ.get("AZURE_OPENAI_API_KEY"))
        or os.environ.get("OPENAI_API_KEY") or None,
        llm_azure_endpoint=a.llm_azure_endpoint, llm_api_version=a.llm_api_version,
        system_prompt=a.system_prompt, realtime_model=a.realtime_model,
        realtime_turn_detection=a.realtime_turn_detection, asr=not a.no_asr, asr_model=a.asr_model,
        asr_language=a.asr_language, asr_device=a.asr_device, stun=tuple(a.stun), turn=tuple(a.turn), turn_user=a.turn_user,
        turn_password=a.turn_password or os.environ.get("TURN_PASSWORD") or None,
        turn_secret=turn_secret, turn_ttl=a.turn_ttl, ice_host=tuple(a.ice_host),
        max_upload_mb=a.max_upload_mb, max_audio_seconds=a.max_audio_seconds, max_text_chars=a.max_text_chars,
        connect_timeout=a.connect_timeout, request_timeout=a.request_timeout, auth_tokens=tokens,
        cors_origins=tuple(a.cors_origins), max_pending_requests=a.max_pending_requests,
        max_queued_seconds=a.max_queued_seconds, max_sse_per_session=a.max_sse_per_session,
        max_avatar_upload_mb=a.max_avatar_upload_mb, max_avatar_seconds=a.max_avatar_seconds,
        transports=a.transport, push_url=a.push_url, push_session_id=a.push_session_id,
        customvideo_config=a.customvideo_config, custom_dir=a.custom_dir,
        log_level=a.log_level, log_json=a.log_json, metrics_per_session=a.metrics_per_session,
        ignored_options=ignored_notices(a))
