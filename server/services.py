"""What the app creates once per process and shares between sessions: the engine, avatars, TTS, LLM, ASR.

Each session gets its own Voice (a Speaker with its own Conversation history, or a RealtimeClient) on top.
"""
from __future__ import annotations

import asyncio
import dataclasses
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
from voices.llm import ChatLLM, ChatModel, Conversation, LocalChatLLM
from voices.openai_api import OpenAIEndpoint
from voices.realtime import RealtimeClient, session_config
from voices.speaker import Speaker
from voices.tts import TTS, PiperTTS

log = logging.getLogger(__name__)


def build_tts(config: ServerConfig) -> TTS | None:
    """The configured TTS backend (None for realtime, which speaks by itself). Blocking (piper loads here)."""
    if config.tts == "piper":
        return PiperTTS(config.REF_FILE)  # a piper .onnx voice by path (its .onnx.json beside it), or the CC0 one
    if config.tts == "edgetts":
        from voices.tts_edge import EdgeTTS

        return EdgeTTS(config.REF_FILE) if config.REF_FILE else EdgeTTS()
    if config.tts == "openai":
        from voices.tts_http import OpenAITTS

        return OpenAITTS(openai_endpoint(config, config.TTS_SERVER or config.llm_base_url),
                         voice=config.REF_FILE or "alloy")
    if config.tts == "gpt-sovits":
        from voices.tts_http import GPTSoVITSTTS

        assert config.REF_FILE is not None
        return GPTSoVITSTTS(config.TTS_SERVER or "http://127.0.0.1:9880", ref_audio_path=config.REF_FILE,
                            prompt_text=config.REF_TEXT or "")
    if config.tts == "cosyvoice":
        from voices.tts_cosyvoice import DEFAULT_SERVER, CosyVoiceTTS

        assert config.REF_FILE is not None
        return CosyVoiceTTS.from_file(config.TTS_SERVER or DEFAULT_SERVER, config.REF_FILE, config.REF_TEXT or "")
    return None


def openai_endpoint(config: ServerConfig, base_url: str | None = None) -> OpenAIEndpoint:
    """The OpenAI(-compatible) or Azure OpenAI service of the options (base URL None: OPENAI_BASE_URL or OpenAI's)."""
    return OpenAIEndpoint(base_url, config.llm_api_key, config.llm_azure_endpoint, config.llm_api_version)


def build_llm(config: ServerConfig) -> ChatModel:
    if config.llm_base_url or config.llm_azure_endpoint:
        return ChatLLM(openai_endpoint(config, config.llm_base_url), config.llm_model)
    return LocalChatLLM()  # loads its weights on the first chat, once per process


class Services:
    def __init__(self, config: ServerConfig, engine: Engine, tts: TTS | None, llm: ChatModel) -> None:
        self.config = config
        self.engine = engine
        self._tts: dict[str, TTS] = {config.tts: tts} if tts is not None else {}
        self._tts_lock = asyncio.Lock()
        self.llm = llm
        self._avatars: dict[str, tuple[Avatar, dict[int, ActionClip]]] = {}
        self._avatar_lock = asyncio.Lock()
        self._transcriber: Transcriber | None = None
        self._asr_lock = asyncio.Lock()

    @classmethod
    async def create(cls, config: ServerConfig, engine: Engine | None = None) -> Services:
        if engine is None:
            engine = await asyncio.to_thread(create_engine, config.engine, config.models_dir, config.version,
                                             config.batch_size, config.device, config.right_context,
                                             config.render_pool)
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
        actions = load_actions(avatar.path, avatar.frames.shape[1:3])
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
        if name == "realtime":
            raise BadRequest("the realtime voice is a speech-to-speech model, not a TTS backend")
        async with self._tts_lock:
            if name not in self._tts:
                # --REF_FILE / --TTS_SERVER describe the --tts backend only; another one starts from its defaults.
                own = dataclasses.replace(self.config, tts=name, REF_FILE=None, REF_TEXT=None, TTS_SERVER=None)
                tts = await asyncio.to_thread(build_tts, own)
                assert tts is not None
                self._tts[name] = tts
            return self._tts[name]

    async def new_voice(self, session: Session, name: str | None = None) -> Voice:
        """A per-session voice: `name` from `voices` (default: the first). BadRequest if unknown."""
        c = self.config
        name = name or self.voices[0]
        if name == "realtime" and c.tts == "realtime":
            endpoint = openai_endpoint(c)
            return RealtimeVoice(session, lambda: RealtimeClient(endpoint, c.realtime_model, c.TTS_SERVER),
                                 session_config(c.system_prompt, c.REF_FILE, c.realtime_turn_detection))
        return Speaker(session, await self.tts(name), Conversation(self.llm, c.system_prompt),
                       on_first_audio=session.stats.record_tts_first_audio, tasks=session.tasks)

    async def transcriber(self) -> Transcriber:
        """The speech recogniser, loaded on first use (a few seconds), once per process."""
        async with self._asr_lock:
            if self._transcriber is None:
                c = self.config
                self._transcriber = await asyncio.to_thread(Transcriber, c.asr_model, language=c.asr_language,
                                                            device=c.asr_device)
            return self._transcriber

    async def aclose(self) -> None:
        for backend in (*self._tts.values(), self.llm):
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                await aclose()
