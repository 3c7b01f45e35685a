"""Real piper synthesis and the piper -> VAD -> faster-whisper loop."""

import asyncio
import re
import threading
import time
from contextlib import aclosing

import numpy as np
import pytest

from voices._threads import TTS_POOL, stream_from_thread
from voices.asr import Transcriber, VoiceActivityDetector
from voices.tts import PiperTTS, TTSError

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def piper():
    return PiperTTS()


async def test_piper_streams_16k_float32_sentence_by_sentence(piper):
    text = "Good morning. The weather is lovely today, so let us go for a walk."
    start = time.perf_counter()
    arrivals, chunks = [], []
    async for chunk in piper.synthesize(text):
        arrivals.append(time.perf_counter() - start)
        chunks.append(chunk)
    assert len(chunks) == 2 and arrivals[0] < arrivals[-1]  # first audio before the end
    # piper's own API at 22.05 kHz; its durations vary a little from run to run (noise_w).
    raw = [c.audio_float_array for c in piper.voice.synthesize(text)]
    for ours, theirs in zip(chunks, raw):
        assert ours.dtype == np.float32 and ours.ndim == 1
        assert 0.8 < len(ours) / (len(theirs) * 16000 / 22050) < 1.2
    audio = np.concatenate(chunks)
    seconds = len(audio) / 16000
    assert 2.5 < seconds < 8.0  # 15 words
    assert np.sqrt(np.mean(audio**2)) > 0.05
    for chunk in chunks:  # every sentence at the configured peak, after resampling
        assert np.max(np.abs(chunk)) == pytest.approx(0.9, abs=1e-5)


async def test_piper_empty_text_and_missing_voice(piper, tmp_path):
    assert [c async for c in piper.synthesize("  ")] == []
    with pytest.raises(TTSError, match="not found"):
        PiperTTS(tmp_path / "nope.onnx")


async def test_piper_stops_synthesising_when_the_consumer_stops(piper):
    text = " ".join(f"This is sentence number {i} of a rather long text." for i in range(30))
    async with aclosing(piper.synthesize(text)) as audio:
        async for _ in audio:
            break
    # The worker finishes at most the sentence it was on (under load that can take a while), then the process
    # goes quiet; 30 sentences would keep a core busy for ~10 s, so no quiet half second would come.
    for _ in range(5):
        cpu = time.process_time()
        await asyncio.sleep(0.5)
        if time.process_time() - cpu < 0.15:
            break
    else:
        raise AssertionError("piper kept synthesising after its consumer stopped")


async def test_stream_from_thread_stops_the_producer_and_reraises():
    produced = []

    def producer(emit, stop):
        for i in range(1000):
            if stop.is_set():
                return
            produced.append(i)
            emit(i)
            time.sleep(0.001)

    async with aclosing(stream_from_thread(producer, TTS_POOL)) as items:
        async for item in items:
            if item == 5:
                break
    await asyncio.sleep(0.1)
    assert len(produced) < 100

    def failing(emit, stop):
        emit(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        [x async for x in stream_from_thread(failing, TTS_POOL)]
    assert threading.active_count() < 50


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


async def test_piper_speech_is_transcribed_back(piper):
    audio = np.concatenate([c async for c in piper.synthesize(SENTENCE)])
    silence = np.zeros(8000, np.float32)
    vad = VoiceActivityDetector()
    events = []
    stream = np.concatenate([silence, audio, silence, silence])
    for pos in range(0, len(stream), 320):  # 20 ms frames, as a mic would deliver
        events += vad.push(stream[pos : pos + 320])
    events += vad.flush()
    assert [type(e).__name__ for e in events] == ["SpeechStart", "SpeechEnd"]

    transcriber = Transcriber()
    start = time.perf_counter()
    text = await transcriber.transcribe(events[1].audio)
    elapsed = time.perf_counter() - start
    expected = words(SENTENCE)
    got = words(text)
    matched = sum(w in got for w in expected)
    assert matched >= len(expected) - 1, text
    print(f"ASR {elapsed * 1000:.0f} ms for {len(events[1].audio) / 16000:.2f} s: {text!r}")


def test_transcriber_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.bin"):
        Transcriber(tmp_path)


def test_asr_model_names_and_devices_are_checked():
    with pytest.raises(FileNotFoundError, match="neither a CTranslate2 whisper folder nor a faster-whisper model name"):
        Transcriber("not-a-model")
    with pytest.raises(ValueError, match="cpu, cuda"):
        Transcriber(device="tpu")
    assert Transcriber(language="de").transcribe_sync(np.zeros(0, np.float32)) == ""  # tiny.en: English only
