"""In-process fakes of a TTS voice and a chat model (the `voices.tts.TTS` and `voices.llm.ChatModel` protocols),
for tests of what drives them (the Speaker): scripted output with delays and failures on demand, and a record of
what was asked and what was cut short. The HTTP services themselves are faked in testing/fake_services.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import numpy as np

from voices.llm import LLMError, Message
from voices.tts import TTSError

WORD_SAMPLES = 1600  # 0.1 s at 16 kHz


class ToneTTS:
    """0.1 s of tone per word, in one chunk per word, with a small synthesis delay per chunk."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        self.spoken: list[str] = []  # every text asked for, in order
        self.closed_early = 0  # syntheses closed before their last chunk (interrupted)

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        if self.fail_on and self.fail_on in text:
            raise TTSError("voice server answered 503")
        self.spoken.append(text)
        words = text.split()
        done = 0
        try:
            for _ in words:
                await asyncio.sleep(self.delay)
                yield np.full(WORD_SAMPLES, 0.2, np.float32)
                done += 1
        finally:
            if done < len(words):
                self.closed_early += 1


class ScriptedLLM:
    """Streams the given deltas, one per `delay`; then fails like a chat endpoint answering 500 if `fail`."""

    def __init__(self, deltas: Sequence[str], delay: float = 0.0, fail: bool = False) -> None:
        self.deltas, self.delay, self.fail = deltas, delay, fail
        self.cancelled = False  # the answer was cancelled or closed before its end

    async def stream(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        try:
            for d in self.deltas:
                await asyncio.sleep(self.delay)
                yield d
            if self.fail:
                raise LLMError("chat endpoint answered 500")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled = True
            raise
