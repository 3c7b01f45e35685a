"""/offer refaudio/reftext and /human tts are never silently ignored: a per-session reference voice for
GPT-SoVITS (checked at a local GPT-SoVITS api_v2), a 400 naming the field for voices that cannot take one."""
from __future__ import annotations

import pytest

from testing.fake_services import sovits_service
from testing.server_client import Client, until

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_voices_without_cloning_refuse_the_fields_by_name(serve, config) -> None:
    async with serve(config) as server:
        for extra, words in (({"refaudio": "me.wav"}, "'refaudio'"), ({"reftext": "hello"}, "'reftext'"),
                             ({"refaudio": "me.wav", "voice": "edgetts"}, "voice 'edgetts'"),
                             ({"refaudio": 5}, "'refaudio' must be a string")):
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
        async with serve(config, tts="gpt-sovits", REF_FILE="configured.wav", REF_TEXT="configured text",
                         TTS_SERVER=url) as server:
            cases = {"own": {"refaudio": "alice.wav", "reftext": "I am Alice."},
                     "text only": {"reftext": "Another transcript."},
                     "audio only": {"refaudio": "bob.wav"},
                     "none": {}}
            expected = {"own": ("alice.wav", "I am Alice."), "text only": ("configured.wav", "Another transcript."),
                        "audio only": ("bob.wav", ""), "none": ("configured.wav", "configured text")}
            for name, extra in cases.items():
                client = Client(server)
                sid = await client.connect(**extra)
                live = server.state.registry.get(sid)
                status, _ = await server.post("/human", {"sessionid": sid, "text": f"Case {name}.", "type": "echo"})
                assert status == 200
                assert await until(lambda: any(r["text"] == f"Case {name}." for r in rec.requests), 10)
                sent = next(r for r in rec.requests if r["text"] == f"Case {name}.")
                assert (sent["ref_audio_path"], sent["prompt_text"]) == expected[name], (name, sent)
                if extra:  # a backend of its own, closed with the session
                    tts = live.voice.tts
                    assert tts is not server.state.services._tts.get("gpt-sovits")
                    await server.state.registry.end(sid, "test")
                    assert tts._session is None
                await client.close()
            assert await server.wait_sessions(0)
