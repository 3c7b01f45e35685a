"""/offer refaudio/reftext and /human tts are never silently ignored: a per-session reference voice for
GPT-SoVITS and CosyVoice (checked at local servers speaking their APIs), a 400 naming the field for voices that
cannot take one."""

from __future__ import annotations

import pytest

from testing.fake_cosyvoice import SENTENCE_SECONDS, cosyvoice_service
from testing.fake_services import free_port, sovits_service
from testing.server_client import Client, until
from voices.tts import TTSError
from voices.tts_cosyvoice import CosyVoiceTTS

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_voices_without_cloning_refuse_the_fields_by_name(serve, config) -> None:
    async with serve(config) as server:
        for extra, words in (
            ({"refaudio": "me.wav"}, "'refaudio'"),
            ({"reftext": "hello"}, "'reftext'"),
            ({"refaudio": "me.wav", "voice": "edgetts"}, "voice 'edgetts'"),
            ({"refaudio": 5}, "'refaudio' must be a string"),
        ):
            client = Client(server)
            status, body = await client.offer(**extra)
            assert status == 400 and words in body["msg"], (extra, body)
            if "must be" not in words:
                assert "gpt-sovits" in body["msg"]
            await client.close()
        assert await server.sessions() == 0  # nothing was started for them
        client = Client(server)
        sid = await client.connect(refaudio="", reftext="")  # empty inputs are absent (LiveTalking's page)
        for tts in ({"ref_file": "me.wav", "ref_text": "hi"}, "me.wav"):
            status, body = await server.post("/human", {"sessionid": sid, "text": "Hi.", "type": "echo", "tts": tts})
            assert status == 400 and "'tts'" in body["msg"] and "refaudio" in body["msg"], body
        for tts in (None, {}):
            status, _ = await server.post("/human", {"sessionid": sid, "text": "Hi.", "type": "echo", "tts": tts})
            assert status == 200
        await client.close()


async def test_gpt_sovits_sessions_speak_with_their_own_reference(serve, config) -> None:
    async with sovits_service() as (url, rec):
        async with serve(
            config, tts="gpt-sovits", REF_FILE="configured.wav", REF_TEXT="configured text", TTS_SERVER=url
        ) as server:
            cases = {
                "own": {"refaudio": "alice.wav", "reftext": "I am Alice."},
                "text only": {"reftext": "Another transcript."},
                "audio only": {"refaudio": "bob.wav"},
                "none": {},
            }
            expected = {
                "own": ("alice.wav", "I am Alice."),
                "text only": ("configured.wav", "Another transcript."),
                "audio only": ("bob.wav", ""),
                "none": ("configured.wav", "configured text"),
            }
            for name, extra in cases.items():
                client = Client(server)
                sid = await client.connect(**extra)
                live = server.state.registry.get(sid)
                status, _ = await server.post("/human", {"sessionid": sid, "text": f"Case {name}.", "type": "echo"})
                assert status == 200
                assert await until(lambda name=name: any(r["text"] == f"Case {name}." for r in rec.requests), 10)
                sent = next(r for r in rec.requests if r["text"] == f"Case {name}.")
                assert (sent["ref_audio_path"], sent["prompt_text"]) == expected[name], (name, sent)
                tts, shared = live.voice.tts, server.state.services._tts["gpt-sovits"]
                assert (tts is not shared) == bool(extra)
                await server.state.registry.end(sid, "test")
                # a backend of its own is closed with the session; the shared one (used here) is not
                assert (tts._session is None) == bool(extra)
                await client.close()


def write_wav(path, seconds: float = 0.3, freq: float = 200.0) -> bytes:
    import numpy as np
    import soundfile as sf

    sf.write(path, 0.2 * np.sin(2 * np.pi * freq * np.arange(int(seconds * 16000)) / 16000), 16000)
    return path.read_bytes()


async def test_cosyvoice_streams_sentences_and_clones_the_sessions_reference(serve, config, tmp_path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    default, alice = write_wav(refs / "default.wav"), write_wav(refs / "alice.wav", freq=300.0)
    (tmp_path / "secret.wav").write_bytes(default)
    async with cosyvoice_service() as (url, received):
        # the backend alone: one piece per sentence, as the server streams them; failures are TTSErrors
        tts = CosyVoiceTTS.from_file(url, refs / "default.wav", "default transcript")
        pieces = [chunk async for chunk in tts.synthesize("One. Two!")]
        assert sum(len(p) for p in pieces) == pytest.approx(2 * SENTENCE_SECONDS * 16000, abs=200)
        assert len(pieces) >= 2 and received[-1].mode == "zero_shot"
        assert received[-1].fields == {"tts_text": "One. Two!", "prompt_text": "default transcript"}
        assert received[-1].prompt_wav == default
        await tts.aclose()
        with pytest.raises(TTSError, match="cannot connect"):
            async with CosyVoiceTTS(f"http://127.0.0.1:{free_port()}", prompt_wav=default) as down:
                [chunk async for chunk in down.synthesize("Hello.")]
        with pytest.raises(TTSError, match="WAV"):
            CosyVoiceTTS(url, prompt_wav=b"not a recording")

        async with serve(
            config, tts="cosyvoice", REF_FILE=str(refs / "default.wav"), REF_TEXT="default transcript", TTS_SERVER=url
        ) as server:
            for bad in ("../secret.wav", "nobody.wav", "/etc/passwd"):
                client = Client(server)
                status, body = await client.offer(refaudio=bad)
                assert status == 400 and "'refaudio'" in body["msg"], (bad, body)
                await client.close()
            cases = [
                ({}, ("zero_shot", default, "default transcript")),
                ({"refaudio": "alice.wav", "reftext": "I am Alice."}, ("zero_shot", alice, "I am Alice.")),
                ({"refaudio": "alice.wav"}, ("cross_lingual", alice, None)),
            ]
            for extra, (mode, wav, text) in cases:
                client = Client(server)
                sid = await client.connect(**extra)
                said = f"Case {len(received)}."
                status, _ = await server.post("/human", {"sessionid": sid, "text": said, "type": "echo"})
                assert status == 200
                assert await until(lambda said=said: any(r.fields["tts_text"] == said for r in received), 10)
                got = next(r for r in received if r.fields["tts_text"] == said)
                assert (got.mode, got.prompt_wav, got.fields.get("prompt_text")) == (mode, wav, text), extra
                assert await until(lambda sid=sid: server.state.registry.get(sid).session.speaking, 5)  # it is heard
                await client.close()
