"""/metrics after a scripted session, read with prometheus_client's parser: process-wide counters move,
histograms fill, no series names a session unless --metrics_per_session, and each app has its own registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from server.metrics import Metrics
from testing.fake_services import free_port
from testing.metrics import parse_metrics
from testing.server_client import (
    Client,
    connect_with_events,
    is_speaking,
    until,
    upload,
)

pytestmark = pytest.mark.usefixtures("loopback_only")


async def scrape(server) -> tuple[dict[str, str], dict, str]:
    status, body = await server.get("/metrics")
    assert status == 200
    text = body.decode()
    return (*parse_metrics(text), text)


def histogram_count(samples: dict, name: str) -> float:
    return samples[(f"{name}_count", ())]


async def test_a_scripted_session_moves_the_counters_and_fills_the_histograms(serve, config) -> None:
    refused = f"http://127.0.0.1:{free_port()}/v1"  # chat fails: an llm_error
    async with serve(config, llm_base_url=refused) as server:
        types, before, _ = await scrape(server)
        assert types["avatar_session_latency_seconds"] == "histogram"
        assert types["avatar_frames"] == "counter" and types["avatar_sessions_opened"] == "counter"
        assert before[("avatar_errors_total", (("kind", "llm"),))] == 0  # present before the first error
        client, events, _ = await connect_with_events(server)
        sid = client.sessionid
        status, _ = await server.post("/human", {"sessionid": sid, "text": "Hello there.", "type": "echo"})
        assert status == 200
        assert await until(lambda: is_speaking(server, sid), 10)
        assert await until(lambda: any(e.get("status") == "end" for e in events), 20)
        status, _ = await server.post("/human", {"sessionid": sid, "text": "Hi?", "type": "chat"})
        assert status == 200
        assert await until(lambda: any(e.get("event") == "llm_error" for e in events), 30), events
        status, _ = await upload(server, sid, b"not audio at all")
        assert status == 400
        _, during, _ = await scrape(server)
        await client.close()
        assert await server.wait_sessions(0, 10)
        types, after, text = await scrape(server)

    assert after[("avatar_sessions_opened_total", ())] == before[("avatar_sessions_opened_total", ())] + 1
    assert after[("avatar_sessions_closed_total", ())] == before[("avatar_sessions_closed_total", ())] + 1
    assert after[("avatar_sessions", ())] == 0
    for source in ("speech", "idle"):
        assert after[("avatar_frames_total", (("source", source),))] > 0, source
    # counters of a closed session are kept: the totals never go down
    for source in ("speech", "idle", "action", "repeat", "dropped"):
        key = ("avatar_frames_total", (("source", source),))
        assert after[key] >= during[key], source
    assert histogram_count(after, "avatar_session_latency_seconds") >= 1
    assert histogram_count(after, "avatar_inference_batch_seconds") >= 1
    assert histogram_count(after, "avatar_tts_first_audio_seconds") >= 1
    assert after[("avatar_session_latency_seconds_bucket", (("le", "+Inf"),))] >= 1
    assert after[("avatar_errors_total", (("kind", "llm"),))] >= 1
    assert after[("avatar_uploads_rejected_total", (("status", "400"),))] == 1
    assert after[("avatar_engine_info", (("engine", "lite"),))] == 1
    assert after[("process_resident_memory_bytes", ())] > 0 and "python_info" in types
    labels = {name for (_, pairs) in after for name, _ in pairs}
    assert "session" not in labels and sid not in text


async def test_per_session_series_only_when_asked(serve, config) -> None:
    async with serve(config, metrics_per_session=True) as server:
        client = Client(server)
        sid = await client.connect()
        await client.wait_video(10)
        _, samples, text = await scrape(server)
        tag = server.state.registry.get(sid).tag  # not the id: whoever has that drives the session
        assert samples[("avatar_session_ticks_total", (("avatar", "demo"), ("session", tag)))] >= 10
        assert ("avatar_session_fps", (("avatar", "demo"), ("session", tag))) in samples
        assert sid not in text


def test_each_app_has_its_own_registry() -> None:
    """Two apps in one process (as in the tests) never share or clash on series; nothing goes to the global
    registry."""
    first, second = (Metrics(list, 1, lambda: "lite") for _ in range(2))
    first.upload_rejected(413)
    assert parse_metrics(first.exposition().decode())[1][("avatar_uploads_rejected_total", (("status", "413"),))] == 1
    assert ("avatar_uploads_rejected_total", (("status", "413"),)) not in parse_metrics(second.exposition().decode())[1]
    assert not any(name.startswith("avatar_") for name in REGISTRY._names_to_collectors)
