"""What a session tells its listeners (the page's server-sent events, the metrics, the logs).

An event rides on the audio it belongs to and fires when that audio is played out, so a subtitle or a
"sentence_end" is never ahead of or behind the voice. The kinds' values are the names on the wire
(``GET /sse``, web/events.js); LiveTalking's sentence format is made from them at the edge (server/routes.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(enum.StrEnum):
    SENTENCE_START = "sentence_start"  # a sentence of the avatar's answer starts playing; text: the sentence
    SENTENCE_END = "sentence_end"  # ... and has finished playing
    SUBTITLE = "subtitle"  # streamed speech (Realtime API): the next words of the playing sentence
    USER_SPEECH_START = "user_speech_start"  # the user started speaking: the avatar is interrupted
    USER_TEXT = "user_text"  # what speech recognition heard
    TTS_ERROR = "tts_error"  # text: what failed, for the user
    LLM_ERROR = "llm_error"
    ASR_ERROR = "asr_error"
    RENDER_ERROR = "render_error"  # the renderer failed: the last frame is repeated until it recovers


# The kinds that report a failure, and which service failed (the metrics' label).
ERROR_SERVICES: dict[EventKind, str] = {
    EventKind.TTS_ERROR: "tts",
    EventKind.LLM_ERROR: "llm",
    EventKind.ASR_ERROR: "asr",
    EventKind.RENDER_ERROR: "render",
}


@dataclass(frozen=True)
class Event:
    """One event of a conversation turn (events of an interrupted turn are dropped with its audio)."""

    kind: EventKind
    text: str = ""
    turn: int = 0
