"""MuseTalk on one GPU: the real engine (batcher, per-size graphs), per batch size and with N sessions.

    .venv/bin/python -m bench.gpu                      # CUDA: full-size models, fp16, graphs (scripts/gpu-bench.sh)
    .venv/bin/python -m bench.gpu --cpu-check          # this CPU: tiny models, fp32; checks the script, and
                                                       # compares the batcher with the old lock (--compare-lock)

The engine is built from models in memory with random weights (speed does not depend on the values; no weights
on disk needed): the full-size UNet / VAE / whisper-tiny encoder on CUDA, the reduced-width ones of
``musetalk.tiny`` with ``--config tiny``. Two parts, each row printed as soon as it is measured:

1. Per batch size B (the batcher's fixed sizes): the faces model split into the UNet pass (PE + UNet at t=0) and the
   VAE decode, timed with CUDA events on a GPU (wall time on a CPU), and the faces call's wall time (incl. the
   copy of the faces to the host), p50 / p99 over --repeats calls; the encoder with min(B, 16) windows (wall);
   the peak device memory of the B row.
2. N sessions (--sessions, default 1,4,8,12,16) speaking continuously through real sessions, workers and the
   engine's batcher (``bench.sessions``): aggregate frames/s shown and rendered, late frames, late ticks, and each
   session's pipeline latency (its first speech sample in -> its lip frame out) and lead. With --compare-lock the
   same N run again with the old lock-serialised runner, in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from bench.common import machine
from bench.sessions import (
    GAP_S,
    SENTENCE_S,
    SESSIONS_HEADER,
    Cost,
    LockRunner,
    SimulatedEncoder,
    SimulatedFaces,
    run_sessions,
    run_throughput,
)
from engines.batcher import Batcher, BatchModel, Job, JobRunner
from engines.musetalk_batch import ENCODER, FACE_SIZES, FACES, GRAPH_MODES, FacesModel
from engines.musetalk_engine import MuseTalkEngine
from musetalk.avatar import Avatar
from musetalk.config import unet_config, unet_tiny_config, vae_config, vae_tiny_config
from musetalk.models import MuseTalkModels, PositionalEncoding, build_unet, build_vae
from musetalk.whisper import build_encoder, moved, whisper_tiny_config
from testing.probe import synthetic_avatar

CONFIGS = ("full", "tiny", "micro")
MICRO_WIDTH = 32  # the micro config's audio feature width (whisper d_model = the UNet's cross-attention width)
GRAPHS = ("auto", "none", *GRAPH_MODES)


def no_cuda_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " is a CPU-only build")
    return f"{build}, torch.cuda.is_available() is False"


def configs(config: str) -> tuple[dict, dict, WhisperConfig]:
    """UNet, VAE and whisper configs: ``full`` (the real sizes), ``tiny`` (``musetalk.tiny``: reduced widths,
    whisper-tiny's width with a small FFN) or ``micro``: every layer of the real architectures (so as many kernels
    and as much host work per call) at widths of 8 to 32, so that on a CPU a call costs mostly its host work, as
    the full model's small batches do on a GPU."""
    whisper = whisper_tiny_config()
    if config == "full":
        return unet_config(), vae_config(), whisper
    if config == "tiny":
        whisper.encoder_ffn_dim = 128
        return unet_tiny_config(), vae_tiny_config(), whisper
    whisper.d_model, whisper.encoder_ffn_dim, whisper.encoder_attention_heads = MICRO_WIDTH, MICRO_WIDTH, 2
    unet = dict(
        unet_config(),
        block_out_channels=[8, 8, 8, 8],
        norm_num_groups=4,
        attention_head_dim=2,
        cross_attention_dim=MICRO_WIDTH,
    )
    return unet, dict(vae_config(), block_out_channels=[8, 8, 8, 8], norm_num_groups=4), whisper


