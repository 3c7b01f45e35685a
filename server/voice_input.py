"""Microphone audio the page sends over its peer connection.

With the Realtime API as the voice (--tts realtime) the microphone goes to the service as it is (24 kHz PCM16),
speech to speech: the service's turn detection, transcription and answer (server.voice.RealtimeVoice). Otherwise:
Silero VAD -> transcription (faster-whisper) -> chat, with barge-in. Events published to the session:
`user_speech_start` (the user began to speak; if the avatar was speaking it is interrupted), `user_text` (the
transcript, which is then sent to chat), `asr_error`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from core.audio import MonoResampler
from core.events import Event, EventKind
from core.units import SAMPLE_RATE
from pipeline.session import Session
from server.voice import RealtimeVoice, Voice
from voices.asr import SpeechStart, Transcriber, VADConfig, VoiceActivityDetector
from voices.realtime import API_RATE

log = logging.getLogger(__name__)


class VoiceInput:
    def __init__(
        self,
        track: MediaStreamTrack,
        session: Session,
        voice: Voice,
        transcriber: Callable[[], Awaitable[Transcriber]],
        vad: VADConfig | None = None,
    ) -> None:
        self.track = track
        self.session = session
        self.voice = voice
        self._transcriber = transcriber
        self._vad = vad
        self._in_order = asyncio.Lock()  # utterances are transcribed and answered in the order spoken
        self._answers = session.tasks.group("voice-input")  # transcriptions in flight, ended with the microphone

    async def run(self) -> None:
        try:
            await self._listen()
        finally:
            await self._answers.close()

    async def _listen(self) -> None:
        if isinstance(self.voice, RealtimeVoice):
            await self.voice.listen(microphone(self.track, API_RATE))  # the service hears the user itself
            return
        try:
            vad = VoiceActivityDetector(self._vad)
        except Exception as e:  # noqa: BLE001 -- e.g. no asr extra installed: the session goes on without voice input
            log.warning("voice input is off: %s", e)
            self.session.publish(Event(EventKind.ASR_ERROR, f"voice input is off: {e}", self.session.turn))
            await drain(self.track)
            return
        async for pcm in microphone(self.track):
            await self._feed(vad, pcm)

    async def _feed(self, vad: VoiceActivityDetector, pcm: np.ndarray) -> None:
        for event in vad.push(pcm):
            if isinstance(event, SpeechStart):
                self.session.publish(Event(EventKind.USER_SPEECH_START, "", self.session.turn))
                if self.session.speaking:
                    await self.voice.interrupt()  # barge-in
            else:
                self._answers.spawn(self._answer(event.audio), "asr")

    async def _answer(self, audio: np.ndarray) -> None:
        async with self._in_order:
            try:
                text = await (await self._transcriber()).transcribe(audio)
            except Exception as e:  # a broken ASR model must not end the session
                log.exception("transcription failed")
                self.session.publish(Event(EventKind.ASR_ERROR, f"speech recognition failed: {e}", self.session.turn))
                return
            if text:
                self.session.publish(Event(EventKind.USER_TEXT, text, self.session.turn))
                self.voice.chat(text)


async def microphone(track: MediaStreamTrack, rate: int = SAMPLE_RATE) -> AsyncIterator[np.ndarray]:
    """A received audio track as float32 mono at ``rate``, frame by frame, until it ends."""
    to_mono = MonoResampler(rate)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame)  # a received audio track decodes its packets
        yield to_mono(frame)


async def drain(track: MediaStreamTrack) -> None:
    """Take and discard a track's frames (aiortc queues received frames without bound until someone does)."""
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return
