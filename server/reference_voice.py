"""LiveTalking's voice-cloning fields, never silently ignored: `/offer` `refaudio` (reference audio) and `reftext`
(its transcript) give a session its own reference voice where the session's voice can take one, and are refused
with a 400 naming the field otherwise. GPT-SoVITS: `refaudio` is a path on that server (as --REF_FILE).
CosyVoice: the name of a WAV file beside --REF_FILE on this server (a client never names any other file here).
`/human` `tts` (a per-request voice) is refused with a 400: the reference voice is chosen per session."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.session import Session
from server.config import ServerConfig
from server.errors import BadRequest
from server.services import Services
from server.voice import Voice
from voices.options import CloningOptions, CosyVoiceOptions, GPTSoVITSOptions, create_tts
from voices.speaker import Speaker
from voices.tts import TTSError

CLONING_VOICES = ("gpt-sovits", "cosyvoice")  # the voices that take a reference voice per session
_RECORDING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.wav")
MAX_FIELD_CHARS = 4096


@dataclass(frozen=True)
class Reference:
    audio: str | None  # GPT-SoVITS: a path on its server; CosyVoice: a recording here (checked)
    text: str | None


def _field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":  # LiveTalking's page leaves empty inputs out; others may send ""
        return None
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise BadRequest(f"'{name}' must be a string of at most {MAX_FIELD_CHARS} characters")
    return value


def reference_of(body: dict[str, Any], voice: str, config: ServerConfig) -> Reference | None:
    """The /offer body's reference voice for a session speaking with `voice`; a 400 naming the field when that
    voice cannot take one (or a CosyVoice recording that is not there). None when the offer asks for none."""
    audio, text = _field(body, "refaudio"), _field(body, "reftext")
    if audio is None and text is None:
        return None
    if voice not in CLONING_VOICES:
        named = "'refaudio'" if audio is not None else "'reftext'"
        raise BadRequest(
            f"{named} (a reference voice for the session) is not supported by the voice "
            f"{voice!r}; it needs {' or '.join(CLONING_VOICES)} (--tts)"
        )
    if voice == "cosyvoice" and audio is not None:
        audio = str(_recording(audio, config))
    return Reference(audio, text)


def _configured(config: ServerConfig) -> CloningOptions:
    """The options of the --tts voice, which takes a reference voice (reference_of checked that it does)."""
    options = config.tts_options()
    if not isinstance(options, GPTSoVITSOptions | CosyVoiceOptions):
        raise BadRequest(f"the voice {config.tts!r} takes no reference voice; it needs {' or '.join(CLONING_VOICES)}")
    return options


def _recording(name: str, config: ServerConfig) -> Path:
    """A CosyVoice reference recording chosen by a client: a WAV file in the folder of --REF_FILE, by name."""
    configured = _configured(config)
    if not isinstance(configured, CosyVoiceOptions):
        raise BadRequest(f"the voice {config.tts!r} takes no reference recording from this server")
    folder = configured.recording.parent  # beside --REF_FILE
    path = folder / name
    if not _RECORDING_NAME.fullmatch(name) or not path.is_file():
        raise BadRequest(
            f"'refaudio' must name a .wav file beside the configured reference recording "
            f"(in {folder}); {name!r} is not one"
        )
    return path


def check_tts_field(body: dict[str, Any]) -> None:
    """/human `tts` (LiveTalking: per-request ref_file/ref_text): a 400, unless it is empty."""
    if body.get("tts") not in (None, {}, ""):
        raise BadRequest(
            "'tts' (a voice per request) is not supported: choose the session's reference voice "
            "with /offer 'refaudio' and 'reftext' (gpt-sovits, cosyvoice), or its voice with 'voice'"
        )


class OwnVoiceSpeaker(Speaker):
    """A Speaker with a TTS backend of its own (the session's reference voice), closed with it."""

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.tts.aclose()  # type: ignore[attr-defined]


async def reference_speaker(config: ServerConfig, services: Services, session: Session, ref: Reference) -> Voice:
    """The session's voice (--tts: GPT-SoVITS or CosyVoice) speaking with its own reference; what is not given
    comes from --REF_FILE and --REF_TEXT (a new transcript for the configured audio; new audio has no transcript
    unless given)."""
    # a reference has audio, text or both (reference_of): new audio goes without the configured transcript
    own = _configured(config).with_reference(ref.audio, ref.text or "")
    try:
        tts = await asyncio.to_thread(create_tts, own)  # CosyVoice reads the recording
    except TTSError as e:
        raise BadRequest(f"'refaudio': {e}") from e
    return OwnVoiceSpeaker(session, tts, services.conversation(), tasks=session.tasks)
