"""`python -m bench.parity` on CPU with the tiny official-layout models and the demo avatar."""

import csv
import math
import wave

import numpy as np
import pytest

from bench.parity import main, psnr


def write_wav(path, seconds: float) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((audio * 32767).astype("<i2").tobytes())


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert math.isinf(psnr(a, a))
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)


@pytest.mark.parametrize("pace", ["ahead", "realtime"])
def test_streaming_and_offline_paths_are_compared_frame_by_frame(pace, tiny_models, demo_avatar, tmp_path, capsys):
    write_wav(tmp_path / "speech.wav", 0.3)  # 4800 samples: 7 frames officially, 8 ticks
    table = tmp_path / "psnr.csv"
    assert (
        main(
            [
                "--avatar",
                "demo",
                "--audio",
                str(tmp_path / "speech.wav"),
                "--models_dir",
                str(tiny_models.root),
                "--avatars_dir",
                str(demo_avatar.path.parent),
                "--device",
                "cpu",
                "--batch_size",
                "4",
                "--pace",
                pace,
                "--csv",
                str(table),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(7))
    assert all(r["streamed"] == "model" for r in rows)
    values = [float(r["psnr_db"]) for r in rows]
    features = [float(r["features_rel_l2"]) for r in rows]
    # ahead: the streamed features are the official ones (same batches too): the same faces
    assert min(values) >= (60 if pace == "ahead" else 30), values
    assert max(features) <= (1e-6 if pace == "ahead" else 5e-3), features
    assert "7 frames officially" in out and "8 ticks streamed" in out and len(out.splitlines()) == 9


def test_a_file_without_audio_is_an_error(tiny_models, demo_avatar, tmp_path, capsys):
    write_wav(tmp_path / "empty.wav", 0.0)
    assert (
        main(
            [
                "--avatar",
                "demo",
                "--audio",
                str(tmp_path / "empty.wav"),
                "--models_dir",
                str(tiny_models.root),
                "--avatars_dir",
                str(demo_avatar.path.parent),
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "no audio" in capsys.readouterr().err
