import asyncio
import time
from contextlib import aclosing

import pytest

from testing.fake_proxy import forward_proxy
from voices.llm import ChatLLM, Conversation, LLMError, LocalChatLLM, smollm2_dir
from voices.openai_api import OpenAIEndpoint


async def collect(aiter):
    return [x async for x in aiter]


async def test_stream_yields_deltas_and_sends_a_proper_request(openai_server, fakes):
    base, rec = openai_server
    async with ChatLLM(OpenAIEndpoint(base, api_key="sk-test"), "ok", temperature=0.2) as llm:
        deltas = await collect(llm.stream([{"role": "user", "content": "hi"}]))
    assert deltas == fakes.ANSWER_DELTAS
    body = rec.requests[0]
    assert body["stream"] is True and body["model"] == "ok" and body["temperature"] == 0.2
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert rec.headers[0]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("unauthorized", r"HTTP 401: Incorrect API key"),
        ("boom", r"HTTP 500.*internal failure"),
        ("error_event", r"model overloaded"),
        ("cut", r"ended"),
    ],
)
async def test_errors_become_llm_error_with_a_clear_message(openai_server, model, expected, fakes) -> None:
    base, _ = openai_server
    async with ChatLLM(OpenAIEndpoint(base), model) as llm:
        got: list[str] = []

        async def consume() -> None:
            async for delta in llm.stream([{"role": "user", "content": "hi"}]):
                got.append(delta)

        with pytest.raises(LLMError, match=expected):
            await consume()
    if model in ("cut", "error_event"):
        assert 0 < len(got) < len(fakes.ANSWER_DELTAS)  # what came before the failure was delivered


async def test_a_429_and_then_a_503_are_retried_by_the_sdk(openai_server, fakes):
    base, rec = openai_server
    async with ChatLLM(OpenAIEndpoint(base), "flaky") as llm:
        deltas = await collect(llm.stream([{"role": "user", "content": "hi"}]))
    assert deltas == fakes.ANSWER_DELTAS
    assert len(rec.requests) == 3  # 429, 503, then the answer
    async with ChatLLM(OpenAIEndpoint(base, max_retries=0), "flaky") as llm:
        with pytest.raises(LLMError, match=r"HTTP 429: Rate limit reached"):
            await collect(llm.stream([{"role": "user", "content": "hi"}]))


async def test_the_standard_environment_is_used(openai_server, fakes, monkeypatch):
    base, rec = openai_server
    monkeypatch.setenv("OPENAI_BASE_URL", base)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    async with ChatLLM(OpenAIEndpoint(), "ok") as llm:
        assert await collect(llm.stream([{"role": "user", "content": "hi"}])) == fakes.ANSWER_DELTAS
    assert rec.headers[0]["Authorization"] == "Bearer sk-from-env"


async def test_azure_endpoint_uses_deployments_and_the_api_version(openai_server, fakes):
    base, rec = openai_server
    endpoint = OpenAIEndpoint(
        azure_endpoint=base.removesuffix("/v1"), api_version="2025-04-01-preview", api_key="az-key"
    )
    async with ChatLLM(endpoint, "ok") as llm:
        assert await collect(llm.stream([{"role": "user", "content": "hi"}])) == fakes.ANSWER_DELTAS
    assert rec.paths[0] == "/openai/deployments/ok/chat/completions?api-version=2025-04-01-preview"
    assert rec.headers[0]["api-key"] == "az-key"


async def test_refused_connection_and_timeout_fail_fast(openai_server, fakes):
    base, _ = openai_server
    async with ChatLLM(OpenAIEndpoint(f"http://127.0.0.1:{fakes.free_port()}/v1", max_retries=0), "ok") as llm:
        with pytest.raises(LLMError, match="cannot connect"):
            await collect(llm.stream([{"role": "user", "content": "hi"}]))
    start = time.monotonic()
    async with ChatLLM(OpenAIEndpoint(base, read_timeout=0.3, max_retries=0), "hang") as llm:
        with pytest.raises(LLMError, match="timed out"):
            await collect(llm.stream([{"role": "user", "content": "hi"}]))
    assert time.monotonic() - start < 3


