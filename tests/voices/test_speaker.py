"""Speaker -> session: sentences become audio with timed events; interrupt stops LLM and TTS at once."""

import asyncio

import numpy as np

from core.events import Event
from pipeline.session import EventQueue, Session
from testing.fake_voices import ScriptedLLM, ToneTTS
from testing.probe import ProbeEngine, synthetic_avatar
from voices.llm import ChatLLM, Conversation
from voices.openai_api import OpenAIEndpoint
from voices.speaker import Speaker
from voices.tts_http import OpenAITTS


def next_event(events: EventQueue) -> Event:
    """The next event of a session still open (None, the end marker, is not expected)."""
    event = events.get_nowait()
    assert event is not None
    return event


async def drain(session: Session, ticks: int) -> list:
    return [session.step(wait_for_video=1.0) for _ in range(ticks)]


async def wait_until(cond, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def make() -> Session:
    session = Session("sp", synthetic_avatar(), ProbeEngine(), stepped=True)
    await session.start()
    return session


async def test_echo_speaks_each_sentence_with_events_in_order() -> None:
    session = await make()
    tts = ToneTTS()
    speaker = Speaker(session, tts)
    events = session.subscribe()
    await speaker.say("Hello there, my friend. How are you doing today?")
    await wait_until(lambda: len(tts.spoken) == 2 and session.output.scheduled_ticks >= 22)  # 0.9 s of audio
    assert tts.spoken == ["Hello there, my friend.", "How are you doing today?"]
    await drain(session, 60)
    got = []
    while not events.empty():
        e = next_event(events)
        got.append((e.kind, e.text))
    assert got == [
        ("sentence_start", "Hello there, my friend."),
        ("sentence_end", "Hello there, my friend."),
        ("sentence_start", "How are you doing today?"),
        ("sentence_end", "How are you doing today?"),
    ]
    await speaker.close()
    await session.close()


async def test_chat_streams_sentences_to_tts_before_the_answer_is_complete() -> None:
    session = await make()
    tts = ToneTTS()
    llm = ScriptedLLM(["The sky is ", "blue today. ", "And the sea ", "is calm."], delay=0.3)
    speaker = Speaker(session, tts, Conversation(llm))
    task = speaker.chat("How is the weather?")
    await wait_until(lambda: tts.spoken == ["The sky is blue today."], timeout=2.0)
    assert not task.done()  # the first sentence is being spoken while the LLM still streams
    await task
    await wait_until(lambda: tts.spoken == ["The sky is blue today.", "And the sea is calm."])
    await speaker.close()
    await session.close()


async def test_interrupt_cancels_llm_and_tts_in_flight_and_drops_queued_audio() -> None:
    session = await make()
    tts = ToneTTS(delay=0.2)
    llm = ScriptedLLM(["One two three four five six. "] * 20, delay=0.05)
    speaker = Speaker(session, tts, Conversation(llm))
    speaker.chat("talk a lot")
    await wait_until(lambda: session.output.scheduled_ticks > 0)
    turn = await speaker.interrupt()
    assert turn == session.turn == 1
    assert llm.cancelled and tts.closed_early == 1
    assert session.output.scheduled_ticks == 0
    await asyncio.sleep(0.5)
    assert session.output.scheduled_ticks == 0  # nothing of the old turn arrives later
    # the speaker keeps working for the new turn
    await speaker.say("Back again.")
    await wait_until(lambda: session.output.scheduled_ticks > 0)
    await speaker.close()
    await session.close()


async def test_tts_and_llm_failures_are_reported_as_events_and_the_session_survives() -> None:
    session = await make()
    tts = ToneTTS(fail_on="broken")
    speaker = Speaker(session, tts, Conversation(ScriptedLLM(["Fine words here. "], fail=True)))
    events = session.subscribe()
    await speaker.say("This one is broken. This one works fine.")
    await wait_until(lambda: tts.spoken == ["This one works fine."])
    await speaker.chat("hi")
    first = next_event(events)
    assert (first.kind, first.text) == ("tts_error", "voice server answered 503")
    await wait_until(lambda: not events.empty())
    names = []
    while not events.empty():
        names.append(next_event(events).kind)
    assert "llm_error" in names
    await speaker.close()
    await session.close()


async def test_interrupt_cancels_every_waiting_request_and_their_audio() -> None:
    """Requests still waiting to queue their sentences (the sentence queue is full) belong to the speaker: an
    interrupt cancels them all, so none of their sentences is spoken afterwards (they used to be, under the new
    turn)."""
    session = await make()
    tts = ToneTTS(delay=0.01)
    speaker = Speaker(session, tts, max_pending=4)
    for r in range(3):
        speaker.say(" ".join(f"Request {r} sentence {i} waits." for i in range(30)))
    files = [speaker.push_audio_file(np.full(16000, 0.1, np.float32), f"file {i}") for i in range(2)]
    await wait_until(lambda: tts.spoken)
    assert speaker.pending == 5
    await speaker.interrupt()
    assert speaker.pending == 0 and all(f.cancelled() for f in files)
    spoken = len(tts.spoken)
    await asyncio.sleep(0.3)
    assert len(tts.spoken) == spoken  # nothing of the interrupted requests is synthesised any more
    await speaker.close()
    await session.close()


async def test_an_audio_file_request_ends_when_its_audio_is_in_the_session() -> None:
    session = await make()
    speaker = Speaker(session, ToneTTS())
    task = speaker.push_audio_file(np.full(8000, 0.1, np.float32), "file")
    await asyncio.wait_for(task, 5)  # done once pushed: the voice holds the audio no longer
    assert speaker.pending == 0 and session.queued_seconds > 0
    await speaker.close()
    await session.close()


async def test_sdk_errors_become_llm_error_and_tts_error_events_and_retries_get_through(openai_server, fakes) -> None:
    base, _ = openai_server
    session = await make()
    events = session.subscribe()
    endpoint = OpenAIEndpoint(base)
    async with (
        ChatLLM(endpoint, "unauthorized") as refused,
        ChatLLM(endpoint, "flaky") as flaky,
        OpenAITTS(endpoint, voice="bad") as bad_voice,
    ):
        speaker = Speaker(session, ToneTTS(), Conversation(refused))
        await speaker.chat("hi")
        error = next_event(events)
        assert (error.kind, error.text) == ("llm_error", "LLM: HTTP 401: Incorrect API key provided: sk-bad.")
        speaker.conversation = Conversation(flaky)  # a 429, then a 503, then the answer: the user sees the answer
        tts = speaker.tts
        assert isinstance(tts, ToneTTS)
        await speaker.chat("hi")
        await wait_until(lambda: " ".join(tts.spoken) == "".join(fakes.ANSWER_DELTAS))
        assert events.empty()
        speaker.tts = bad_voice
        await speaker.say("Hello.")
        await wait_until(lambda: not events.empty())
        error = next_event(events)
        assert (error.kind, error.text) == ("tts_error", "OpenAI TTS: HTTP 400: unknown voice")
        await speaker.close()
    await session.close()
