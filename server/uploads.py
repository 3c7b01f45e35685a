"""Uploaded audio files (/humanaudio): read with a size cap, decoded off the event loop with bounded cost.

PyAV (FFmpeg) reads every common format (wav, mp3, ogg/opus, flac, m4a, webm) and MonoResampler (libswresample)
resamples any rate in linear time, so a header claiming an odd rate cannot make resampling expensive. Decoding
stops as soon as the audio passes the duration limit, so a small file that expands to hours costs little.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import av
import numpy as np
from aiohttp import BodyPartReader, MultipartReader

from core.audio import MonoResampler
from core.units import SAMPLE_RATE
from server.errors import ApiError, BadRequest, TooLarge
from voices._threads import Pool

MIN_RATE, MAX_RATE = 1000, 384_000
MAX_CHANNELS = 16
_READ_CHUNK = 64 * 1024


async def read_form(
    reader: MultipartReader, max_bytes: int, check: Callable[[dict[str, str]], None], key: str = "sessionid"
) -> bytes:
    """The `file` part of a multipart form, reading at most `max_bytes` of it.

    `check(fields)` runs once on the text fields: as soon as field `key` has arrived, so that a form sending it
    before the file (our page does) is refused before a byte of the file is read; otherwise after the form."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    checked = False
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart forms are not supported")
        if part.name == "file":
            buf = bytearray()
            while chunk := await part.read_chunk(_READ_CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise TooLarge(f"the file is larger than {max_bytes // (1024 * 1024)} MB")
            data = bytes(buf)
        elif part.name:
            value = await part.read(decode=True)
            if len(value) > 4096:
                raise BadRequest(f"form field {part.name!r} is too long")
            fields[part.name] = value.decode("utf-8", "replace")
            if part.name == key and not checked:
                checked = True
                check(fields)
    if not checked:
        check(fields)
    if data is None:
        raise BadRequest("the form has no 'file' field")
    return data


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Any common audio file -> float32 mono 16 kHz (blocking: call it in a worker thread)."""
    if not data:
        raise BadRequest("the file is empty")
    max_samples = int(max_seconds * SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadRequest("the file has no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context
            if codec is None:  # FFmpeg found no decoder for what the header describes (e.g. 0 bits a sample)
                raise BadRequest(
                    "cannot decode the audio file: its audio format is not supported "
                    "(the header describes no decodable codec)"
                )
            rate, channels = codec.sample_rate, codec.channels
            if not MIN_RATE <= (rate or 0) <= MAX_RATE:
                raise BadRequest(f"unsupported sample rate {rate} Hz (expected {MIN_RATE}..{MAX_RATE})")
            if not 1 <= (channels or 0) <= MAX_CHANNELS:
                raise BadRequest(f"unsupported channel count {channels}")
            to_mono = MonoResampler()
            parts: list[np.ndarray] = []
            total = 0
            for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
                parts.append(to_mono(frame))
                total += len(parts[-1])
                if total > max_samples:
                    raise TooLarge(f"the audio is longer than {max_seconds:g} s")
    except ApiError:
        raise
    except (av.FFmpegError, ValueError, EOFError, MemoryError) as e:
        raise BadRequest(f"cannot decode the audio file: {e}") from e
    if total == 0:
        raise BadRequest("the file contains no audio samples")
    return np.concatenate(parts).astype(np.float32, copy=False)


class AudioDecoder:
    """Decodes uploads in a pool of its own, a few at a time, so a burst of uploads can neither starve the
    sessions nor take the default executor's threads (aiortc's codecs run there)."""

    def __init__(self, max_seconds: float, concurrency: int = 2) -> None:
        self.max_seconds = max_seconds
        self.pool = Pool("uploads", concurrency)

    async def decode(self, data: bytes) -> np.ndarray:
        return await self.pool.run(decode_audio, data, self.max_seconds)
