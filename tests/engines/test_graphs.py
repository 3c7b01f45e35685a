"""The per-batch-size graphs of the musetalk batch models, checked on the CPU with the tiny configs: dynamo traces
each model pass whole (no graph breaks, in fp32 and in the fp16 used on CUDA), and the compiled models give the
eager results within fp tolerance. (CUDA graphs proper need a GPU: scripts/gpu-bench.sh.)"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from engines.musetalk_batch import EncoderModel, FacesModel, OrEager, graphed
from musetalk import config
from musetalk.inference import decoded_pixels, unet_latents
from musetalk.models import MuseTalkModels, PositionalEncoding, build_unet, build_vae
from musetalk.whisper import build_encoder, encoder_states, whisper_tiny_config


def tiny(dtype: torch.dtype) -> tuple[MuseTalkModels, torch.nn.Module]:
    torch.manual_seed(0)
    unet = build_unet(config.unet_tiny_config()).to(dtype).eval().requires_grad_(False)
    vae = build_vae(config.vae_tiny_config()).to(dtype).eval().requires_grad_(False)
    whisper = whisper_tiny_config()
    whisper.encoder_ffn_dim = 128
    encoder = build_encoder(whisper).to(dtype).eval()
    cpu = torch.device("cpu")
    return MuseTalkModels(unet, vae, PositionalEncoding().to(dtype).eval(), cpu, dtype, "v15"), encoder


@pytest.fixture(scope="module")
def fp32() -> tuple[MuseTalkModels, torch.nn.Module]:
    return tiny(torch.float32)


def inputs(batch: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    return (
        torch.randn(batch, 50, 384, generator=gen).to(dtype),
        torch.randn(batch, 8, 32, 32, generator=gen).to(dtype),
    )


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_each_model_pass_is_one_graph(dtype) -> None:
    models, encoder = tiny(dtype)
    feats, latents = inputs(2, dtype)
    with torch.no_grad():
        passes = {
            "unet": (partial(unet_latents, models), (feats, latents)),
            "vae decode": (partial(decoded_pixels, models.vae), (unet_latents(models, feats, latents),)),
            "encoder": (partial(encoder_states, encoder, layer_norm_last=True), (torch.randn(2, 80, 3000).to(dtype),)),
        }
        for name, (fn, args) in passes.items():
            torch._dynamo.reset()
            explained = torch._dynamo.explain(fn)(*args)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (name, explained.break_reasons)
    torch._dynamo.reset()


def test_captured_models_match_eager(fp32) -> None:
    """backend="cudagraphs" on a CPU runs the captured graph without CUDA graphs: the same program as on a GPU."""
    models, encoder = fp32
    torch._dynamo.reset()
    chunks, latents = (x.numpy() for x in inputs(2))
    eager, graphs = FacesModel(models), FacesModel(models, "cudagraphs")
    for _ in range(2):  # the first call captures, the second replays
        np.testing.assert_array_equal(graphs((chunks, latents), 2), eager((chunks, latents), 2))
    mels = np.random.default_rng(0).standard_normal((2, 80, 3000)).astype(np.float32)
    encoder_inputs = (mels, np.array([0, 100]), np.array([30, 7]))
    want = EncoderModel(encoder, "v15")(encoder_inputs, 2)
    got = EncoderModel(encoder, "v15", "cudagraphs")(encoder_inputs, 2)
    assert [g.shape for g in got] == [w.shape for w in want] == [(30, 5, 384), (7, 5, 384)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_inductor_compiled_faces_match_eager(fp32) -> None:
    """mode="reduce-overhead" (inductor kernels; CUDA graphs on a GPU): within fp tolerance of eager."""
    models, _ = fp32
    torch._dynamo.reset()
    feats, latents = inputs(2)
    with torch.no_grad():
        want = unet_latents(models, feats, latents)
        got = graphed(partial(unet_latents, models), "reduce-overhead")(feats, latents)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        pixels = graphed(partial(decoded_pixels, models.vae), "reduce-overhead")(want)
        diff = (pixels.int() - decoded_pixels(models.vae, want).int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01  # rounding of the last bit of a pixel
    torch._dynamo.reset()


def test_a_batch_size_whose_graph_fails_runs_eager_from_then_on(caplog) -> None:
    calls = []

    def broken_graph(x):
        calls.append(tuple(x.shape))
        raise RuntimeError("Expected X.is_contiguous(memory_format) to be true")

    def double(x):
        return 2 * x

    fn = OrEager(double, broken_graph)
    for _ in range(2):
        torch.testing.assert_close(fn(torch.ones(2, 3)), torch.full((2, 3), 2.0))
    assert calls == [(2, 3)] and "eager for this batch size from now on" in caplog.text  # tried once, then eager
    fn(torch.ones(4, 3))
    assert calls == [(2, 3), (4, 3)]  # another size still tries its graph


def test_graph_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="graph mode must be one of cudagraphs, reduce-overhead"):
        graphed(lambda x: x, "fast")


@pytest.mark.slow
def test_the_engine_with_graphs_renders_as_eager_even_where_a_graph_fails() -> None:
    """The engine's graph path end to end on the CPU (micro models of bench.gpu): warm-up builds each batch size,
    and its faces equal those of the same models without graphs. (On the CPU the micro VAE decoder's graph hits a
    stride check of aten.native_group_norm that eager never meets: that size runs eager, with a warning.)"""
    from bench.gpu import build_models
    from engines.musetalk_engine import MuseTalkEngine

    loaded = build_models("micro", torch.device("cpu"))
    engines = [
        MuseTalkEngine(loaded=loaded, batch_size=1, max_sessions=1, graph_mode=mode) for mode in (None, "cudagraphs")
    ]
    try:
        eager, graphs = engines
        assert graphs.sizes["faces"] == (1,) and eager.graph_mode is None
        audio = (0.1 * np.random.default_rng(2).standard_normal(4800)).astype(np.float32)
        latents = np.random.default_rng(3).standard_normal((1, 8, 32, 32)).astype(np.float32)
        np.testing.assert_array_equal(
            graphs.faces(audio, 0, 1, latents, final=True), eager.faces(audio, 0, 1, latents, final=True)
        )
    finally:
        for engine in engines:
            engine.close()
        torch._dynamo.reset()
