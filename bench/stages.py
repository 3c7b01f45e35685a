"""Per-frame cost of each stage at 512x512 on this machine, medians over repeats.

    .venv/bin/python -m bench.stages [--no_full] [--threads 2]

a. compositor: BlendPlan.apply on the demo avatar (and on a synthetic large face box, an upper bound), and the
   lite engine's face render (LiteRenderer.face)
b. VP8 encode of a 512x512 frame with aiortc's own encoder (VideoFrame.from_ndarray separately)
   target: compositor + VP8 encode <= 12 ms per frame
c. whisper features: StreamingFeatures, whisper-tiny dims, random init, B=8 window (per call, per 20 ms step);
   the v1.5 log-mel of one 30 s encoder input: every STFT frame vs only those reaching the audio (placed_log_mel)
d. MuseTalk UNet + VAE decode (infer_faces): reduced (tiny) config at B=1,4,8 and, unless --no_full, one B=1
   batch of the full-size config (random weights, CPU fp32: a one-off, ~5 s per frame)
"""

from __future__ import annotations

import argparse
import fractions
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame

from bench.common import machine
from engines.lite import LiteBinding, LiteEngine, LiteRenderer
from musetalk.audio_features import (
    StreamingFeatures,
    log_mel,
    normalise_log_mel,
    placed_log_mel,
)
from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import ensure_demo
from musetalk.blending import BlendPlan, prepare_blend
from musetalk.cli import ArgumentParser
from musetalk.config import unet_config, vae_config
from musetalk.inference import AUDIO_TOKENS, LATENT_CHANNELS, infer_faces
from musetalk.models import (
    FEATURE_DIM,
    MuseTalkModels,
    PositionalEncoding,
    build_unet,
    build_vae,
    load_models,
)
from musetalk.tiny import write_tiny_layout
from musetalk.whisper import build_encoder, whisper_tiny_config

FRAME_MS = 40.0  # one video frame at 25 fps
STEP_MS = 20.0  # one whisper step = one audio frame
TARGET_COMPOSE_ENCODE_MS = 12.0
OPENINGS = np.linspace(0.0, 1.0, 11)  # lite mouth openings cycled through, so frames differ like speech


@dataclass
class Row:
    stage: str
    calls_ms: list[float]
    units_per_call: int = 1  # frames (or steps) one call produces
    unit: str = "frame"

    @property
    def median(self) -> float:
        return float(np.median(self.calls_ms))

    @property
    def per_unit(self) -> float:
        return self.median / self.units_per_call

    def cells(self) -> list[str]:
        budget = FRAME_MS if self.unit == "frame" else STEP_MS
        return [
            self.stage,
            f"{self.median:.2f}",
            f"{np.percentile(self.calls_ms, 90):.2f}",
            str(len(self.calls_ms)),
            f"{self.units_per_call} {self.unit}",
            f"{self.per_unit:.2f}",
            f"{self.per_unit / budget:.3f}",
        ]


COLUMNS = ["stage", "median ms/call", "p90 ms", "n", "per call", "ms per unit", "x budget"]