async def test_conversation_sends_system_prompt_and_bounds_history(openai_server, fakes):
    base, rec = openai_server
    async with ChatLLM(OpenAIEndpoint(base), "ok") as llm:
        conv = Conversation(llm, system_prompt="Be brief.", max_turns=2)
        for question in ["q1", "q2", "q3"]:
            assert "".join(await collect(conv.reply(question))) == "".join(fakes.ANSWER_DELTAS)
        await collect(conv.reply("q4"))
    answer = "".join(fakes.ANSWER_DELTAS)
    assert rec.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
    ]
    # Fourth request: system prompt, the last two exchanges (q2, q3), the new question.
    assert rec.requests[3]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "q4"},
    ]
    assert [m["content"] for m in conv.history] == ["q3", answer, "q4", answer]


async def test_conversation_records_only_the_text_produced_when_stopped(openai_server, fakes):
    base, rec = openai_server
    async with ChatLLM(OpenAIEndpoint(base), "slow") as llm:
        conv = Conversation(llm, max_turns=4)
        got = []
        async with aclosing(conv.reply("tell me a long story")) as answer:
            async for delta in answer:
                got.append(delta)
                if len(got) == 3:
                    break
        assert conv.history == [
            {"role": "user", "content": "tell me a long story"},
            {"role": "assistant", "content": "".join(fakes.ANSWER_DELTAS[:3])},
        ]
        # The HTTP response was closed: the server notices the client is gone.
        await asyncio.wait_for(rec.client_gone.wait(), 3)
        assert rec.sent_chunks < len(fakes.ANSWER_DELTAS) * 20


async def test_conversation_records_partial_text_when_the_task_is_cancelled(openai_server, fakes):
    base, _ = openai_server
    async with ChatLLM(OpenAIEndpoint(base), "slow") as llm:
        conv = Conversation(llm)
        first = asyncio.Event()
        got = []

        async def consume():
            async for delta in conv.reply("hello"):
                got.append(delta)
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert conv.history[1] == {"role": "assistant", "content": "".join(got)}
    assert 0 < len(got) < len(fakes.ANSWER_DELTAS) * 20


async def test_failed_exchange_with_no_text_is_not_recorded(openai_server):
    base, _ = openai_server
    async with ChatLLM(OpenAIEndpoint(base), "unauthorized") as llm:
        conv = Conversation(llm)
        with pytest.raises(LLMError):
            await collect(conv.reply("hello"))
    assert conv.history == []
    with pytest.raises(ValueError, match="max_turns"):
        Conversation(llm, max_turns=0)


def test_smollm2_is_found_inside_its_package():
    assert (smollm2_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size > 50_000_000


@pytest.mark.slow
async def test_smollm2_offline_generation_streams_deltas():
    import torch

    torch.set_num_threads(2)
    llm = LocalChatLLM(max_new_tokens=12)
    deltas = await collect(llm.stream([{"role": "user", "content": "What is the capital of France? One word."}]))
    assert len(deltas) >= 2  # streamed, not one block
    assert "paris" in "".join(deltas).lower()
    # Cancellation: stopping after the first delta ends generation early.
    conv = Conversation(LocalChatLLM(max_new_tokens=200))
    async with aclosing(conv.reply("Write a long story about a dragon.")) as answer:
        async for _ in answer:
            break
    assert 0 < len(conv.history[1]["content"]) < 100


async def test_a_proxy_from_the_environment_is_used(openai_server, fakes, monkeypatch):
    base, _ = openai_server
    async with forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with ChatLLM(OpenAIEndpoint(base), "ok") as llm:
            assert await collect(llm.stream([{"role": "user", "content": "hi"}])) == fakes.ANSWER_DELTAS
    assert seen == [f"POST {base}/chat/completions"]
