"""MuseTalk's models as batch models of `engines.batcher`, with a captured graph per batch size on CUDA.

Jobs carry numpy arrays in and get numpy arrays back (the device, dtype and graphs are the owner's business), so
a job can cross a process boundary as it is.

Kinds:
- ``"encoder"``: rows are whisper encoder inputs of any sessions' windows (``window_mels``): mels (P, 80, 3000)
  float32, encoder positions (P,), whole steps (P,) -> a list of P float32 arrays (steps, 5, D), each input's
  states from its position.
- ``"faces"``: rows are frames of any sessions and avatars: audio chunks (B, 50, 384) float32, avatar latent rows
  (B, 8, 32, 32) float32 -> faces (B, 256, 256, 3) uint8 BGR.
- ``"latents"``: face crops (N, 256, 256, 3) uint8 BGR -> UNet input latents (N, 8, 32, 32) float32 (once per
  avatar prepared without weights).

Graphs (``graph_mode``): the batcher pads every batch to a few fixed sizes, so each size is one static shape:
- ``"cudagraphs"`` (the default on CUDA): ``torch.compile(backend="cudagraphs")`` -- dynamo captures the eager
  kernels once per size and replays them as a CUDA graph: no per-kernel host dispatch, seconds to build.
- ``"reduce-overhead"``: ``torch.compile(mode="reduce-overhead")`` -- inductor's fused kernels inside CUDA
  graphs; faster kernels, minutes of compiling per size on the full model.
- None (the default on CPU): eager.
The UNet pass and the VAE decode are two graphs (so their times can be told apart); the encoder is a third.
Outputs of a graph live in its static buffers until the next replay, so each batch is copied to the host
(``to_host``: pinned, asynchronous, one event) before the next one starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from engines.batcher import BatchModel, Job, JobRunner, Rows
from musetalk.config import Version
from musetalk.inference import decoded_pixels, faces_to_latents, to_host, unet_latents
from musetalk.models import MuseTalkModels
from musetalk.whisper import encoder_states

ENCODER = "encoder"
FACES = "faces"
LATENTS = "latents"

log = logging.getLogger(__name__)

GRAPH_MODES = ("cudagraphs", "reduce-overhead")
FACE_SIZES = (1, 2, 4, 8, 16, 32)
ENCODER_SIZES = (1, 2, 4, 8, 16)
LATENT_SIZES = (1, 2, 4, 8)


def default_graph_mode(device: torch.device) -> str | None:
    return "cudagraphs" if device.type == "cuda" else None


def check_graph_mode(mode: str | None) -> None:
    if mode is not None and mode not in GRAPH_MODES:
        raise ValueError(f"graph mode must be one of {', '.join(GRAPH_MODES)} or None, got {mode!r}")


def graphed(fn: Callable[..., torch.Tensor], mode: str | None) -> Callable[..., torch.Tensor]:
    """`fn` compiled for `mode` (one specialisation per input shape, i.e. per batch size), or `fn` itself."""
    check_graph_mode(mode)
    if mode is None:
        return fn
    # One specialisation per batch size and graph, of a few engines (bench.gpu builds two): above dynamo's default
    # limit of 8 it would fall back to eager without a word.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(FACE_SIZES))
    if mode == "cudagraphs":
        return OrEager(fn, torch.compile(fn, backend="cudagraphs", dynamic=False))
    return OrEager(fn, torch.compile(fn, mode="reduce-overhead", dynamic=False))


class OrEager:
    """A compiled function that falls back to `fn` itself, for good, for an input shape (a batch size) whose graph
    fails to build or run: a compiler's corner case costs that size its speed-up, not the sessions their faces."""

    def __init__(self, fn: Callable[..., torch.Tensor], compiled: Callable[..., torch.Tensor]) -> None:
        self.fn, self.compiled = fn, compiled
        self.eager_shapes: set[tuple] = set()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        shapes = tuple(tuple(a.shape) for a in args)
        if shapes in self.eager_shapes:
            return self.fn(*args)
        try:
            return self.compiled(*args)
        except Exception as e:  # noqa: BLE001 -- logged; an error of the model itself is raised again by fn
            log.warning(
                "graph of %s for inputs %s failed (%s: %s); eager for this batch size from now on",
                getattr(self.fn, "func", self.fn).__name__,
                shapes,
                type(e).__name__,
                str(e)[:200],
            )
            self.eager_shapes.add(shapes)
            return self.fn(*args)


def use_channels_last(models: MuseTalkModels) -> None:
    """NHWC weights for the UNet and the VAE (tensor cores take NHWC convolutions without transposes)."""
    models.unet.to(memory_format=torch.channels_last)
    models.vae.to(memory_format=torch.channels_last)


class _GraphModel:
    def __init__(self, device: torch.device, graph_mode: str | None) -> None:
        check_graph_mode(graph_mode)
        self.device, self.graph_mode = device, graph_mode

    def _step(self) -> None:
        if self.graph_mode is not None:
            # A new step for the graphs: the previous batch's outputs (already copied to the host) may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()


