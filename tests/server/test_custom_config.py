"""LiveTalking's custom-video config: `/offer` custom_config and `--customvideo_config`, a looping idle clip
(audiotype 1) and action clips with their sound, decoded once per avatar; bad configs refused with the reason."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
from aiortc import MediaStreamTrack

from core.items import Kind, Source
from musetalk.avatar import load_avatar
from pipeline.actions import CUSTOM_CACHE_DIR, load_custom_clips, parse_custom_config
from pipeline.session import Session
from server.config import parse_args
from testing.rtc import frames_of
from testing.server_client import Client, until

GREEN, MAGENTA = (40, 200, 40), (200, 40, 200)


def image_folder(folder: Path, colour: tuple[int, int, int], n: int, size: int = 200) -> Path:
    """n frames named 0.png .. (n-1).png (LiveTalking's numbering), each with its index drawn in."""
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.full((size, size, 3), colour, np.uint8)
        cv2.putText(img, str(i), (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """LiveTalking's layout: data/customvideo/{idle,wave}/ images and a sound for the wave."""
    root = tmp_path / "data"
    image_folder(root / "customvideo" / "idle", GREEN, 12)
    image_folder(root / "customvideo" / "wave", MAGENTA, 5)
    t = np.arange(8000) / 16000
    sf.write(root / "customvideo" / "wave.wav", 0.5 * np.sin(2 * np.pi * 330 * t), 16000)
    return root


def config_list(root: Path) -> list[dict]:
    return [
        {"audiotype": 1, "imgpath": str(root / "customvideo" / "idle")},
        {
            "audiotype": 2,
            "imgpath": str(root / "customvideo" / "wave"),
            "audiopath": str(root / "customvideo" / "wave.wav"),
        },
    ]


@pytest.fixture
def own_avatars(avatars_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "avatars"
    shutil.copytree(avatars_dir / "demo", root / "demo")
    return root


def test_parse_accepts_livetalking_shapes_and_refuses_bad_ones(data: Path) -> None:
    clips = parse_custom_config(json.dumps(config_list(data)), root=data)  # as its pages send it: a JSON string
    assert [c.audiotype for c in clips] == [1, 2] and clips[1].audiopath == (data / "customvideo/wave.wav").resolve()
    assert parse_custom_config({"audiotype": "1", "imgpath": str(data / "customvideo/idle")})[0].audiotype == 1
    idle = str(data / "customvideo/idle")
    for value, words in (
        ("{not json", "not valid JSON"),
        ([], "list of 1 to"),
        ("[1]", "must be an object"),
        ([{"audiotype": 0, "imgpath": idle}], "audiotype must be"),
        ([{"audiotype": True, "imgpath": idle}], "audiotype must be"),
        ([{"audiotype": 1}], "needs an imgpath"),
        ([{"audiotype": 1, "imgpath": idle}, {"audiotype": 1, "imgpath": idle}], "twice"),
        ([{"audiotype": 3, "imgpath": str(data / "nope")}], "does not exist"),
        ([{"audiotype": 3, "imgpath": idle, "audiopath": idle}], "is not a file"),
        ([{"audiotype": 3, "imgpath": str(data / "../../../etc")}], "outside"),
        ([{"audiotype": 3, "imgpath": "/etc"}], "outside"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_custom_config(value, root=data)


async def test_the_idle_clip_loops_and_crossfades_with_speech_and_actions(
    data: Path, own_avatars: Path, engine
) -> None:
    avatar = load_avatar("demo", own_avatars)
    actions, idle = load_custom_clips(parse_custom_config(config_list(data)), avatar)
    assert idle is not None and idle.n_ticks == 12 and idle.frames.shape[1:3] == avatar.frames.shape[1:3]
    assert actions[2].n_ticks == 5 and actions[2].audio is not None and len(actions[2].audio) == 8000
    session = Session("s", avatar, engine, stepped=True)
    session.use_custom_clips(actions, idle)
    await session.start()
    try:
        ticks = [session.step() for _ in range(30)]
        assert all(np.array_equal(t.frame, idle.frame(t.tick % 12)) for t in ticks[1:])  # looped, tick by tick
        await session.push_audio(np.full(16000, 0.3, np.float32) * np.sin(np.arange(16000) / 8))
        await session.end_speech()
        speech = [session.step() for _ in range(40)]
        first = next(i for i, t in enumerate(speech) if t.source is Source.SPEECH)
        own = np.asarray(avatar.frames[0])
        fade_in = speech[first : first + session.options.crossfade_ticks]
        assert all(not np.array_equal(t.frame, idle.frame(t.tick % 12)) for t in fade_in)  # fading to the avatar
        back = next(i for i in range(first, 40) if speech[i].source is Source.IDLE)
        assert np.array_equal(
            speech[back + session.options.crossfade_ticks].frame,
            idle.frame(speech[back + session.options.crossfade_ticks].tick % 12),
        )
        assert not np.array_equal(speech[back].frame, own)  # faded, not cut
        session.set_audiotype(2)
        played = [session.step() for _ in range(12)]
        action = [t for t in played if t.source is Source.ACTION]
        assert len(action) == 5 and all(t.kind is Kind.ACTION for t in action)
        assert np.abs(action[0].audio).max() > 0.3  # the clip's own sound
        assert played[-1].source is Source.IDLE and np.array_equal(played[-1].frame, idle.frame(played[-1].tick % 12))
    finally:
        await session.close()


def test_clips_are_decoded_once_per_avatar_and_again_when_a_source_changes(data: Path, own_avatars: Path) -> None:
    avatar = load_avatar("demo", own_avatars)
    clips = parse_custom_config(config_list(data))
    load_custom_clips(clips, avatar)
    cache = avatar.path / CUSTOM_CACHE_DIR
    before = sorted(p.name for p in cache.iterdir())
    started = time.perf_counter()
    load_custom_clips(clips, avatar)
    assert sorted(p.name for p in cache.iterdir()) == before and time.perf_counter() - started < 1.0
    time.sleep(0.01)
    image_folder(data / "customvideo" / "idle2", GREEN, 3)
    (data / "customvideo" / "idle" / "12.png").write_bytes((data / "customvideo/idle2/0.png").read_bytes())
    _, idle = load_custom_clips(clips, avatar)
    assert idle is not None and idle.n_ticks == 13 and len(list(cache.iterdir())) == len(before) + 1


class MeanColour(Client):
    colours: list[np.ndarray]

    async def _consume(self, track: MediaStreamTrack) -> None:
        self.colours = getattr(self, "colours", [])
        async for frame in frames_of(track):
            if track.kind == "video":
                self.video_times.append(time.monotonic())
                self.colours.append(frame.to_ndarray(format="bgr24")[:, :, :].reshape(-1, 3).mean(axis=0))


def greenish(colour: np.ndarray) -> bool:
    return colour[1] > 150 and colour[0] < 120 and colour[2] < 120


async def test_offer_custom_config_plays_the_idle_clip_and_actions(
    serve, config, data, own_avatars, loopback_only
) -> None:
    async with serve(config, avatars_dir=own_avatars, custom_dir=data) as server:
        client = MeanColour(server)
        sid = await client.connect(custom_config=json.dumps(config_list(data)))
        await client.wait_video(10)
        assert await until(lambda: greenish(client.colours[-1]), 10), client.colours[-1]
        status, body = await server.post("/set_audiotype", {"sessionid": sid, "audiotype": 2})
        assert status == 200, body
        assert await until(lambda: client.colours[-1][0] > 150 and client.colours[-1][2] > 150, 5)  # magenta
        assert await until(lambda: greenish(client.colours[-1]), 5)  # and back to the idle clip
        status, body = await server.post("/set_audiotype", {"sessionid": sid, "audiotype": 3})
        assert status == 400 and "available: 2" in body["msg"]
        # The demo's own clip 2 is replaced by the config's; a session without a config keeps the avatar's frames.
        plain = MeanColour(server)
        await plain.connect()
        await plain.wait_video(10)
        assert not greenish(plain.colours[-1])


@pytest.mark.parametrize(
    ("custom", "words"),
    [
        ("{broken", "not valid JSON"),
        ('[{"audiotype": 1, "imgpath": "/etc"}]', "outside"),
        ('[{"audiotype": 1, "imgpath": "DATA/customvideo/../../.."}]', "outside"),
        ('[{"audiotype": 1, "imgpath": "DATA/missing"}]', "does not exist"),
        ('[{"audiotype": 1, "imgpath": "DATA/customvideo/wave.wav"}]', "custom_config"),
    ],
)
async def test_bad_custom_config_is_refused_before_a_slot_is_taken(
    serve, config, data, own_avatars, custom, words, loopback_only
) -> None:
    async with serve(config, avatars_dir=own_avatars, custom_dir=data, max_session=1) as server:
        status, body = await Client(server).offer(custom_config=custom.replace("DATA", str(data)))
        assert status == 400 and words in body["msg"], body
        assert await server.sessions() == 0
        await Client(server).connect()  # the one slot is free


async def test_customvideo_config_applies_to_every_session_and_follows_set_avatar(
    serve, config, data, own_avatars, tmp_path, loopback_only
) -> None:
    from musetalk.avatar_demo import demo_image
    from musetalk.avatar_prepare import PrepareOptions, prepare_avatar

    prepare_avatar(
        cv2.resize(demo_image(), (256, 256)),
        "small",
        own_avatars,
        PrepareOptions(progress=False, models_dir=tmp_path / "no-models"),
    )
    file = tmp_path / "custom_config.json"
    file.write_text(json.dumps(config_list(data)))
    assert parse_args(["--customvideo_config", str(file)]).customvideo_config == file
    async with serve(config, avatars_dir=own_avatars, customvideo_config=file) as server:
        client = MeanColour(server)
        sid = await client.connect()
        await client.wait_video(5)
        assert await until(lambda: greenish(client.colours[-1]), 10)
        assert (await server.post("/set_avatar", {"sessionid": sid, "avatar": "small"}))[0] == 200
        live = server.state.registry.get(sid)
        assert live.session.output.idle_clip.frames.shape[1:3] == (256, 256) and 2 in live.session.actions
        n = len(client.colours)
        await client.wait_video(n + 10)
        assert greenish(client.colours[-1])


@pytest.mark.parametrize(("text", "words"), [("not json", "not valid JSON"), ("[]", "list of 1 to")])
def test_a_bad_customvideo_config_stops_the_start(tmp_path, text, words, capsys) -> None:
    file = tmp_path / "c.json"
    file.write_text(text)
    with pytest.raises(SystemExit):
        parse_args(["--customvideo_config", str(file)])
    assert words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--customvideo_config", str(tmp_path / "missing.json")])
