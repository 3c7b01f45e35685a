"""The features the musetalk engine feeds its UNet through the real session path (framer, worker, renderer) against
the official offline computation of the whole utterance, restated from the reference notes (testing/official_audio.py).

The UNet pass is replaced by a recorder (it sees exactly the chunks the UNet would); the whisper encoder is a seeded
random one of whisper-tiny's structure at width 64, so 30 s inputs are cheap. Real whisper weights:
tests/musetalk/test_whisper_tiny_en.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import WhisperModel

from core.items import Source
from engines.batcher import Batcher
from engines.musetalk_batch import FACES
from engines.musetalk_engine import MuseTalkEngine
from musetalk.tiny import write_tiny_layout
from pipeline.session import Session, SessionOptions
from testing.official_audio import (
    check_frames_read_official_steps,
    micro_config,
    official_chunks,
    official_steps,
    perturb_norms_and_biases,
    relative_l2,
    speech_like,
)


class UNetRecorder:
    """Stands in for the faces batch model (UNet + VAE): records the (B, 50, D) chunks, returns blank faces."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def __call__(self, inputs, rows: int) -> np.ndarray:
        features = inputs[0][:rows]
        self.chunks.append(np.asarray(features, np.float32).copy())
        return np.zeros((rows, 256, 256, 3), np.uint8)


@pytest.fixture(scope="module")
def parity_engine(tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("models")
    write_tiny_layout(root, whisper=False)
    folder = root / "whisper"
    for stub in folder.iterdir():
        stub.unlink()
    torch.manual_seed(3)
    model = WhisperModel(micro_config())
    perturb_norms_and_biases(model.encoder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text("{}")
    recorder = UNetRecorder()
    engine = MuseTalkEngine(
        models_dir=root,
        version="v15",
        batch_size=8,
        device="cpu",
        runner=lambda models, sizes: Batcher({**models, FACES: recorder}, sizes).start(),
    )
    yield engine, recorder
    engine.close()
    torch.set_num_threads(threads)


async def _speak(engine: MuseTalkEngine, avatar, audio: np.ndarray, real_time: bool) -> list:
    """Through a stepped session: all the audio (in 0.25 s pieces) before the first tick, or 40 ms of it while
    each tick plays (a voice that delivers audio as fast as it plays); then the end of speech."""
    session = Session("parity", avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
    await session.start()
    outs = []
    piece = 640 if real_time else 4000
    for start in range(0, len(audio), piece):
        await session.push_audio(audio[start : start + piece])
        if real_time:
            outs.append(session.step(wait_for_video=60.0))
    await session.end_speech()
    outs += [session.step(wait_for_video=60.0) for _ in range(engine.lead_ticks + math.ceil(len(audio) / 640) + 2)]
    await session.close()
    assert session.stats.render_errors == 0 and session.stats.dropped_frames == 0
    return [o for o in outs if o.source is Source.SPEECH]


@pytest.mark.parametrize(("seconds", "real_time"), [(2.3, False), (2.3, True), (31.5, False)])
async def test_streamed_features_equal_the_official_ones(parity_engine, demo_avatar, seconds, real_time) -> None:
    engine, recorder = parity_engine
    recorder.chunks.clear()
    audio = speech_like(int(seconds * 16000), seed=11)
    n = len(audio)
    shown = await _speak(engine, demo_avatar, audio, real_time)
    got = np.concatenate(recorder.chunks)
    steps = official_steps(audio, engine.encoder)
    want = official_chunks(steps, n)
    # floor((n / 16000) * 25) frames: 57 and 787; the ticks hold ceil(n / 640) (the last one half audio)
    assert got.shape == want.shape == (math.floor((n / 16000) * 25), 50, 64)
    assert len(shown) == math.ceil(n / 640) == len(want) + 1
    last = shown[-1]  # past the official frames: the avatar's own frame
    assert np.array_equal(last.frame, demo_avatar.frames[demo_avatar.cycle_index(last.tick)])
    check_frames_read_official_steps(got, steps)  # same steps in every slot, zero steps in the same slots
    rel = relative_l2(got, want)
    # Given all of the utterance before its frames are due, a batch is the official computation; fed as it
    # plays, each batch has the utterance up to its look-ahead (random weights: small; real weights: see
    # test_whisper_tiny_en.py and BENCHMARKS.md).
    assert rel.max() <= (1e-4 if not real_time else 5e-3), (rel.max(), rel.argmax())
    assert rel[-2:].max() <= 1e-4  # the end is known by then
    if seconds > 30:
        assert rel[740:760].max() <= 1e-4  # the 30 s boundary