class EncoderModel(_GraphModel):
    """Kind ``"encoder"`` (see the module doc)."""

    def __init__(self, encoder: WhisperEncoder, version: str, graph_mode: str | None = None) -> None:
        weight = encoder.conv1.weight
        super().__init__(weight.device, graph_mode)
        self.dtype = weight.dtype
        self.states = graphed(partial(encoder_states, encoder, layer_norm_last=version == "v15"), graph_mode)

    def __call__(self, inputs: tuple[Rows, ...], rows: int) -> list[np.ndarray]:
        mels, positions, counts = inputs
        spans = list(zip(np.asarray(positions[:rows]).tolist(), np.asarray(counts[:rows]).tolist()))
        with torch.no_grad():
            self._step()
            states = self.states(torch.as_tensor(mels).to(self.device, self.dtype))
            # The rows' slices gathered on the device: one copy to the host, split there.
            wanted = torch.cat([states[i, p : p + n] for i, (p, n) in enumerate(spans)]).float()
            host = to_host(wanted)
        return np.split(host, np.cumsum([n for _, n in spans])[:-1])


class FacesModel(_GraphModel):
    """Kind ``"faces"`` (see the module doc). `timings`, when a list, gets (size, UNet s, VAE s) per batch:
    CUDA events on a GPU, wall time on a CPU (bench.gpu)."""

    def __init__(self, models: MuseTalkModels, graph_mode: str | None = None, channels_last: bool = False) -> None:
        super().__init__(models.device, graph_mode)
        self.models, self.channels_last = models, channels_last
        self.unet = graphed(partial(unet_latents, models), graph_mode)
        self.decode = graphed(partial(decoded_pixels, models.vae), graph_mode)
        self.timings: list[tuple[int, float, float]] | None = None

    def __call__(self, inputs: tuple[Rows, ...], rows: int) -> np.ndarray:
        chunks, latents = inputs
        m = self.models
        with torch.no_grad():
            self._step()
            feats = torch.as_tensor(chunks).to(m.device, m.dtype)
            lat = torch.as_tensor(latents).to(m.device, m.dtype)
            if self.channels_last:
                lat = lat.contiguous(memory_format=torch.channels_last)
            timings = self.timings
            marks = _Marks(m.device) if timings is not None else None
            pred = self.unet(feats, lat)
            if marks is not None:
                marks.mark()
            pixels = self.decode(pred)
            if marks is not None:
                marks.mark()
            out = to_host(pixels)
        if timings is not None and marks is not None:
            unet_s, vae_s = marks.seconds()
            timings.append((len(chunks), unet_s, vae_s))
        return out


class LatentsModel:
    """Kind ``"latents"`` (see the module doc); eager (once per avatar)."""

    def __init__(self, models: MuseTalkModels) -> None:
        self.models = models

    def __call__(self, inputs: tuple[Rows, ...], rows: int) -> np.ndarray:
        (crops,) = inputs
        return faces_to_latents(self.models.vae, np.asarray(crops[:rows])).numpy()


class _Marks:
    """Split times of a sequence of device work: CUDA events on a GPU, wall time elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.points: list[Any] = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def seconds(self) -> list[float]:
        pairs = zip(self.points, self.points[1:])
        if self.cuda:
            self.points[-1].synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in pairs]
        return [b - a for a, b in pairs]


def musetalk_models(
    models: MuseTalkModels,
    encoder: WhisperEncoder,
    version: str,
    graph_mode: str | None = None,
    channels_last: bool = False,
) -> dict[str, BatchModel]:
    """The batch models of a loaded MuseTalk (``MuseTalkModels`` and its whisper encoder)."""
    return {
        ENCODER: EncoderModel(encoder, version, graph_mode),
        FACES: FacesModel(models, graph_mode, channels_last),
        LATENTS: LatentsModel(models),
    }


def musetalk_sizes(max_faces: int, graphs: bool) -> dict[str, tuple[int, ...]]:
    """Batch sizes per kind, faces up to the first fixed size that holds `max_faces` rows. Without graphs every
    size up to those is one: padding rows would be computed for nothing (a CPU's cost grows with every row)."""
    largest = next((s for s in FACE_SIZES if s >= max_faces), FACE_SIZES[-1])
    sizes = {ENCODER: ENCODER_SIZES, FACES: tuple(s for s in FACE_SIZES if s <= largest), LATENTS: LATENT_SIZES}
    return sizes if graphs else {kind: tuple(range(1, max(s) + 1)) for kind, s in sizes.items()}


def encode_window_batched(
    runner: JobRunner,
    audio: np.ndarray,
    version: Version,
    first_step: int,
    deadline: float,
    turn: int = 0,
    current_turn: Callable[[], int] | None = None,
) -> np.ndarray:
    """``musetalk.audio_features.encode_window`` through a job runner (a `Batcher`): the log-mel here (the caller's
    thread, CPU), the encoder pass in a batch with other sessions' windows."""
    from musetalk.audio_features import window_mels

    mels, positions, counts = window_mels(audio, version, first_step)
    job = Job(
        ENCODER,
        (mels.numpy(), np.asarray(positions, np.int64), np.asarray(counts, np.int64)),
        deadline,
        turn,
        current_turn,
    )
    return np.concatenate(runner.submit(job).result())


def warm_up(
    runner: JobRunner, kind: str, sizes: Sequence[int], inputs: Callable[[int], tuple[np.ndarray, ...]]
) -> None:
    """Two batches of each size of `kind`, one after the other: with graphs, each size is built now (CUDA graph
    trees run a new graph once eagerly, then record it), not when a session first needs it."""
    for size in sizes:
        for _ in range(2):
            runner.submit(Job(kind, inputs(size), deadline=0.0)).result()
