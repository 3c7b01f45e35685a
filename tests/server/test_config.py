"""Command-line options: LiveTalking's names, our additions, clear errors, and --help documenting each one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.config import ServerConfig, build_parser, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_run_offline_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("TURN_PASSWORD", raising=False)
    c = parse_args([])
    assert c == ServerConfig()  # the command line's defaults and the config's are the same
    assert (c.engine, c.tts, c.avatar_id, c.listenport, c.max_session) == ("auto", "piper", "demo", 8010, 5)
    assert c.llm_base_url is None and c.stun == () and c.turn == () and c.ice_host == ()


def test_livetalking_and_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    c = parse_args(
        [
            "--avatar_id",
            "alice",
            "--batch_size",
            "8",
            "--max_session",
            "2",
            "--listenport",
            "9000",
            "--tts",
            "gpt-sovits",
            "--REF_FILE",
            "ref.wav",
            "--REF_TEXT",
            "hello",
            "--TTS_SERVER",
            "http://127.0.0.1:9880",
            "--model",
            "musetalkV1",
            "--engine",
            "lite",
            "--stun",
            "stun:a:1",
            "--stun",
            "stun:b:2",
            "--turn",
            "turn:t:3",
            "--turn_user",
            "u",
            "--turn_password",
            "p",
            "--ice_host",
            "127.0.0.1",
            "--llm_base_url",
            "http://127.0.0.1:1/v1",
            "--idle_timeout",
            "5",
        ]
    )
    assert (c.avatar_id, c.batch_size, c.max_session, c.listenport) == ("alice", 8, 2, 9000)
    assert (c.tts, c.REF_FILE, c.REF_TEXT, c.version, c.engine) == ("gpt-sovits", "ref.wav", "hello", "v1", "lite")
    assert c.stun == ("stun:a:1", "stun:b:2") and c.turn == ("turn:t:3",) and c.ice_host == ("127.0.0.1",)
    assert c.llm_api_key == "sk-env" and c.idle_timeout == 5.0
    assert parse_args(["--llm_api_key", "sk-cli"]).llm_api_key == "sk-cli"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--model", "wav2lip"], "not supported"),
        (["--avatar_id", "../x"], "invalid avatar id"),
        (["--max_session", "0"], "at least 1"),
        (["--listenport", "70000"], "not a TCP port"),
        (["--ice_host", "localhost"], "does not appear to be an IPv4 or IPv6 address"),
        (["--stun", "stun.example.org"], "must start with stun:"),
        (["--turn", "turn:t:3"], "--turn_user"),
        (["--tts", "gpt-sovits"], "--REF_FILE"),
        (["--tts", "openai"], "--TTS_SERVER"),
        (["--tts", "nope"], "invalid choice"),
        (["--idle_timeout", "-1"], "greater than 0"),
    ],
)
def test_bad_options_exit_with_a_clear_message(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and words in capsys.readouterr().err


def test_help_documents_every_option() -> None:
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text
            assert action.help and " ".join(action.help.split()).split("(")[0][:30].strip() in text, action.dest


def test_app_starts_with_defaults_builds_the_demo_avatar_and_prints_the_url(tmp_path: Path) -> None:
    """`python app.py` on a fresh CPU machine (here: an empty avatars folder), then a clean stop."""
    from testing.fake_services import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "app.py",
            "--host",
            "127.0.0.1",
            "--listenport",
            str(port),
            "--avatars_dir",
            str(tmp_path / "avatars"),
            "--records_dir",
            str(tmp_path / "rec"),
            "--models_dir",
            str(tmp_path / "models"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "open http://127.0.0.1:" in line:
                break
        assert f"open http://127.0.0.1:{port}/ in a browser" in lines[-1]
        assert any("using lite" in line for line in lines)  # one line says why the engine is lite
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert json.loads(resp.read()) == {
                "ok": True,
                "sessions": 0,
                "max_session": 5,
                "engine": "lite",
                "voices": ["piper", "edgetts"],
            }
        assert (tmp_path / "avatars" / "demo" / "manifest.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0  # SIGTERM: a graceful shutdown


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_config_file_holds_options_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    file = write_yaml(
        tmp_path / "server.yaml",
        """
