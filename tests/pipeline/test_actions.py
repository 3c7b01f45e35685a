"""Action clips made from a video file: frames at the avatar's size, its sound at 16 kHz."""

import fractions
from pathlib import Path

import av
import numpy as np

from musetalk.avatar import load_avatar
from musetalk.avatar_demo import ensure_demo
from pipeline.actions import load_actions, main


def write_clip(path: Path, n_frames: int, size: tuple[int, int], tone_hz: float = 440.0, channels: int = 1) -> Path:
    w, h = size
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = container.add_stream("aac", rate=48000, layout=layout)
        for i in range(n_frames):
            img = np.full((h, w, 3), (10 * i) % 256, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        t = np.arange(int(48000 * n_frames / 25)) / 48000
        pcm = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        for start in range(0, len(pcm), 1024):
            piece = np.repeat(pcm[None, start : start + 1024], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
            container.mux(audio.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    return path


def test_add_action_from_a_video_with_sound(tmp_path: Path, capsys) -> None:
    ensure_demo(tmp_path, progress=False, models_dir=tmp_path / "no-models")
    clip_file = write_clip(tmp_path / "wave.mp4", 20, (256, 256))  # another size: resized to the avatar's
    assert main(["demo", "3", str(clip_file), "--avatars_dir", str(tmp_path)]) == 0
    assert "action 3 of demo: 20 frames" in capsys.readouterr().out
    avatar = load_avatar("demo", tmp_path)
    clip = load_actions(avatar.path, avatar.frames.shape[1:3])[3]
    assert clip.frames.shape == (20, 512, 512, 3)
    levels = [int(f[100, 100, 0]) for f in clip.frames]
    assert np.all(np.diff(levels) > 0) and all(abs(v - 10 * i) <= 6 for i, v in enumerate(levels))  # order kept
    assert clip.audio is not None and abs(len(clip.audio) / 16000 - 0.8) < 0.06
    spectrum = np.abs(np.fft.rfft(clip.audio[2000:10000]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) < 5  # the clip's own sound, resampled to 16 kHz
    assert main(["demo", "4", str(tmp_path / "missing.mp4"), "--avatars_dir", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err


def test_stereo_sound_is_averaged_to_mono_at_the_same_level(tmp_path: Path) -> None:
    ensure_demo(tmp_path, progress=False, models_dir=tmp_path / "no-models")
    clip_file = write_clip(tmp_path / "stereo.mp4", 20, (512, 512), channels=2)  # both channels: the 0.3 tone
    assert main(["demo", "5", str(clip_file), "--avatars_dir", str(tmp_path)]) == 0
    avatar = load_avatar("demo", tmp_path)
    audio = load_actions(avatar.path, avatar.frames.shape[1:3])[5].audio
    assert audio is not None
    assert 0.27 < np.abs(audio[2000:10000]).max() < 0.33  # a stereo->mono matrix would give 0.42 (+3 dB)


def test_a_clip_added_again_replaces_the_old_one_whole(tmp_path: Path) -> None:
    ensure_demo(tmp_path, progress=False, models_dir=tmp_path / "no-models")
    with_sound = write_clip(tmp_path / "a.mp4", 10, (512, 512))
    assert main(["demo", "7", str(with_sound), "--avatars_dir", str(tmp_path)]) == 0
    assert main(["demo", "7", str(with_sound), "--avatars_dir", str(tmp_path), "--no_audio"]) == 0
    avatar = load_avatar("demo", tmp_path)
    clip = load_actions(avatar.path, avatar.frames.shape[1:3])[7]
    assert clip.audio is None and len(clip.frames) == 10  # the first clip's sound does not linger
    assert main(["demo", "7", str(tmp_path / "missing.mp4"), "--avatars_dir", str(tmp_path)]) == 1
    assert len(load_actions(avatar.path, avatar.frames.shape[1:3])[7].frames) == 10  # a failed add keeps the old
    assert sorted(p.name for p in (avatar.path / "actions").iterdir()) == ["7"]  # no temp folder left
