"""CosyVoice's HTTP server (``runtime/python/fastapi/server.py`` of FunAudioLLM/CosyVoice): voice cloning from a
reference recording sent with every request.

``POST {server}/inference_zero_shot`` (form fields ``tts_text``, ``prompt_text``, file ``prompt_wav``) clones
the voice of the recording whose transcript is ``prompt_text``; without a transcript
``/inference_cross_lingual`` (``tts_text``, ``prompt_wav``) does. The answer is raw PCM16 mono at the model's
rate (24 kHz for CosyVoice 2 and 3, 22.05 kHz for CosyVoice 1), one piece per sentence the model finishes; it is
passed on as it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import numpy as np

from voices._http import HTTPBackend
from voices.options import COSYVOICE_SERVER
from voices.tts import TTSError
from voices.tts_http import _READ_SIZE, _PCMStream, _stream_pcm


class CosyVoiceTTS(HTTPBackend):
    error_type = TTSError
    name = "CosyVoice"

    def __init__(
        self,
        server: str = COSYVOICE_SERVER,
        *,
        prompt_wav: bytes,
        prompt_text: str = "",
        sample_rate: int = 24000,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        super().__init__(connect_timeout=connect_timeout, read_timeout=read_timeout)
        if prompt_wav[:4] != b"RIFF" or prompt_wav[8:12] != b"WAVE":
            raise TTSError("CosyVoice: the reference recording must be a WAV file")
        self.server = server.rstrip("/")
        self.prompt_wav, self.prompt_text, self.sample_rate = prompt_wav, prompt_text, sample_rate

    @classmethod
    def from_file(cls, server: str, path: str | Path, prompt_text: str = "") -> CosyVoiceTTS:
        """With the reference recording read from a WAV file here (blocking: a small file)."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise TTSError(f"CosyVoice: cannot read the reference recording {path}: {e.strerror or e}") from e
        return cls(server, prompt_wav=data, prompt_text=prompt_text)

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        if not text.strip():
            return
        form = aiohttp.FormData()
        form.add_field("tts_text", text)
        if self.prompt_text:
            form.add_field("prompt_text", self.prompt_text)
        form.add_field("prompt_wav", self.prompt_wav, filename="prompt.wav", content_type="audio/wav")
        mode = "zero_shot" if self.prompt_text else "cross_lingual"
        async with self._request("POST", f"{self.server}/inference_{mode}", data=form) as resp:
            async for chunk in _stream_pcm(resp.content.iter_chunked(_READ_SIZE), _PCMStream(self.sample_rate)):
                yield chunk