listenport: 9001
max_session: 2
avatar_id: alice
stun: [stun:a:1, stun:b:2]
ice_host: [127.0.0.1]
no_asr: true
log_json: false
models-dir: /srv/models   # the hyphen spelling of a name works too
REF_FILE: voice.onnx
""",
    )
    c = parse_args(["--config", str(file), "--max_session", "4", "--stun", "stun:c:3"])
    assert (c.listenport, c.max_session, c.avatar_id, c.asr, c.log_json) == (9001, 4, "alice", False, False)
    assert c.stun == ("stun:c:3",)  # a repeatable option given on the command line replaces the file's list
    assert c.ice_host == ("127.0.0.1",) and c.models_dir == Path("/srv/models") and c.REF_FILE == "voice.onnx"
    assert parse_args(["-c", str(file)]).max_session == 2  # LiveTalking's short form


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("listen_port: 1", "unknown option 'listen_port'"),
        ("max_session: 0", "at least 1"),  # the file's values are checked as the command line's are
        ("listenport: [1, 2]", "listenport takes one value, not a list"),
        ("no_asr: maybe", "no_asr is a switch: true or false"),
        ("- listenport", "a YAML mapping"),
        ("listenport: [1", "--config"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(
    tmp_path: Path, text: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config", str(file)])
    assert exc.value.code == 2 and words in capsys.readouterr().err


def test_livetalking_only_options_are_accepted_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    c = parse_args(
        [
            "--transport",
            "webrtc",
            "--model",
            "musetalk",
            "-l",
            "10",
            "-m",
            "8",
            "-r",
            "10",
            "--fps",
            "25",
            "--modelres",
            "256",
            "--W",
            "450",
            "--H",
            "450",
        ]
    )
    assert len(c.ignored_options) == 7
    assert c.ignored_options[0].startswith("-l 10: a LiveTalking option this server ignores (")
    assert parse_args([]).ignored_options == ()


def test_options_with_hyphens_are_read_as_underscores() -> None:
    c = parse_args(["--models-dir", "/m", "--max-session", "3", "--log-level", "debug", "--avatar-id=bob"])
    assert (c.models_dir, c.max_session, c.log_level, c.avatar_id) == (Path("/m"), 3, "DEBUG", "bob")


def test_json_logs_are_one_object_per_line() -> None:
    """The formatter --log_json installs (the whole set-up runs in the app start test below: a process of its own,
    so the test run's logging is left alone)."""
    import logging
    import sys

    from server.logs import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("probe", logging.ERROR, __file__, 1, "it failed: %s", ("why",), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "probe", "it failed: why")
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("+00:00")


def test_app_starts_from_a_config_file_with_livetalking_options_and_json_logs(
    tmp_path: Path, avatars_dir: Path
) -> None:
    from testing.fake_services import free_port

    port = free_port()
    file = write_yaml(
        tmp_path / "server.yaml",
        f"host: 127.0.0.1\nlistenport: {port}\navatars_dir: {avatars_dir}\n"
        f"records_dir: {tmp_path / 'rec'}\nmodels_dir: {tmp_path}\n"
        "log_json: true\nlog_level: info\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--config", str(file), "-l", "10", "--fps", "25"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(f"open http://127.0.0.1:{port}/" in s for s in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        logs = [json.loads(s) for s in lines if s.startswith("{")]
        warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
        assert any(w.startswith("-l 10: a LiveTalking option this server ignores") for w in warnings), lines
        assert any(w.startswith("--fps 25: a LiveTalking option") for w in warnings)
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert json.loads(resp.read())["ok"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_a_missing_extra_is_named_with_how_to_install_it() -> None:
    from core.extras import MissingExtraError, available, require

    with pytest.raises(MissingExtraError) as e:
        require("no_such_module_here.sub", "asr", "voice input")
    assert str(e.value) == (
        "voice input needs the 'asr' extra (no_such_module_here is not installed): "
        "scripts/install.sh --extras asr, or pip install -e '.[asr]'"
    )
    assert isinstance(e.value, ImportError) and e.value.extra == "asr"
    assert require("json", "asr", "x").dumps([]) == "[]"
    assert not available("no_such_module_here.sub") and available("json")


def test_a_server_only_install_says_at_start_what_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.app

    monkeypatch.setattr(server.app, "available", lambda module: False)  # no extra installed
    lines = server.app.lacking_features(parse_args(["--tts", "edgetts"]))
    assert [line.split(":")[0] for line in lines] == [
        "voice input (the microphone) will fail",
        "chat will fail",
        "the piper voice, offered to pages, will fail",
    ]
    assert "'asr' extra" in lines[0] and "'offline' extra" in lines[1] and "'offline' extra" in lines[2]
    assert server.app.lacking_features(
        parse_args(["--tts", "edgetts", "--no_asr", "--llm_base_url", "http://127.0.0.1:1/v1"])
    )[0].startswith("the piper voice")
    monkeypatch.setattr(server.app, "available", lambda module: True)
    assert server.app.lacking_features(parse_args([])) == []
