"""The one place where audio is converted to the package's format:
float32 mono at 16 kHz.

Network backends deliver audio in arbitrary pieces (HTTP chunks, WebSocket
deltas), so besides a one-shot ``resample`` there is a ``StreamResampler``
whose output for a stream cut into any pieces equals the one-shot result.
"""

from __future__ import annotations

import math

import av
import numpy as np
from scipy.signal import firwin, resample_poly

from core.arrays import Pcm
from core.units import SAMPLE_RATE


def resample(audio: Pcm, src_rate: int, dst_rate: int = SAMPLE_RATE) -> Pcm:
    """Resample a complete mono signal (zero-phase polyphase filter)."""
    _check_rates(src_rate, dst_rate)
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
    if src_rate == dst_rate:
        return x.copy()
    return np.asarray(resample_poly(x, dst_rate, src_rate), dtype=np.float32)


def rms(audio: Pcm) -> float:
    """Root mean square of float audio (0 for no samples), accumulated in float64."""
    x = np.asarray(audio)
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def dbfs(audio: Pcm) -> float:
    """Level in dB relative to full scale (a full-scale square wave is 0 dBFS; silence about -180)."""
    return 20.0 * math.log10(rms(audio) + 1e-9)


def pcm16_to_float(data: bytes) -> Pcm:
    """Little-endian signed 16-bit PCM -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise ValueError("PCM16 data must have an even number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: Pcm) -> bytes:
    """float32 in [-1, 1] -> little-endian signed 16-bit PCM (clipped)."""
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()


class StreamResampler:
    """Incremental resampler.

    The input is cut into blocks whose length is a multiple of the decimation
    factor, so every block maps onto a whole number of output samples; each
    block is filtered together with ``context`` input samples on both sides
    (at least the filter's half length), which makes the output of every
    block identical to the corresponding slice of ``resample_poly`` applied to
    the whole stream. The price is a hold-back of ``context`` input samples
    (about 1 ms for 24 kHz, 20 ms for 22.05 kHz), released by ``flush()``.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        _check_rates(src_rate, dst_rate)
        g = math.gcd(src_rate, dst_rate)
        self.up, self.down = dst_rate // g, src_rate // g
        self.passthrough = self.up == self.down == 1
        max_rate = max(self.up, self.down, 2)  # equal rates pass through; the filter is then never used
        half_len = 10 * max_rate  # same design as resample_poly's default
        self._fir = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
        half_in = math.ceil(half_len / self.up)  # filter half length in input samples
        self.context = math.ceil(half_in / self.down) * self.down
        self.reset()

    def reset(self) -> None:
        """Forget the stream (e.g. its response was cancelled)."""
        # Leading zeros reproduce resample_poly's zero padding before the start.
        self._buf = np.zeros(self.context, dtype=np.float32)

    def process(self, audio: Pcm) -> Pcm:
        """Feed input samples; return every output sample that is now final."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        if self.passthrough:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        core = (len(self._buf) - 2 * self.context) // self.down * self.down
        if core <= 0:
            return np.zeros(0, dtype=np.float32)
        out = self._filter(self._buf[: core + 2 * self.context], core)
        self._buf = self._buf[core:]
        return out

    def flush(self) -> Pcm:
        """End of stream: return the held-back tail and reset."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        core = len(self._buf) - self.context
        out = np.zeros(0, dtype=np.float32)
        if core > 0:
            # Trailing zeros reproduce resample_poly's padding after the end;
            # the tail's output length is ceil(core * up / down), as one-shot.
            padded = np.concatenate([self._buf, np.zeros(self.context + self.down, np.float32)])
            n_out = -(-core * self.up // self.down)
            out = self._filter(padded, None)[:n_out]
        self.reset()
        return out

    def _filter(self, segment: Pcm, core: int | None) -> Pcm:
        y = resample_poly(segment, self.up, self.down, window=self._fir)
        start = self.context * self.up // self.down
        stop = None if core is None else start + core * self.up // self.down
        return np.asarray(y[start:stop], dtype=np.float32)


def _check_rates(src_rate: int, dst_rate: int) -> None:
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")


class MonoResampler:
    """Decoded frames of any rate, layout and sample format -> float32 mono at ``rate`` (default 16 kHz).

    Channels are averaged here rather than by libswresample, whose stereo->mono matrix adds 3 dB (and clips
    loud stereo); the rate and format conversion is libswresample's (linear time for any pair of rates)."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self._swr = av.AudioResampler(format="fltp", layout=None, rate=rate)

    def __call__(self, frame: av.AudioFrame | None) -> Pcm:
        """Resample one frame (None: flush the tail)."""
        parts = [out.to_ndarray().mean(axis=0) for out in self._swr.resample(frame)]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