def build_models(config: str, device: torch.device) -> tuple[MuseTalkModels, WhisperEncoder]:
    """Random weights of `config`'s architectures: fp16 on CUDA, fp32 on a CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet_cfg, vae_cfg, whisper = configs(config)
    torch.manual_seed(0)
    with device:  # initialised on the device: seconds instead of ~15 s of CPU init for 0.9 B parameters
        unet = build_unet(unet_cfg).to(dtype).eval().requires_grad_(False)
        vae = build_vae(vae_cfg).to(dtype).eval().requires_grad_(False)
        encoder = moved(build_encoder(whisper), dtype=dtype).eval()
        pe = PositionalEncoding(whisper.d_model).to(dtype).eval()
    return MuseTalkModels(unet, vae, pe, device, dtype, "v15"), encoder


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def batch_row(engine: MuseTalkEngine, batch: int, repeats: int) -> str:
    """One row of part 1: jobs of exactly one batch each through the engine's batcher (its owner thread runs the
    models and their graphs; the faces model records its UNet / VAE split there); wall times from submit to
    result, so they include the hand-over to that thread (~0.1 ms)."""
    faces = engine.batch_models[FACES]
    assert isinstance(faces, FacesModel)  # the engine's own, not simulated: part 1 reads its timings
    run = engine.runner
    cuda = engine.models.device.type == "cuda"
    rng = np.random.default_rng(batch)
    chunks = rng.standard_normal((batch, 50, engine.encoder.config.d_model)).astype(np.float32)
    latents = rng.standard_normal((batch, 8, 32, 32)).astype(np.float32)
    windows = min(batch, 16)
    mels = (rng.standard_normal((windows, 80, 3000)) * 0.1).astype(np.float32)
    enc_inputs = (mels, np.zeros(windows, np.int64), np.full(windows, 16, np.int64))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # builds the graph of this size if the warm-up did not
        run.submit(Job(FACES, (chunks, latents), 0.0)).result()
        run.submit(Job(ENCODER, enc_inputs, 0.0)).result()
    faces.timings, wall, enc_wall = [], [], []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            run.submit(Job(FACES, (chunks, latents), 0.0)).result()  # once the faces are on the host
            wall.append(time.perf_counter() - started)
            started = time.perf_counter()
            run.submit(Job(ENCODER, enc_inputs, 0.0)).result()
            enc_wall.append(time.perf_counter() - started)
        unet = [u for _, u, _ in faces.timings]
        vae = [v for _, _, v in faces.timings]
    finally:
        faces.timings = None
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:7.0f}" if cuda else "      -"
    (u50, u99), (v50, v99), (w50, w99), (e50, e99) = (
        (1000 * a, 1000 * b) for a, b in map(percentiles, (unet, vae, wall, enc_wall))
    )
    return (
        f"| {batch:2d} | {u50:7.2f} | {u99:7.2f} | {v50:7.2f} | {v99:7.2f} | {w50:7.2f} | {w99:7.2f} | "
        f"{1000 * batch / w50:7.1f} | {windows:2d} | {e50:7.2f} | {e99:7.2f} | {peak} |"
    )


BATCH_HEADER = (
    "|  B | UNet p50 ms | p99 | VAE decode p50 ms | p99 | faces call p50 ms | p99 | faces/s | windows "
    "| encoder p50 ms | p99 | peak MiB |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cpu-check",
        action="store_true",
        help="run on this CPU (fp32; --config micro by default): checks the script, and with "
        "--compare-lock measures the batcher against the lock; says nothing about a GPU",
    )
    parser.add_argument(
        "--config",
        choices=CONFIGS,
        default=None,
        help="model sizes (default: full on CUDA, micro on a CPU; see configs())",
    )
    parser.add_argument(
        "--graphs", choices=GRAPHS, default="auto", help="per-size graphs: auto = cudagraphs on CUDA, none on a CPU"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="frames per session batch (engine default)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per batch size")
    parser.add_argument("--sessions", default="1,4,8,12,16", help="part 2: N, comma-separated ('' skips part 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per N")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of speech before measuring, per N")
    parser.add_argument(
        "--compare-lock",
        action="store_true",
        help="part 3: throughput of the same N sessions through the batcher and the old lock",
    )
    parser.add_argument("--lock-sessions", default="4", help="part 3: N, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="part 3: alternate rounds per runner")
    parser.add_argument("--ahead-seconds", type=float, default=4.0, help="part 3: speech per session")
    parser.add_argument("--skip-batches", action="store_true", help="no part 1")
    parser.add_argument(
        "--simulate",
        metavar="FACES,ENCODER",
        default=None,
        help="parts 2 and 3 with the models replaced by waits of a device's cost on paper, each "
        "CALL_MS+ROW_MS (host work per call + compute per row), e.g. 1+1.6,0.5+0.08; the "
        "sessions' own CPU work (log-mel, compositing, workers, batcher) is real. Skips part 1",
    )
    parser.add_argument(
        "--simulate-lock",
        metavar="FACES,ENCODER",
        default=None,
        help="part 3's lock baseline at these costs (default: --simulate's), e.g. eager's host work",
    )
    args = parser.parse_args(argv)
    try:
        args.simulate, args.simulate_lock = (
            None if text is None else tuple(map(Cost.parse, text.split(",")))
            for text in (args.simulate, args.simulate_lock or args.simulate)
        )
    except ValueError:
        parser.error("--simulate / --simulate-lock take FACES,ENCODER costs, each CALL_MS+ROW_MS")
    if args.simulate is not None and (len(args.simulate) != 2 or len(args.simulate_lock) != 2):
        parser.error("--simulate / --simulate-lock take two costs: FACES,ENCODER")
    args.skip_batches |= args.simulate is not None
    try:
        args.sessions, args.lock_sessions = (
            [int(n) for n in text.split(",") if n.strip()] for text in (args.sessions, args.lock_sessions)
        )
    except ValueError:
        parser.error("--sessions and --lock-sessions take comma-separated integers")
    counts = args.sessions + args.lock_sessions + [args.repeats, args.rounds]
    if min(counts, default=1) < 1 or min(args.seconds, args.ahead_seconds) <= 0:
        parser.error("--sessions, --repeats and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reason = no_cuda_reason()
    if reason is not None and not args.cpu_check:
        print(
            f"no CUDA device: {reason}; this benchmark needs a GPU (CPU figures: python -m bench.stages; "
            f"--cpu-check runs this script on the CPU to check it)"
        )
        return
    device = torch.device("cpu" if args.cpu_check else "cuda")
    config = args.config or ("full" if device.type == "cuda" else "micro")
    graphs = {"auto": "auto", "none": None}.get(args.graphs, args.graphs)
    print(f"machine: {machine()}", flush=True)
    if args.cpu_check:
        print("CPU CHECK RUN: fp32 on the CPU; these figures say nothing about a GPU")
    torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: let cuDNN pick its fastest convolutions
    started = time.perf_counter()
    loaded = build_models(config, device)
    max_sessions = max(args.sessions + args.lock_sessions, default=1)
    engine = MuseTalkEngine(
        version="v15",
        batch_size=args.batch_size,
        loaded=loaded,
        graph_mode=None if args.simulate else graphs,
        max_sessions=max_sessions,
        runner=simulated(Batcher, args.simulate, loaded[1].config.d_model),
    )
    where = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if device.type == "cuda" else "CPU"
    if args.simulate:
        print(
            f"SIMULATED DEVICE: faces {args.simulate[0]}, encoder {args.simulate[1]} (batcher); lock baseline "
            f"faces {args.simulate_lock[0]}, encoder {args.simulate_lock[1]}: figures on paper"
        )
    print(
        f"torch {torch.__version__}, {where}, {engine.models.dtype}; random weights of the {config} configs; "
        f"graphs: {engine.graph_mode or 'none'}, channels_last: {engine.channels_last}; session batch "
        f"{engine.batch_size}, faces batches up to {max(engine.sizes[FACES])} ("
        f"{'padded to ' + str(engine.sizes[FACES]) if engine.graph_mode else 'no padding without graphs'}); "
        f"engine built and warmed up in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    try:
        run_parts(engine, loaded, args)
        assert isinstance(engine.runner, Batcher)  # simulated(Batcher, ...) builds one too
        stats = engine.runner.stats
        print(
            f"\nbatcher: {stats.batches} batches, {stats.rows} rows + {stats.padded_rows} padding, "
            f"{stats.late_jobs} late jobs, {stats.stale_jobs} stale; process peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB",
            flush=True,
        )
    finally:
        engine.close()


def run_parts(engine: MuseTalkEngine, loaded: tuple[MuseTalkModels, WhisperEncoder], args: argparse.Namespace) -> None:
    if not args.skip_batches:
        cuda = engine.models.device.type == "cuda"
        print(
            "\n1. per batch size (UNet / VAE: "
            + ("CUDA events" if cuda else "wall time")
            + "; faces call and encoder: wall time of a one-batch job, submit to result, incl. the copy to the host)"
        )
        print(BATCH_HEADER, flush=True)
        for batch in (s for s in FACE_SIZES if s <= max(engine.sizes[FACES])):
            print(batch_row(engine, batch, args.repeats), flush=True)
    if not args.sessions and not args.compare_lock:
        return
    # An avatar in memory (no face detection, nothing on disk); compositing costs little whatever the avatar.
    avatar = synthetic_avatar()
    if args.sessions:
        print(
            f"\n2. N real-time sessions speaking (sentences of {SENTENCE_S:g} s streamed 40 ms each 40 ms, "
            f"{GAP_S:g} s apart; {args.warmup:g} s warm-up, {args.seconds:g} s measured per row); engine's batcher"
        )
        print(SESSIONS_HEADER, flush=True)
        rows = {}
        for n in args.sessions:
            rows[n] = asyncio.run(run_sessions(engine, avatar, n, args.warmup, args.seconds))
            print(rows[n].text(), flush=True)
    if args.compare_lock and args.lock_sessions:
        compare_lock(engine, loaded, avatar, args)


def simulated(kind: type, costs: tuple[Cost, Cost] | None, width: int):
    """A runner factory for the engine whose faces and encoder models wait `costs` (None: the engine's default)."""
    if costs is None:
        return None

    def build(models: dict[str, BatchModel], sizes: dict[str, tuple[int, ...]]) -> JobRunner:
        fakes = {**models, FACES: SimulatedFaces(costs[0]), ENCODER: SimulatedEncoder(costs[1], width)}
        return Batcher(fakes, sizes, name="musetalk-batcher").start() if kind is Batcher else kind(fakes, sizes)

    return build


def compare_lock(
    engine: MuseTalkEngine, loaded: tuple[MuseTalkModels, WhisperEncoder], avatar: Avatar, args: argparse.Namespace
) -> None:
    """Part 3: throughput of the same N stepped sessions (speech given ahead, driven as fast as they render) through
    the engine's batcher and through the old way (eager models, each worker calling them under one lock),
    alternately, --rounds times each: medians."""
    locked = MuseTalkEngine(
        version="v15",
        batch_size=engine.batch_size,
        loaded=loaded,
        graph_mode=None,
        runner=simulated(LockRunner, args.simulate_lock, loaded[1].config.d_model) or LockRunner,
    )
    try:
        print(
            f"\n3. throughput, batcher vs the old way (eager, each worker calling the models under one lock): "
            f"stepped sessions, {args.ahead_seconds:g} s of speech each given ahead, {args.rounds} alternate rounds"
        )
        print(
            "|  N | batcher frames/s (rounds) | lock frames/s (rounds) | batcher / lock |\n|---:|---|---|---:|",
            flush=True,
        )
        for n in args.lock_sessions:
            runs: dict[str, list[float]] = {"batcher": [], "lock": []}
            for _ in range(args.rounds):
                for name, e in (("batcher", engine), ("lock", locked)):
                    runs[name].append(asyncio.run(run_throughput(e, avatar, n, args.ahead_seconds)))
            b, lk = (float(np.median(runs[k])) for k in ("batcher", "lock"))
            print(
                f"| {n:2d} | {b:.1f} ({', '.join(f'{x:.1f}' for x in runs['batcher'])}) | {lk:.1f} "
                f"({', '.join(f'{x:.1f}' for x in runs['lock'])}) | {b / lk:.2f}x |",
                flush=True,
            )
    finally:
        locked.close()


if __name__ == "__main__":
    main()
