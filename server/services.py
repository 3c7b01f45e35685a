"""What the app creates once per process and shares between sessions: the engine, avatars, TTS, LLM, ASR.

Each session gets its own Voice (a Speaker with its own Conversation history, or a RealtimeClient) on top.
"""

from __future__ import annotations

import asyncio
import logging

from engines.base import Engine
from engines.factory import create_engine
from musetalk.avatar import Avatar, load_avatar, validate_avatar_id
from pipeline.actions import ActionClip, load_actions
from pipeline.session import Session
from server.config import ServerConfig
from server.errors import BadRequest
from server.voice import RealtimeVoice, Voice
from voices.asr import Transcriber
from voices.llm import ChatModel, Conversation
from voices.options import create_llm, create_transcriber, create_tts, new_conversation
from voices.speaker import Speaker
from voices.tts import TTS

log = logging.getLogger(__name__)


def build_tts(config: ServerConfig) -> TTS | None:
    """The --tts backend (None for realtime, which speaks by itself). Blocking (piper loads here). ConfigError."""
    options = config.tts_options()
    return create_tts(options) if options is not None else None


def build_llm(config: ServerConfig) -> ChatModel:
    """The chat model (the offline one loads its weights on the first chat, once per process). ConfigError."""
    return create_llm(config.llm_options())


class Services:
    def __init__(self, config: ServerConfig, engine: Engine, tts: TTS | None, llm: ChatModel) -> None:
        self.config = config
        self.engine = engine
        self._tts: dict[str, TTS] = {config.tts: tts} if tts is not None else {}
        self._tts_lock = asyncio.Lock()
        self.llm = llm
        self._llm_options = config.llm_options()
        self._avatars: dict[str, tuple[Avatar, dict[int, ActionClip]]] = {}
        self._avatar_lock = asyncio.Lock()
        self._transcriber: Transcriber | None = None
        self._asr_lock = asyncio.Lock()

    @classmethod
    async def create(cls, config: ServerConfig, engine: Engine | None = None) -> Services:
        if engine is None:
            engine = await asyncio.to_thread(
                create_engine,
                config.engine,
                config.models_dir,
                config.version,
                config.batch_size,
                config.device,
                config.right_context,
                config.render_pool,
            )
        tts = await asyncio.to_thread(build_tts, config)
        services = cls(config, engine, tts, build_llm(config))
        await services.avatar(config.avatar_id)  # a broken default avatar stops the start, not the first visitor
        return services

    async def avatar(self, avatar_id: str) -> tuple[Avatar, dict[int, ActionClip]]:
        """A prepared avatar and its action clips, loaded and bound to the engine once (off the event loop).

        InvalidAvatarIdError, AvatarNotFoundError: no such avatar; AvatarError: a damaged one (or action clip)."""
        validate_avatar_id(avatar_id)
        if (loaded := self._avatars.get(avatar_id)) is not None:
            return loaded  # not behind another avatar's load, which can take seconds (latents encoded on bind)
        async with self._avatar_lock:
            if avatar_id not in self._avatars:
                self._avatars[avatar_id] = await asyncio.to_thread(self._load_avatar, avatar_id)
            return self._avatars[avatar_id]

    def forget_avatar(self, avatar_id: str) -> None:
        """Drop a deleted avatar from the cache and the engine (a new avatar of the same id is loaded afresh)."""
        loaded = self._avatars.pop(avatar_id, None)
        if loaded is not None:
            self.engine.unbind(loaded[0])

    def _load_avatar(self, avatar_id: str) -> tuple[Avatar, dict[int, ActionClip]]:
        avatar = load_avatar(avatar_id, self.config.avatars_dir)
        height, width = avatar.frames.shape[1:3]
        actions = load_actions(avatar.path, (height, width))
        self.engine.bind(avatar)
        return avatar, actions

    @property
    def voices(self) -> list[str]:
        """The TTS backends a session may choose in /offer ("voice"); the first is the default (--tts).

        The offline piper voice and edge-tts are always offered; --tts realtime replaces TTS and LLM for all."""
        c = self.config
        if c.tts == "realtime":
            return ["realtime"]
        return [c.tts] + [name for name in ("piper", "edgetts") if name != c.tts]

    def check_voice(self, name: str) -> None:
        """BadRequest, naming the voices offered, unless `name` is one of `voices`."""
        if name not in self.voices:
            raise BadRequest(f"unknown voice {name!r}; this server offers {', '.join(self.voices)}")

    async def tts(self, name: str) -> TTS:
        """A TTS backend, built on first use and shared by the sessions that chose it. BadRequest if unknown."""
        self.check_voice(name)
        options = self.config.tts_options(name)
        if options is None:
            raise BadRequest("the realtime voice is a speech-to-speech model, not a TTS backend")
        async with self._tts_lock:
            if name not in self._tts:
                self._tts[name] = await asyncio.to_thread(create_tts, options)
            return self._tts[name]

    def conversation(self) -> Conversation:
        """A new session's conversation with the chat model (--system_prompt, its own history)."""
        return new_conversation(self.llm, self._llm_options)

    async def new_voice(self, session: Session, name: str | None = None) -> Voice:
        """A per-session voice: `name` from `voices` (default: the first). BadRequest if unknown."""
        c = self.config
        name = name or self.voices[0]
        if name == "realtime" and c.tts == "realtime":
            realtime = c.realtime_options()
            return RealtimeVoice(session, realtime.client, realtime.session_config())
        return Speaker(
            session,
            await self.tts(name),
            self.conversation(),
            on_first_audio=session.stats.record_tts_first_audio,
            tasks=session.tasks,
        )

    async def transcriber(self) -> Transcriber:
        """The speech recogniser, loaded on first use (a few seconds), once per process."""
        async with self._asr_lock:
            if self._transcriber is None:
                self._transcriber = await asyncio.to_thread(create_transcriber, self.config.asr_options())
            return self._transcriber

    async def aclose(self) -> None:
        for backend in (*self._tts.values(), self.llm):
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                await aclose()