def table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]

    def line(c: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join(
        [
            line(cells[0]),
            rule,
            *map(line, cells[1:]),
            "(x budget: ms per unit / 40 ms per frame or 20 ms per step; above 1 cannot keep real time on one core)",
        ]
    )


Call = Callable[[int], object]  # fn(i): the i-th call of a case


def interleaved(calls: dict[str, Call], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Wall ms per call of each case, the cases taking turns round by round.

    Other processes share this machine's cores; taking turns makes a burst of their load hit every case alike,
    so the ratios between cases hold even when the absolute figures move.
    """
    for fn in calls.values():
        for i in range(warmup):
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeats):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn(warmup + i)
            times[name].append(1000.0 * (time.perf_counter() - started))
    return times


# ------------------------------------------------------------------------------------- a + b: frame path


def frame_path_calls(avatar: Avatar) -> dict[str, Call]:
    """Face render, paste-back and VP8 encode of moving-mouth frames, one frame per call."""
    binding = LiteEngine().bind(avatar)
    assert isinstance(binding, LiteBinding)
    renderer = LiteRenderer(binding)
    plan = avatar.blend_plan(0)
    frame = np.asarray(avatar.frames[0])
    faces = [renderer.face(0, float(o)) for o in OPENINGS]
    composed = [plan.apply(frame, f) for f in faces]
    # The demo's face is small in its frame; a face box filling 3/4 of the frame bounds the cost from above.
    h, w = frame.shape[:2]
    big_box = (w // 8, h // 8, w // 8 + 3 * w // 4, h // 8 + 3 * h // 4)
    big = prepare_blend(big_box, big_box, np.full((3 * h // 4, 3 * w // 4), 255, np.uint8), frame.shape)

    def compositor(p: BlendPlan) -> Call:
        return lambda i: p.apply(frame, faces[i % len(faces)])

    def label(name: str, p: BlendPlan) -> str:
        ys, xs = p.dst
        return f"compositor, {name} (blend {xs.stop - xs.start}x{ys.stop - ys.start} of {w}x{h})"

    def video_frame(i: int) -> VideoFrame:
        vf = VideoFrame.from_ndarray(composed[i % len(composed)], format="bgr24")
        vf.pts, vf.time_base = i * 3600, fractions.Fraction(1, 90000)
        return vf

    def vp8() -> Callable[[VideoFrame], object]:
        return get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)).encode

    # Two encoders, each fed consecutive frames as an aiortc sender feeds it (one per tick, rising pts).
    encode_only, encode_both = vp8(), vp8()
    prepared = [video_frame(i) for i in range(len(composed))]

    def encode_prepared(i: int) -> object:
        vf = prepared[i % len(prepared)]
        vf.pts = i * 3600
        return encode_only(vf)

    return {
        "lite face render (LiteRenderer.face, 256x256)": lambda i: renderer.face(0, float(OPENINGS[i % len(OPENINGS)])),
        label("demo avatar", plan): compositor(plan),
        label("synthetic 3/4-frame face box", big): compositor(big),
        "VideoFrame.from_ndarray(bgr24)": video_frame,
        "VP8 encode (aiortc Vp8Encoder.encode, incl. yuv420p)": encode_prepared,
        "from_ndarray + VP8 encode": lambda i: encode_both(video_frame(i)),
    }


# ------------------------------------------------------------------------------------- c: whisper features


def whisper_row(repeats: int, batch: int = 8) -> Row:
    torch.manual_seed(0)
    feats = StreamingFeatures(build_encoder(whisper_tiny_config()), "v15", batch_frames=batch)
    first = 100  # mid-utterance: a full left context, no edge padding
    start, end = feats.window(first)
    audio = (0.1 * np.random.default_rng(0).standard_normal(end - start)).astype(np.float32)

    def call(_: int) -> None:
        with torch.inference_mode():
            feats.chunks(audio, first)

    steps = 2 * batch  # each video frame carries two 20 ms audio frames
    name = f"whisper, StreamingFeatures B={batch} ({(end - start) / 16:.0f} ms window)"
    return Row(name, interleaved({name: call}, repeats, warmup=1)[name], steps, "step")


MEL_AUDIO_S = [0.5, 2.3, 10.0]


def mel_rows(repeats: int) -> list[Row]:
    """A v1.5 encoder input's log-mel: its audio from the start of the 30 s input, zeros after (per call = one
    B=8 batch's input, 16 steps). The full computation costs the same whatever the audio's length."""
    rng = np.random.default_rng(0)
    audio = {s: (0.1 * rng.standard_normal(round(s * 16000))).astype(np.float32) for s in MEL_AUDIO_S}
    placed = np.zeros(30 * 16000, np.float32)
    placed[: len(audio[2.3])] = audio[2.3]
    calls: dict[str, Call] = {
        "v1.5 log-mel, full 30 s (every STFT frame)": lambda _: normalise_log_mel(log_mel(placed))
    }

    def placed_call(a: np.ndarray) -> Call:
        return lambda _: placed_log_mel(a)

    calls |= {f"v1.5 log-mel, placed_log_mel, {s:g} s of audio": placed_call(a) for s, a in audio.items()}
    return [Row(name, t, 16, "step") for name, t in interleaved(calls, repeats, warmup=2).items()]


# ------------------------------------------------------------------------------------- d: UNet + VAE decode


def infer_call(models: MuseTalkModels, batch: int) -> Call:
    gen = torch.Generator().manual_seed(batch)
    feats = torch.randn(batch, AUDIO_TOKENS, FEATURE_DIM, generator=gen)
    latents = torch.randn(batch, LATENT_CHANNELS, 32, 32, generator=gen)
    return lambda _: infer_faces(models, feats, latents)


def infer_label(label: str, batch: int) -> str:
    return f"{label} UNet + VAE decode (infer_faces) B={batch}"


def tiny_rows(batches: list[int], repeats: int) -> list[Row]:
    """The first calls of each new input shape are slow (seconds: oneDNN builds its kernels per shape), hence
    three warm-up calls per batch size."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_layout(Path(tmp), whisper=False)
        models = load_models(Path(tmp), "v15", device="cpu")
    times = interleaved({infer_label("tiny", b): infer_call(models, b) for b in batches}, repeats, warmup=3)
    return [Row(name, t, b, "frame") for (name, t), b in zip(times.items(), batches)]


def full_row(repeats: int) -> Row:
    torch.manual_seed(0)
    started = time.perf_counter()
    unet = build_unet(unet_config()).eval().requires_grad_(False)
    vae = build_vae(vae_config()).eval().requires_grad_(False)
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (unet, vae)]
    print(
        f"   full-size UNet + VAE built with random weights in {time.perf_counter() - started:.1f} s "
        f"({params[0]:.0f}M + {params[1]:.0f}M parameters)",
        flush=True,
    )
    models = MuseTalkModels(unet, vae, PositionalEncoding().eval(), torch.device("cpu"), torch.float32, "v15")
    name = infer_label("FULL (random weights, CPU fp32)", 1)
    return Row(name, interleaved({name: infer_call(models, 1)}, repeats, warmup=1)[name])


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls for the per-frame stages")
    parser.add_argument("--model_repeats", type=int, default=10, help="timed calls for whisper and the tiny model")
    parser.add_argument("--full_repeats", type=int, default=2, help="timed B=1 calls of the full model")
    parser.add_argument("--no_full", action="store_true", help="skip the full-size model (saves ~30 s and 4 GB)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, fp32 on CPU; "
        f"OpenCV/libvpx at their defaults",
        flush=True,
    )
    ensure_demo(progress=False)
    avatar = load_avatar("demo")

    rows = [Row(name, t) for name, t in interleaved(frame_path_calls(avatar), args.repeats, warmup=10).items()]
    render, compose, compose_big, encode = rows[0].per_unit, rows[1].per_unit, rows[2].per_unit, rows[-1].per_unit
    rows.append(whisper_row(args.model_repeats))
    rows += mel_rows(args.repeats)
    rows += tiny_rows([1, 4, 8], args.model_repeats)
    if not args.no_full:
        print("   building the full-size model ...", flush=True)
        rows.append(full_row(args.full_repeats))

    print(table(rows))

    total = compose + encode
    print(
        f"\ncompositor + VP8 encode (incl. from_ndarray): {compose:.2f} + {encode:.2f} = {total:.2f} ms per frame "
        f"= {total / TARGET_COMPOSE_ENCODE_MS:.2f}x the {TARGET_COMPOSE_ENCODE_MS:g} ms target "
        f"({'met' if total <= TARGET_COMPOSE_ENCODE_MS else 'MISSED'}); {total / FRAME_MS:.2f} of a 40 ms frame"
    )
    big_total = compose_big + encode
    print(
        f"  with the 3/4-frame face box: {compose_big:.2f} + {encode:.2f} = {big_total:.2f} ms "
        f"= {big_total / TARGET_COMPOSE_ENCODE_MS:.2f}x the target"
    )
    print(
        f"lite frame path (face render + compositor + VP8): {render + total:.2f} ms per frame "
        f"= {(render + total) / FRAME_MS:.2f} of one core at 25 fps -> ~{FRAME_MS / (render + total):.1f} streams "
        f"per core before RTP/Opus/asyncio overhead"
    )
    whisper = next(r for r in rows if r.unit == "step")
    print(
        f"whisper features: {whisper.median:.1f} ms per B=8 call = {whisper.per_unit:.2f} ms per 20 ms step "
        f"({whisper.per_unit / STEP_MS:.2f}x real time; the encoder always runs a 30 s input)"
    )
    full_mel, *fast_mel = [r for r in rows if "log-mel" in r.stage]
    print(
        f"v1.5 log-mel of a 30 s input: {full_mel.median:.2f} ms computing every frame; "
        + ", ".join(
            f"{r.median:.2f} ms ({full_mel.median / r.median:.0f}x) for {s:g} s of audio"
            for s, r in zip(MEL_AUDIO_S, fast_mel)
        )
        + " computing the frames that reach it (bit-identical)"
    )
    tiny = [r for r in rows if r.stage.startswith("tiny")]
    print(
        "tiny UNet+VAE per frame: "
        + ", ".join(
            f"B={r.units_per_call}: {r.per_unit:.1f} ms ({r.per_unit / tiny[0].per_unit:.2f}x B=1)" for r in tiny
        )
    )
    if not args.no_full:
        full = rows[-1]
        print(
            f"FULL model B=1 (CPU fp32, random weights): {full.per_unit / 1000:.2f} s per frame = "
            f"{full.per_unit / FRAME_MS:.0f}x slower than 25 fps; {full.per_unit / tiny[0].per_unit:.0f}x the tiny "
            f"config"
        )


if __name__ == "__main__":
    main()
