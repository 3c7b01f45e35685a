"""Check the streaming MuseTalk path against the offline official one on your own weights, avatar and audio.

    python -m bench.parity --avatar ID --audio speech.wav [--version v15|v1] [--pace ahead|realtime]

The same audio is rendered twice with the same models and avatar:
- streaming: through a session (the audio framer, the inference worker, the musetalk engine's windowed whisper
  features, UNet, VAE and paste-back), the audio pushed all at once before playback (``ahead``: as a TTS voice that
  synthesises faster than it plays) or 40 ms per tick as it plays (``realtime``);
- offline: the official computation on the whole clip (whisper over its 30 s segments, the official per-frame
  chunks, UNet and VAE in batches, the same paste-back).
and per video frame the PSNR between the two is printed over the pixels the face is pasted into (inf: identical),
with the relative L2 distance between the audio features the UNet got on either path.
Frames the streaming path showed as the avatar's own picture (silent batches skip the model) are marked and left
out of the summary. The streaming path takes ``floor(n / 16000 * 25)`` frames from the model, as the official one.

This is a tool at the top of the stack (it drives a session), so it lives with the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.items import Source
from core.units import SAMPLE_RATE
from engines.base import Engine
from musetalk.audio_features import frame_chunks, whisper_steps
from musetalk.avatar import DEFAULT_AVATARS_DIR, Avatar, load_avatar
from musetalk.avatar_prepare import DEFAULT_MODELS_DIR
from musetalk.cli import ArgumentParser
from musetalk.config import VERSIONS

WAIT_S = 120.0  # the longest a stepped tick waits for its frame (a slow CPU renders a batch in seconds)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when they are equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def offline_frames(engine, avatar: Avatar, audio: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The official whole-clip path: features of the whole utterance, UNet + VAE in batches, paste-back.
    Returns the frames and the per-frame features (N, 50, 384)."""
    from musetalk.inference import infer_faces

    steps = whisper_steps(audio, engine.encoder, engine.version)
    chunks = frame_chunks(steps, len(audio), engine.version)
    frames = []
    for start in range(0, len(chunks), engine.batch_size):
        indices = [avatar.cycle_index(i) for i in range(start, min(start + engine.batch_size, len(chunks)))]
        faces = infer_faces(engine.models, chunks[start : start + len(indices)], engine.bind(avatar).latents[indices])
        frames += [avatar.blend_plan(i).apply(np.asarray(avatar.frames[i]), f) for i, f in zip(indices, faces)]
    return frames, chunks


async def streamed_frames(
    engine: Engine, avatar: Avatar, audio: np.ndarray, realtime: bool
) -> list[tuple[np.ndarray, Source]]:
    """(frame, source) of every tick of the utterance, through a stepped session; frame i is utterance frame i.
    (The engine's ``features_observer`` sees the features of each batch on the way.)"""
    from core.events import Event, EventKind
    from pipeline.session import Session, SessionOptions

    session = Session("parity", avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
    await session.start()
    start_mark, ticks = Event(EventKind.SENTENCE_START, "parity"), math.ceil(len(audio) / 640)
    try:
        outs, piece = [], 640 if realtime else SAMPLE_RATE
        for start in range(0, len(audio), piece):
            await session.push_audio(audio[start : start + piece], events=[start_mark] if start == 0 else None)
            if realtime:
                outs.append(session.step(wait_for_video=WAIT_S))
        await session.end_speech()
        outs += [session.step(wait_for_video=WAIT_S) for _ in range(engine.lead_ticks + ticks + 2)]
    finally:
        await session.close()
    first = next(i for i, o in enumerate(outs) if start_mark in o.events)  # it rides on the utterance's first tick
    return [(o.frame, o.source) for o in outs[first : first + ticks]]


def compare(
    streamed: list[tuple[np.ndarray, Source]],
    offline: list[np.ndarray],
    avatar: Avatar,
    streamed_features: dict[int, np.ndarray],
    offline_features: np.ndarray,
) -> list[dict]:
    """Per frame: PSNR over the pasted face region, and the relative L2 of the streamed features against the
    official ones (NaN where the streaming path did not run the model)."""
    rows = []
    for i, (reference, (frame, source)) in enumerate(zip(offline, streamed)):
        region = avatar.blend_plan(avatar.cycle_index(i)).dst
        feature = streamed_features.get(i)
        rel = (
            math.nan
            if feature is None
            else float(np.linalg.norm(feature - offline_features[i]) / np.linalg.norm(offline_features[i]))
        )
        rows.append(
            {
                "frame": i,
                "psnr_db": psnr(frame[region], reference[region]),
                "features_rel_l2": rel,
                "streamed": {Source.SPEECH: "model", Source.IDLE: "own frame (silent)"}.get(source, source),
            }
        )
    return rows


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m bench.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--avatar", required=True, help="prepared avatar id")
    p.add_argument("--audio", type=Path, required=True, help="speech: any file PyAV reads (resampled to 16 kHz mono)")
    p.add_argument("--version", choices=VERSIONS, default="v15", help="MuseTalk weights version")
    p.add_argument("--models_dir", type=Path, default=DEFAULT_MODELS_DIR)
    p.add_argument("--avatars_dir", type=Path, default=DEFAULT_AVATARS_DIR)
    p.add_argument("--batch_size", type=int, default=None, help="frames per batch (default: the engine's)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--pace",
        choices=("ahead", "realtime"),
        default="ahead",
        help="streamed audio all before playback (a TTS faster than real time) or as it plays",
    )
    p.add_argument("--csv", type=Path, default=None, help="also write the per-frame table here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from engines.musetalk_engine import MuseTalkEngine
    from pipeline.actions import decode_audio

    audio = decode_audio(args.audio)
    if audio is None or len(audio) < 640:
        print(f"error: {args.audio} holds no audio (or less than 40 ms)", file=sys.stderr)
        return 1
    audio = np.clip(audio, -1.0, 1.0)  # as the session takes it
    avatar = load_avatar(args.avatar, args.avatars_dir)
    engine = MuseTalkEngine(args.models_dir, args.version, args.batch_size, args.device)
    offline, offline_features = offline_frames(engine, avatar, audio)
    streamed_features: dict[int, np.ndarray] = {}
    engine.features_observer = lambda first, chunks: streamed_features.update(enumerate(chunks, first))
    streamed = asyncio.run(streamed_frames(engine, avatar, audio, args.pace == "realtime"))
    rows = compare(streamed, offline, avatar, streamed_features, offline_features)
    print(f"{'frame':>6} {'PSNR dB':>8} {'features':>9}  streamed")
    for r in rows:
        print(f"{r['frame']:>6} {r['psnr_db']:>8.2f} {r['features_rel_l2']:>9.2e}  {r['streamed']}")
    model = [r for r in rows if r["streamed"] == "model"]
    values, rel = [r["psnr_db"] for r in model], [r["features_rel_l2"] for r in model]
    print(
        f"{len(audio) / SAMPLE_RATE:.2f} s of audio: {len(offline)} frames officially (floor(n / 16000 * 25)), "
        f"{len(streamed)} ticks streamed ({args.pace}); {len(model)} from the model: PSNR min "
        f"{min(values, default=math.nan):.2f} dB, median {float(np.median(values)) if model else math.nan:.2f} dB, "
        f"{sum(math.isinf(x) for x in values)} identical; features relative L2 max "
        f"{max(rel, default=math.nan):.2e}, median {float(np.median(rel)) if model else math.nan:.2e}"
    )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["frame", "psnr_db", "features_rel_l2", "streamed"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
