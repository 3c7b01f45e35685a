"""Whisper audio features for MuseTalk: log-mel, encoder step features, per-video-frame chunks, streaming.

Units: a *step* is one 50 Hz encoder position = 320 samples = one 20 ms audio frame. A video frame's *chunk* is
10 consecutive steps x 5 states = 50 tokens of 384, token order ``5 * t + state``.

Two official semantics (reference/musetalk.md section 5):
- ``"v15"`` (AudioProcessor): 30 s waveform segments zero-padded in the waveform domain, log-mel max normalised per
  segment, HF hidden states (last one layer-normed), ``floor(n / 16000 * 50)`` steps, frame i reads steps
  ``floor(i*m) - ceil(m)*2 + k`` (k < 10, m = 50/fps) with zeros outside the utterance. (Upstream pads with
  ``zeros_like`` of slices of the features, so an utterance of fewer than ``ceil(m)*2`` steps gets less padding:
  at 25 fps it then fails its length assert; here such utterances are zero-padded like all others.)
- ``"v1"`` (Audio2Feature): log-mel of the whole input normalised with its global max, cut into 3000-frame segments
  zero-padded in the normalised log-mel domain, raw last state, frame i reads steps ``int(i*50/fps) - 4 + k``
  clamped to the utterance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from core.units import FRAME_SAMPLES as AUDIO_FRAME_SAMPLES
from core.units import SAMPLE_RATE, VIDEO_FPS

from .config import Version, check_version
from .whisper import N_STATES, encoder_states

N_FFT = 400
MEL_HOP = 160
N_MELS = 80
SEGMENT_SAMPLES = 30 * SAMPLE_RATE
SEGMENT_MEL_FRAMES = SEGMENT_SAMPLES // MEL_HOP  # 3000: the only input length the encoder accepts
SAMPLES_PER_STEP = AUDIO_FRAME_SAMPLES
STEPS_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_STEP  # 50
SEGMENT_STEPS = SEGMENT_SAMPLES // SAMPLES_PER_STEP  # 1500
FEATURE_DIM = 384
PAD_LEFT = PAD_RIGHT = 2  # audio_padding_length_left / _right of the official code
STEPS_PER_CHUNK = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # 10
TOKENS_PER_CHUNK = STEPS_PER_CHUNK * N_STATES  # 50

# (window samples, utterance step of its first sample) -> (samples // 320, 5, 384): every whole 20 ms step.
StepFunction = Callable[[np.ndarray, int], np.ndarray]


def _check_fps(fps: int) -> None:
    # The official code does fps = int(fps); a float rate would silently change the frame/step mapping.
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")


def _as_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono 16 kHz samples, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
    return audio.astype(np.float32, copy=False)


# ---------------------------------------------------------------- log-mel


@lru_cache(maxsize=1)
def _mel_filters() -> torch.Tensor:
    # The exact filters of the official v1.5 path (slaney mel, 0..8 kHz), which equal openai-whisper's mel_filters.npz.
    return torch.from_numpy(WhisperFeatureExtractor(feature_size=N_MELS).mel_filters.T.astype(np.float32))


def log_mel(audio: np.ndarray, center: bool = True) -> torch.Tensor:
    """(n,) samples -> (80, n // 160) log10 mel power, unnormalised; the last STFT frame is dropped as whisper does.

    ``center=False``: the samples are already padded, every STFT frame (1 + (n - 400) // 160) is kept."""
    x = torch.from_numpy(_as_audio(audio))
    stft = torch.stft(x, N_FFT, MEL_HOP, window=torch.hann_window(N_FFT), center=center, return_complex=True)
    power = ((stft[..., :-1] if center else stft).abs() ** 2).contiguous()
    return torch.clamp(_mel_filters() @ power, min=1e-10).log10()


def normalise_log_mel(log_spec: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
    """Whisper's normalisation with the max taken over the whole given tensor (or ``peak``: that of a larger one)."""
    peak = log_spec.max() if peak is None else peak
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


# Fewer frames than this would make the mel product a matrix-vector product, whose sums are not bit-identical to
# the columns of the matrix product over all 3000 frames (measured: with 1 frame some of its 80 values differ).
_MIN_MEL_FRAMES = 16


@lru_cache(maxsize=1)
def _zero_log_mel() -> torch.Tensor:
    """(80, 1) log-mel frame of silence (every frame of a zero input), taken from the full computation itself."""
    return log_mel(np.zeros(SEGMENT_SAMPLES, np.float32))[:, :1].clone()


def placed_log_mel(audio: np.ndarray, start: int = 0) -> torch.Tensor:
    """Normalised (80, 3000) log-mel of 30 s of zeros holding ``audio`` from sample ``start`` on (v1.5's encoder
    input), bit-identical to ``normalise_log_mel(log_mel(placed))`` but computing only the STFT frames whose window
    (with the STFT's reflect padding at both ends) reaches a sample of ``audio``: every other frame is the log-mel
    of silence. The clamp at max - 8 still uses the max over all 3000 frames."""
    audio = _as_audio(audio)
    n = len(audio)
    if start < 0 or start + n > SEGMENT_SAMPLES:
        raise ValueError(f"{n} samples at sample {start} do not fit in 30 s")
    silence = _zero_log_mel()
    if n == 0:
        return normalise_log_mel(silence).expand(N_MELS, SEGMENT_MEL_FRAMES).contiguous()
    half = N_FFT // 2
    # Frame t reads samples [160 t - 200, 160 t + 200); frames 0 and 1 also read samples 1 .. 200 reflected.
    first = 0 if start <= half else (start - half) // MEL_HOP + 1
    stop = min(SEGMENT_MEL_FRAMES, -(-(start + n + half) // MEL_HOP))
    first = max(0, min(first, stop - _MIN_MEL_FRAMES))
    stop = min(SEGMENT_MEL_FRAMES, max(stop, first + _MIN_MEL_FRAMES))
    # The samples [lo, hi) those frames read; outside the 30 s, reflected as torch.stft(center=True) pads them
    # (when lo < 0 the part read holds samples 0 .. 200, when hi > 30 s the last 201).
    lo, hi = first * MEL_HOP - half, (stop - 1) * MEL_HOP + half
    inner_lo, inner_hi = max(lo, 0), min(hi, SEGMENT_SAMPLES)
    inner = np.zeros(inner_hi - inner_lo, np.float32)
    copy_lo, copy_hi = max(inner_lo, start), min(inner_hi, start + n)
    inner[copy_lo - inner_lo : copy_hi - inner_lo] = audio[copy_lo - start : copy_hi - start]
    samples = np.pad(inner, (inner_lo - lo, hi - inner_hi), mode="reflect")
    frames = log_mel(samples, center=False)
    peak = frames.max()
    if stop - first < SEGMENT_MEL_FRAMES:
        peak = torch.maximum(peak, silence.max())
    out = normalise_log_mel(silence, peak).expand(N_MELS, SEGMENT_MEL_FRAMES).contiguous()
    out[:, first:stop] = normalise_log_mel(frames, peak)
    return out


def mel_segments(audio: np.ndarray, version: Version) -> tuple[torch.Tensor, list[int]]:
    """Encoder inputs (S, 80, 3000) and, per segment, how many of its steps hold audio (whole 20 ms steps)."""
    check_version(version)
    audio = _as_audio(audio)
    if version == "v15":
        mels, steps = [], []
        for start in range(0, len(audio), SEGMENT_SAMPLES):
            segment = audio[start : start + SEGMENT_SAMPLES]
            mels.append(placed_log_mel(segment))
            steps.append(len(segment) // SAMPLES_PER_STEP)
    else:
        # Under one step there is nothing to keep (and the STFT's reflect padding needs > 200 samples).
        mel = normalise_log_mel(log_mel(audio)) if len(audio) >= SAMPLES_PER_STEP else torch.zeros(N_MELS, 0)
        mels, steps = [], []
        for start in range(0, mel.shape[1], SEGMENT_MEL_FRAMES):
            frames = mel[:, start : start + SEGMENT_MEL_FRAMES]
            mels.append(torch.nn.functional.pad(frames, (0, SEGMENT_MEL_FRAMES - frames.shape[1])))
            steps.append(frames.shape[1] // 2)
    if not mels:
        return torch.zeros(0, N_MELS, SEGMENT_MEL_FRAMES), []
    return torch.stack(mels), steps


# ---------------------------------------------------------------- encoder step features


def num_steps(n_samples: int, version: Version) -> int:
    """Length T of the official step feature array for an utterance of n_samples."""
    check_version(version)
    if version == "v15":
        return math.floor(n_samples / SAMPLE_RATE * STEPS_PER_SECOND)  # float formula: sometimes n // 320 - 1
    return n_samples // SAMPLES_PER_STEP  # sum over 3000-frame segments of int(frames / 2), frames = n // 160


def encode_steps(audio: np.ndarray, encoder: WhisperEncoder, version: Version) -> np.ndarray:
    """(n,) samples -> (n // 320, 5, 384) float32: the features of every whole 20 ms step, 30 s segment by segment."""
    mels, steps = mel_segments(audio, version)
    if not steps:
        return np.zeros((0, N_STATES, encoder.config.d_model), np.float32)
    states = encoder_states(encoder, mels, layer_norm_last=version == "v15").float().cpu().numpy()
    return np.concatenate([states[i, :n] for i, n in enumerate(steps)])


def window_mel(audio: np.ndarray, version: Version, offset_steps: int) -> torch.Tensor:
    """(1, 80, 3000) encoder input holding a window of at most 30 s at encoder positions offset_steps .. .

    v15 places the waveform at that offset in 30 s of zeros and normalises the whole input; v1 normalises the
    window's log-mel with its own max and places it in a zero (normalised-domain) input, as its segments are padded.
    """
    check_version(version)
    audio = _as_audio(audio)
    if offset_steps < 0 or offset_steps * SAMPLES_PER_STEP + len(audio) > SEGMENT_SAMPLES:
        raise ValueError(f"a window of {len(audio)} samples at step {offset_steps} does not fit in 30 s")
    if version == "v15":
        return placed_log_mel(audio, offset_steps * SAMPLES_PER_STEP)[None]
    mel = normalise_log_mel(log_mel(audio)) if len(audio) >= SAMPLES_PER_STEP else torch.zeros(N_MELS, 0)
    return _placed_mel(mel, offset_steps)


def _placed_mel(mel: torch.Tensor, offset_steps: int) -> torch.Tensor:
    out = torch.zeros(1, N_MELS, SEGMENT_MEL_FRAMES)
    out[0, :, 2 * offset_steps : 2 * offset_steps + mel.shape[1]] = mel
    return out


def window_mels(audio: np.ndarray, version: Version, first_step: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Encoder inputs (P, 80, 3000) for audio whose first sample is utterance step ``first_step``, placed where the
    official segmenting puts its steps: step s at encoder position ``s % 1500`` of 30 s segment ``s // 1500``.

    The audio is cut at every segment boundary it straddles, each part one input, as the official segments hold
    them; v1 cuts the log-mel of the whole audio (one normalisation, as its whole-input log-mel is cut into
    segments), v15 the waveform (each 30 s segment is its own log-mel). Also returns each input's first encoder
    position and number of whole steps. A partial step at the end stays in its input, as in the official segment;
    one past a boundary makes no input.
    """
    check_version(version)
    audio = _as_audio(audio)
    if first_step < 0:
        raise ValueError(f"first_step must be >= 0, got {first_step}")
    total, step = len(audio) // SAMPLES_PER_STEP, 0
    parts: list[tuple[int, int, int]] = []  # per input: first step into the audio, encoder position, whole steps
    while step < total or not parts:
        position = (first_step + step) % SEGMENT_STEPS
        parts.append((step, position, min(total - step, SEGMENT_STEPS - position)))
        step += parts[-1][2]
    if version == "v15":
        mels = [
            window_mel(
                audio[start * SAMPLES_PER_STEP : (start + SEGMENT_STEPS - position) * SAMPLES_PER_STEP],
                version,
                position,
            )
            for start, position, _ in parts
        ]
    else:
        mel = normalise_log_mel(log_mel(audio)) if len(audio) >= SAMPLES_PER_STEP else torch.zeros(N_MELS, 0)
        mels = [
            _placed_mel(mel[:, 2 * start : 2 * (start + SEGMENT_STEPS - position)], position)
            for start, position, _ in parts
        ]
    return torch.cat(mels), [p for _, p, _ in parts], [n for _, _, n in parts]


def encode_window(audio: np.ndarray, encoder: WhisperEncoder, version: Version, first_step: int = 0) -> np.ndarray:
    """(n,) samples starting at utterance step ``first_step`` -> (n // 320, 5, D) float32, encoded at the positions
    of the official segmenting (see ``window_mels``): one encoder input per 30 s segment the audio touches."""
    mels, positions, counts = window_mels(audio, version, first_step)
    states = encoder_states(encoder, mels, layer_norm_last=version == "v15")
    return np.concatenate(
        [states[i, p : p + n].float().cpu().numpy() for i, (p, n) in enumerate(zip(positions, counts))]
    )


def whisper_steps(audio: np.ndarray, encoder: WhisperEncoder, version: Version) -> np.ndarray:
    """(n,) samples -> (T, 5, 384) float32 step features exactly as the official pipeline of ``version`` keeps them."""
    return encode_steps(audio, encoder, version)[: num_steps(len(audio), version)]


# ---------------------------------------------------------------- per-video-frame chunks


def num_frames(n_samples: int, version: Version, fps: int = VIDEO_FPS) -> int:
    """How many chunks the official code makes for an utterance of n_samples."""
    check_version(version)
    _check_fps(fps)
    if version == "v15":
        return math.floor(n_samples / SAMPLE_RATE * fps)
    n_steps = num_steps(n_samples, version)
    # feature2chunks appends chunk i, then stops once int(i * 50/fps) > T: start near the answer, then step.
    multiplier = STEPS_PER_SECOND / fps
    i = max(0, math.floor((n_steps + 1) / multiplier) - 2)
    while int(i * multiplier) <= n_steps:
        i += 1
    return i + 1


def frame_step_indices(frames: np.ndarray, version: Version, fps: int = VIDEO_FPS) -> np.ndarray:
    """(N,) video frame indices -> (N, 10) utterance step indices they read, before zero-padding / clamping."""
    check_version(version)
    _check_fps(fps)
    frames = np.asarray(frames, dtype=np.int64)
    if version == "v15":
        multiplier = STEPS_PER_SECOND / fps
        start = np.floor(frames * multiplier).astype(np.int64) - math.ceil(multiplier) * PAD_LEFT
    else:  # get_sliced_feature hard-codes 2 steps per padding unit whatever the fps
        start = (frames * STEPS_PER_SECOND / fps).astype(np.int64) - 2 * PAD_LEFT
    return start[:, None] + np.arange(STEPS_PER_CHUNK)


def gather_chunks(
    steps: np.ndarray, indices: np.ndarray, first_step: int, n_steps: int | None, version: Version
) -> np.ndarray:
    """Build (N, 50, 384) chunks from step features.

    ``steps[j]`` holds utterance step ``first_step + j``; ``n_steps`` is the utterance's T, or None while the
    utterance goes on past every index asked for. v15 reads zeros outside [0, T); v1 clamps into [0, T-1].
    """
    check_version(version)
    upper = np.iinfo(np.int64).max if n_steps is None else n_steps
    if version == "v1":
        if upper <= 0:
            raise ValueError("v1 chunks need at least one step of audio (320 samples)")
        indices = np.clip(indices, 0, upper - 1)
    valid = (indices >= 0) & (indices < upper)
    rows = indices - first_step
    if np.any(valid & ((rows < 0) | (rows >= len(steps)))):
        raise ValueError(
            f"step features cover steps [{first_step}, {first_step + len(steps)}) but the frames need "
            f"steps [{indices[valid].min()}, {indices[valid].max() + 1})"
        )
    out = np.zeros(indices.shape + steps.shape[1:], np.float32)
    out[valid] = steps[rows[valid]]
    return out.reshape(len(indices), STEPS_PER_CHUNK * steps.shape[1], steps.shape[2])


def frame_chunks(steps: np.ndarray, n_samples: int, version: Version, fps: int = VIDEO_FPS) -> np.ndarray:
    """Official per-frame chunks (N, 50, 384) of a whole utterance's step features (T, 5, 384)."""
    n_steps = num_steps(n_samples, version)
    if len(steps) != n_steps:
        raise ValueError(f"{n_samples} samples give {n_steps} steps ({version}), got {len(steps)}")
    indices = frame_step_indices(np.arange(num_frames(n_samples, version, fps)), version, fps)
    return gather_chunks(steps, indices, 0, n_steps, version)


# ---------------------------------------------------------------- streaming


class StreamingFeatures:
    """Per-frame chunks for batches of B video frames from the audio of the utterance that has arrived.

    What this computes, exactly: for video frames f0 .. f0+B-1 let [lo, hi) be the utterance steps their chunks
    read (``frame_step_indices``). Officially each 30 s segment of the utterance is one encoder input, so those
    steps depend on the audio of their segments, ``lo // 1500`` to ``(hi - 1) // 1500``, and on nothing else. The
    batch's encoder input is that audio as far as it is given: from the start of lo's segment (or
    ``left_context_s`` before lo when that is later) to the end of what the caller hands over -- at least
    ``right_context_s`` past step hi unless the utterance ends before -- and never past the end of (hi - 1)'s
    segment. It is encoded by segment at the official positions (``encode_window``) and the chunks are sliced from
    it with the official padding / clamping at the utterance's start and end (zero steps / replicated edge from
    step T on once the end is known), identically to the offline ``frame_chunks``.

    So once the audio of those segments has all been given (a TTS voice usually delivers a sentence faster than it
    plays) the features are the official ones. Before that, the audio still to come is zeros in the encoder input
    and the features differ from the official ones (the encoder attends over its whole 30 s input, and the mel max
    is taken per input): by how much depends on the weights, see ``BENCHMARKS.md``.

    At 25 fps the batch reads 4 steps (80 ms) beyond its own 2B audio frames, so the audio needed beyond the
    batch is ``lookahead_ms`` = 80 ms + right context.
    """

    def __init__(
        self,
        encoder: WhisperEncoder,
        version: Version,
        batch_frames: int = 8,
        left_context_s: float | None = None,
        right_context_s: float = 0.2,
        fps: int = VIDEO_FPS,
    ) -> None:
        def step_features(audio: np.ndarray, first_step: int) -> np.ndarray:
            return encode_window(audio, encoder, version, first_step)

        self._init(step_features, encoder.config.d_model, version, batch_frames, left_context_s, right_context_s, fps)

    @classmethod
    def with_step_function(
        cls,
        step_features: StepFunction,
        version: Version,
        batch_frames: int = 8,
        left_context_s: float | None = None,
        right_context_s: float = 0.2,
        fps: int = VIDEO_FPS,
        feature_dim: int = FEATURE_DIM,
    ) -> StreamingFeatures:
        """Same windowing with another audio -> step-features backend (e.g. an exported encoder)."""
        self = cls.__new__(cls)
        self._init(step_features, feature_dim, version, batch_frames, left_context_s, right_context_s, fps)
        return self

    def _init(
        self,
        step_features: StepFunction,
        feature_dim: int,
        version: Version,
        batch_frames: int,
        left_context_s: float | None,
        right_context_s: float,
        fps: int,
    ) -> None:
        check_version(version)
        _check_fps(fps)
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        if (left_context_s is not None and left_context_s < 0) or right_context_s < 0:
            raise ValueError("context lengths must be >= 0")
        self.version = version
        self.batch_frames = batch_frames
        self.fps = fps
        self.left_steps = None if left_context_s is None else round(left_context_s * STEPS_PER_SECOND)
        self.right_steps = round(right_context_s * STEPS_PER_SECOND)
        self._step_features = step_features
        self._feature_dim = feature_dim

    @property
    def steps_per_second(self) -> int:
        return STEPS_PER_SECOND

    @property
    def lookahead_ms(self) -> float:
        """Audio needed beyond the end of the batch's own audio before its chunks can be made (worst case)."""
        worst = max(self.window(f0)[1] - (f0 + self.batch_frames) * SAMPLE_RATE / self.fps for f0 in range(self.fps))
        return 1000.0 * worst / SAMPLE_RATE

    def _needed_steps(self, first_frame: int) -> tuple[int, int]:
        indices = frame_step_indices(
            np.array([first_frame, first_frame + self.batch_frames - 1]), self.version, self.fps
        )
        return max(0, int(indices.min())), int(indices.max()) + 1

    def window(self, first_frame: int) -> tuple[int, int]:
        """Utterance samples [start, end) that ``chunks(.., first_frame)`` needs at least (end not clipped to the
        utterance); more audio after `end` is used up to ``span_end``."""
        if first_frame < 0:
            raise ValueError(f"first_frame must be >= 0, got {first_frame}")
        lo, hi = self._needed_steps(first_frame)
        start = lo // SEGMENT_STEPS * SEGMENT_STEPS
        if self.left_steps is not None:
            start = max(start, lo - self.left_steps)
        return start * SAMPLES_PER_STEP, (hi + self.right_steps) * SAMPLES_PER_STEP

    def span_end(self, first_frame: int) -> int:
        """The utterance sample up to which audio can still change the chunks: the end of the last segment read."""
        hi = self._needed_steps(first_frame)[1]
        return ((hi - 1) // SEGMENT_STEPS + 1) * SEGMENT_STEPS * SAMPLES_PER_STEP

    def chunks(self, audio: np.ndarray, first_frame: int, final: bool = False) -> np.ndarray:
        """Chunks (b, 50, 384) of video frames first_frame .. first_frame+b-1 from utterance audio that starts at
        ``window(first_frame)[0]``.

        The audio covers the whole window and may go on (what is past ``span_end`` is not used). ``final=True``
        says the utterance ends where the audio does: it may then be shorter than the window, the end padding /
        clamping applies and b may be less than batch_frames (0 past the end); otherwise b == batch_frames.
        """
        audio = _as_audio(audio)
        start, end = self.window(first_frame)
        if len(audio) < end - start and not final:
            raise ValueError(
                f"frames {first_frame}.. need samples [{start}, {end}) ({end - start} samples, "
                f"or fewer when the utterance ends there), got {len(audio)}"
            )
        count = self.batch_frames
        n_steps = None
        if final:
            n_samples = start + len(audio)
            count = max(0, min(count, num_frames(n_samples, self.version, self.fps) - first_frame))
            n_steps = num_steps(n_samples, self.version)
        if count == 0:
            return np.zeros((0, TOKENS_PER_CHUNK, self._feature_dim), np.float32)
        steps = self._step_features(audio[: self.span_end(first_frame) - start], start // SAMPLES_PER_STEP)
        indices = frame_step_indices(np.arange(first_frame, first_frame + count), self.version, self.fps)
        return gather_chunks(steps, indices, start // SAMPLES_PER_STEP, n_steps, self.version)
