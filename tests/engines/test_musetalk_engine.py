"""The musetalk engine with tiny random weights of the real architectures, inside a stepped session."""

import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from core.items import Source
from engines.factory import create_engine, musetalk_unavailable
from engines.musetalk_engine import MuseTalkEngine
from musetalk.audio_features import StreamingFeatures, frame_chunks, whisper_steps
from musetalk.avatar import face_crops
from musetalk.inference import faces_to_latents, infer_faces
from pipeline.session import Session, SessionOptions


@pytest.fixture(scope="module")
def engine(tiny_models) -> Iterator[MuseTalkEngine]:
    engine = MuseTalkEngine(models_dir=tiny_models.root, version="v15", batch_size=2, device="cpu")
    yield engine
    engine.close()


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + rng.standard_normal(len(t)) * 0.1)).astype(np.float32)


def test_context_and_lead_follow_the_feature_window(engine) -> None:
    sf = StreamingFeatures(engine.encoder, "v15", batch_frames=2, right_context_s=engine.context[1])
    for f in (0, 100, 745, 749, 751, 752, 1490):
        start, end = sf.window(f)
        assert engine.left_context_ticks * 640 >= f * 640 - start  # back to the start of the 30 s segment
        assert engine.right_context_ticks * 640 >= end - (f + 2) * 640
        assert engine.max_right_context_ticks * 640 >= sf.span_end(f) - (f + 2) * 640  # to the segment's end
    # frame 751 reads steps 1498..1507: their first segment began 751 ticks (30.04 s) before the frame; a batch
    # looks 80 ms + the default right context of 0.04 s past its own audio: 3 ticks
    assert (engine.left_context_ticks, engine.right_context_ticks) == (751, 3)
    assert engine.lead_ticks > engine.right_context_ticks  # covers the look-ahead and a batch


async def test_session_frames_are_the_model_output_for_their_own_audio(engine, demo_avatar) -> None:
    session = Session("mt", demo_avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
    await session.start()
    audio = speech(0.4)  # 10 ticks
    await session.push_audio(audio)
    await session.end_speech()
    outs = [session.step(wait_for_video=30.0) for _ in range(engine.lead_ticks + 12)]
    await session.close()
    speech_out = [o for o in outs if o.source is Source.SPEECH]
    assert len(speech_out) == 10 and session.stats.render_errors == 0

    # Reference for the first batch (frames 0 and 1): the features of the whole utterance (it had all arrived) and
    # the model, called directly (as a batch of 2: CPU kernels may round differently for another batch size;
    # threads may flip a rounding).
    sf = StreamingFeatures(engine.encoder, "v15", batch_frames=2)
    crops = face_crops(np.asarray(demo_avatar.frames[:1]), demo_avatar.face_boxes[:1])
    latents = faces_to_latents(engine.models.vae, crops)
    faces = infer_faces(engine.models, sf.chunks(audio, 0, final=True), latents.repeat(2, 1, 1, 1))
    for out, face in zip(speech_out[:2], faces):
        expected = demo_avatar.blend_plan(0).apply(np.asarray(demo_avatar.frames[0]), face)
        diff = np.abs(out.frame.astype(int) - expected)
        assert diff.max() <= 1 and (diff > 0).sum() <= 10
        assert not np.array_equal(out.frame, demo_avatar.frames[0])
    assert not np.array_equal(speech_out[0].frame, speech_out[1].frame)  # different audio, different face


def test_streamed_features_stay_close_to_one_pass_over_the_utterance(engine) -> None:
    audio = speech(1.0, seed=3)
    whole = frame_chunks(whisper_steps(audio, engine.encoder, "v15"), len(audio), "v15")
    sf = StreamingFeatures(engine.encoder, "v15", batch_frames=2)
    start, end = sf.window(10)
    streamed = sf.chunks(audio[start:end], 10)
    rel = np.linalg.norm(streamed - whole[10:12]) / np.linalg.norm(whole[10:12])
    assert rel < 0.05, rel


def test_auto_picks_musetalk_only_with_cuda_and_says_why_not(tiny_models, caplog) -> None:
    reason = musetalk_unavailable(tiny_models.root, "v15")
    with caplog.at_level(logging.WARNING):
        engine = create_engine("auto", models_dir=tiny_models.root)
    if torch.cuda.is_available():  # the weights are all there, so a GPU machine runs the real model
        assert reason is None and engine.name == "musetalk"
    else:
        assert reason is not None and "CUDA" in reason
        assert engine.name == "lite" and "CUDA" in caplog.text
    assert "weights are missing" in musetalk_unavailable(tiny_models.root / "nowhere", "v15")
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine("wav2lip")
