"""MuseTalk full model on a CUDA GPU: fp16 UNet + VAE decode per batch, eager vs torch.compile vs CUDA graphs.

    .venv/bin/python -m bench.gpu [--models-dir models] [--batches 1,2,4,8,16,32,64] [--modes eager,compile,cudagraphs]
    .venv/bin/python -m bench.gpu --cpu-check   # the same code on this CPU, reduced-width models: checks the script

Loads the official weights from --models-dir when they are all there (musetalk.models.load_models), otherwise
builds the same architectures with random weights (speed does not depend on the values). Per batch size B and
mode it times musetalk.inference.infer_faces (positional encoding, UNet at t=0, VAE decode, copy of the faces to
the host as uint8 BGR) and, separately, the whisper features of the B frames (StreamingFeatures, eager).
Modes: eager; compile = torch.compile (default mode) of the UNet and the VAE decoder; cudagraphs =
torch.compile(mode="reduce-overhead"). Each shape is compiled on its own (dynamic=False).
Target to beat: 72 fps, LiveTalking's best published MuseTalk figure (RTX 4090, one session).
On a machine without CUDA it prints one line and exits 0. --cpu-check runs every step on the CPU in fp32 instead,
with the models under --models-dir or the reduced-width configs: its figures say nothing about a GPU, it shows
that the script (loading, each compile mode, the table) works before GPU time is spent on it.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import machine
from musetalk.audio_features import StreamingFeatures
from musetalk.config import (
    LATENT_SIZE,
    unet_config,
    unet_tiny_config,
    vae_config,
    vae_tiny_config,
)
from musetalk.inference import AUDIO_TOKENS, LATENT_CHANNELS, infer_faces
from musetalk.models import (
    FEATURE_DIM,
    MissingWeightsError,
    ModelPaths,
    MuseTalkModels,
    PositionalEncoding,
    build_unet,
    build_vae,
    load_models,
)
from musetalk.whisper import build_encoder, load_encoder, whisper_tiny_config

TARGET_FPS = 72.0
MODES = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead"}


def no_cuda_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " is a CPU-only build")
    return f"{build}, torch.cuda.is_available() is False"


# ------------------------------------------------------------------------------------------------- models

def bench_models(models_dir: Path, version: str, device: torch.device
                 ) -> tuple[MuseTalkModels, torch.nn.Module, str]:
    """(UNet/VAE/PE, whisper encoder, where the weights came from): fp16 on CUDA, fp32 on the CPU."""
    try:
        models = load_models(models_dir, version, device=device.type)
        encoder = load_encoder(ModelPaths(models_dir, version).whisper, version, models.device, models.dtype)
        return models, encoder, f"official {version} weights from {models_dir}"
    except MissingWeightsError as e:
        missing = f"{len(e.missing)} file(s) missing under {models_dir}"
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    size = "full-size" if cuda else "reduced-width"
    torch.manual_seed(0)
    with device:  # initialise on the GPU: seconds instead of ~15 s of CPU init for 0.9 B parameters
        unet = build_unet(unet_config() if cuda else unet_tiny_config()).to(dtype).eval().requires_grad_(False)
        vae = build_vae(vae_config() if cuda else vae_tiny_config()).to(dtype).eval().requires_grad_(False)
        encoder = build_encoder(whisper_tiny_config()).to(dtype)
    models = MuseTalkModels(unet, vae, PositionalEncoding().to(device, dtype).eval(), device, dtype, version)
    return models, encoder, f"random weights of the {size} architectures ({missing})"


@contextmanager
def compiled(models: MuseTalkModels, mode: str | None) -> Iterator[MuseTalkModels]:
    """The models with the UNet and the VAE decoder compiled in `mode` (None: eager), restored afterwards.

    infer_faces calls vae.decode(), which an OptimizedModule would not compile (only forward is), so the
    decoder submodule is swapped for its compiled wrapper instead.
    """
    if mode is None:
        yield models
        return
    torch._dynamo.reset()
    vae, decoder = models.vae, models.vae.decoder
    vae.decoder = torch.compile(decoder, mode=mode, dynamic=False)
    try:
        yield MuseTalkModels(torch.compile(models.unet, mode=mode, dynamic=False), vae, models.pe, models.device,
                             models.dtype, models.version)
    finally:
        vae.decoder = decoder
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------- timing

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall ms of fn(), synchronising the device around every call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000.0 * (time.perf_counter() - started))
    return float(np.median(times))


@dataclass
class Cell:
    ms_per_batch: float | None
    error: str = ""

    def text(self, batch: int) -> str:
        if self.ms_per_batch is None:
            return f"{self.error[:60]} | - | -"
        return f"{self.ms_per_batch:8.1f} | {self.ms_per_batch / batch:6.2f} | {1000 * batch / self.ms_per_batch:7.1f}"


def infer_cell(models: MuseTalkModels, batch: int, repeats: int, warmup: int, graphs: bool) -> Cell:
    gen = torch.Generator(device=models.device).manual_seed(batch)
    feats = torch.randn(batch, AUDIO_TOKENS, FEATURE_DIM, generator=gen, device=models.device, dtype=models.dtype)
    latents = torch.randn(batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=gen, device=models.device,
                          dtype=models.dtype)

    def call() -> np.ndarray:
        if graphs:  # each call is a new step: the previous call's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return infer_faces(models, feats, latents)

    try:
        return Cell(device_ms(call, models.device, repeats, warmup))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return Cell(None, "out of memory")
    except Exception as e:  # a compile mode that does not work here is a result, not a crash
        return Cell(None, f"{type(e).__name__}: {e}".replace("\n", " "))


def whisper_ms(encoder: torch.nn.Module, batch: int, version: str, repeats: int) -> float:
    device = next(encoder.parameters()).device
    feats = StreamingFeatures(encoder, version, batch_frames=batch)
    first = 100  # mid-utterance: full left context
    start, end = feats.window(first)
    audio = (0.1 * np.random.default_rng(batch).standard_normal(end - start)).astype(np.float32)

    def call() -> None:
        with torch.inference_mode():
            feats.chunks(audio, first)

    return device_ms(call, device, repeats, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--version", choices=["v1", "v15"], default="v15")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per shape (compiles happen here)")
    parser.add_argument("--cpu-check", action="store_true",
                        help="run on the CPU (fp32, reduced-width models unless --models-dir has weights) to check "
                             "the script; the figures say nothing about a GPU")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown or not all(b >= 1 for b in batches):
        parser.error(f"modes must be among {', '.join(MODES)} and batches >= 1 (got {args.modes!r}, {args.batches!r})")

    reason = no_cuda_reason()
    if reason is not None and not args.cpu_check:
        print(f"no CUDA device: {reason}; this benchmark needs a GPU (CPU figures: python -m bench.stages; "
              f"--cpu-check runs this script on the CPU to check it)")
        return
    device = torch.device("cpu" if args.cpu_check else "cuda")

    print(f"machine: {machine()}")
    if args.cpu_check:
        print("CPU CHECK RUN: fp32 on the CPU; these figures say nothing about a GPU")
    torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: let cuDNN pick its fastest convolutions
    torch._dynamo.config.recompile_limit = 2 * len(batches)  # one specialisation per batch size and module
    models, encoder, source = bench_models(args.models_dir, args.version, device)
    where = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {models.dtype}; {source}", flush=True)

    results: dict[str, dict[int, Cell]] = {}
    for mode in modes:
        started = time.perf_counter()
        with compiled(models, MODES[mode]) as variant:
            graphs = MODES[mode] == "reduce-overhead"
            results[mode] = {b: infer_cell(variant, b, args.repeats, args.warmup, graphs) for b in batches}
        print(f"{mode}: done in {time.perf_counter() - started:.0f} s (incl. compiling)", flush=True)
    whisper = {b: whisper_ms(encoder, b, args.version, args.repeats) for b in batches}

    print("\nUNet + VAE decode per batch (infer_faces, incl. copy to host): ms/batch | ms/frame | fps")
    print("|  B | " + " | ".join(f"{m}: ms/batch | ms/frame | fps" for m in modes) + " | whisper ms/frame |")
    print("|---:|" + "---:|---:|---:|" * len(modes) + "---:|")
    for b in batches:
        print(f"| {b:2d} | " + " | ".join(results[m][b].text(b) for m in modes) + f" | {whisper[b] / b:6.2f} |")

    timed = [(1000 * b / c.ms_per_batch, m, b) for m in modes for b, c in results[m].items() if c.ms_per_batch]
    if not timed:
        print("no configuration ran")
        return
    fps, mode, batch = max(timed)
    per_frame = 1000 / fps + whisper[batch] / batch
    print(f"\nbest: {fps:.0f} fps ({1000 / fps:.2f} ms per frame) with {mode} at B={batch} = {fps / TARGET_FPS:.2f}x "
          f"the {TARGET_FPS:g} fps target (LiveTalking, RTX 4090, one session); with whisper features "
          f"({whisper[batch] / batch:.2f} ms/frame, eager) {1000 / per_frame:.0f} fps = "
          f"{1000 / per_frame / 25:.1f} real-time 25 fps sessions")
    eager = [(1000 * b / c.ms_per_batch, b) for b, c in results.get("eager", {}).items() if c.ms_per_batch]
    if eager and mode != "eager":
        e_fps, e_batch = max(eager)
        print(f"eager best: {e_fps:.0f} fps at B={e_batch}; {mode} is {fps / e_fps:.2f}x that")


if __name__ == "__main__":
    main()
