"""BiSeNet face parsing (musetalk/face_parsing.py) against the official rules, stated here independently.

The official checkpoint layout is written out below from the module names of MuseTalk's face-parsing code
(face-parsing.PyTorch's BiSeNet: ``cp`` context path with a torchvision-named ``resnet``, ``arm16``/``arm32``,
``conv_head32``/``conv_head16``, ``conv_avg``; ``ffm``; heads ``conv_out``/``conv_out16``/``conv_out32``; every conv
without bias) and torchvision's resnet18 file; the mask rules from reference musetalk.md 6.2 / 6.3.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from musetalk.avatar import as_box, load_avatar
from musetalk.avatar_cli import main
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from musetalk.face import blend_mask, blur_mask, crop_box, face_box
from musetalk.face_parsing import (
    BiSeNet,
    FaceParser,
    cheek_mask,
    labels_to_mask,
    load_face_parser,
    parsing_input,
)
from musetalk.models import CheckpointError, MissingWeightsError

N = 19  # CelebAMask-HQ classes


# ---------------------------------------------------------------------------------------------------- the layout


def _bn(prefix: str, c: int, counter: bool = True) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {
        f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")
    }
    if counter:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def _conv_bn(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout)}


def resnet18_layout(prefix: str = "", counter: bool = True) -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 names without fc: conv1/bn1, layer1..4 of two basic blocks, a 1x1 downsample
    (``downsample.0`` conv, ``downsample.1`` BN) in the first block of layers 2..4."""
    keys = {f"{prefix}conv1.weight": (64, 3, 7, 7), **_bn(f"{prefix}bn1", 64, counter)}
    for layer, (cin, cout) in enumerate([(64, 64), (64, 128), (128, 256), (256, 512)], start=1):
        for block in (0, 1):
            p = f"{prefix}layer{layer}.{block}"
            first_in = cin if block == 0 else cout
            keys[f"{p}.conv1.weight"] = (cout, first_in, 3, 3)
            keys.update(_bn(f"{p}.bn1", cout, counter))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout, counter))
            if block == 0 and layer > 1:
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", cout, counter))
    return keys


OFFICIAL = {
    **resnet18_layout("cp.resnet."),
    **_conv_bn("cp.arm16.conv", 256, 128, 3),
    "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
    **_bn("cp.arm16.bn_atten", 128),
    **_conv_bn("cp.arm32.conv", 512, 128, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    **_bn("cp.arm32.bn_atten", 128),
    **_conv_bn("cp.conv_head32", 128, 128, 3),
    **_conv_bn("cp.conv_head16", 128, 128, 3),
    **_conv_bn("cp.conv_avg", 512, 128, 1),
    **_conv_bn("ffm.convblk", 256, 256, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    **_conv_bn("conv_out.conv", 256, 256, 3),
    "conv_out.conv_out.weight": (N, 256, 1, 1),
    **_conv_bn("conv_out16.conv", 128, 64, 3),
    "conv_out16.conv_out.weight": (N, 64, 1, 1),
    **_conv_bn("conv_out32.conv", 128, 64, 3),
    "conv_out32.conv_out.weight": (N, 64, 1, 1),
}
TORCHVISION_RESNET18 = {**resnet18_layout(counter=False), "fc.weight": (1000, 512), "fc.bias": (1000,)}


def random_state(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Plausible random tensors of the given layout (He-scaled convs, BN near identity)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(79999)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            state[key] = 1 + torch.randn(shape, generator=g) * 0.1
        else:
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
    return state


def write_parsing_weights(models: Path, all_skin: bool = False) -> dict[str, torch.Tensor]:
    """Random files in the official layout; with all_skin the main head scores only class 1 (skin), so (after the
    ReLU before it) every pixel is skin."""
    folder = models / "face-parse-bisent"
    folder.mkdir(parents=True)
    # torchvision's 2017 file: legacy (non-zip) serialization, no BN counters, fc included.
    torch.save(
        random_state(TORCHVISION_RESNET18, 1), folder / "resnet18-5c106cde.pth", _use_new_zipfile_serialization=False
    )
    state = random_state(OFFICIAL, 2)
    if all_skin:
        state["conv_out.conv_out.weight"] = torch.zeros(N, 256, 1, 1)
        state["conv_out.conv_out.weight"][1] = 1.0
    torch.save(state, folder / "79999_iter.pth")
    return state


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_parsing_weights(root, all_skin=True)
    return root


# ---------------------------------------------------------------------------------------------------- network


def test_full_size_state_dict_has_the_official_names_and_shapes() -> None:
    state = BiSeNet().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OFFICIAL
    resnet = BiSeNet().cp.resnet.state_dict()
    assert {k: tuple(v.shape) for k, v in resnet.items() if not k.endswith("num_batches_tracked")} == {
        k: s for k, s in TORCHVISION_RESNET18.items() if not k.startswith("fc.")
    }


def test_official_layout_loads_strictly(tmp_path: Path) -> None:
    saved = write_parsing_weights(tmp_path)
    parser = load_face_parser(tmp_path, device="cpu")
    loaded = parser.net.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert not parser.net.training and parser.device == torch.device("cpu")
    x = parsing_input(np.zeros((64, 64, 3), np.uint8), (0, 0, 64, 64))
    with torch.inference_mode():
        assert parser.net(x).shape == (1, N, 512, 512)


@pytest.mark.parametrize("damage", ["extra", "missing", "shape"])
def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path: Path, damage: str) -> None:
    state = write_parsing_weights(tmp_path)
    if damage == "extra":
        state["cp.sp.conv1.conv.weight"] = torch.zeros(64, 3, 7, 7)  # a spatial path the official net does not have
    elif damage == "missing":
        del state["conv_out16.conv_out.weight"]
    else:
        state["ffm.conv1.weight"] = torch.zeros(32, 256, 1, 1)
    torch.save(state, tmp_path / "face-parse-bisent" / "79999_iter.pth")
    with pytest.raises(CheckpointError, match=r"79999_iter\.pth"):
        load_face_parser(tmp_path, device="cpu")


def test_resnet_file_is_checked_too(tmp_path: Path) -> None:
    write_parsing_weights(tmp_path)
    state = random_state(TORCHVISION_RESNET18, 1)
    del state["layer3.1.conv2.weight"]
    torch.save(state, tmp_path / "face-parse-bisent" / "resnet18-5c106cde.pth")
    with pytest.raises(CheckpointError, match=r"resnet18-5c106cde\.pth"):
        load_face_parser(tmp_path, device="cpu")


class NotATensor:
    pass


def test_files_are_read_without_unpickling_objects(tmp_path: Path) -> None:
    write_parsing_weights(tmp_path)
    torch.save({"x": NotATensor()}, tmp_path / "face-parse-bisent" / "79999_iter.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_face_parser(tmp_path, device="cpu")


def test_missing_weights_name_the_files_and_the_download_command(tmp_path: Path) -> None:
    (tmp_path / "face-parse-bisent").mkdir()
    (tmp_path / "face-parse-bisent" / "resnet18-5c106cde.pth").write_bytes(b"")
    with pytest.raises(MissingWeightsError) as info:
        load_face_parser(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "face-parse-bisent" / "79999_iter.pth") in message
    assert "resnet18" not in message  # present
    assert f"python -m musetalk.download --version v15 --models_dir {tmp_path}" in message


# ---------------------------------------------------------------------------------------------------- input


def test_input_is_the_crop_resized_bilinearly_by_pillow_and_imagenet_normalised() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (300, 400, 3), np.uint8)
    crop = (-50, 20, 250, 320)  # partly left of the frame: black there, as PIL's crop
    body = Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]))
    rgb = np.asarray(body.crop(crop).resize((512, 512), Image.Resampling.BILINEAR), np.float32) / 255
    expected = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    x = parsing_input(frame, crop)
    assert x.shape == (1, 3, 512, 512) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert np.allclose(
        x[0, :, :, :80].numpy(), (-np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])[:, None, None], atol=1e-6
    )  # black padding, normalised


# ---------------------------------------------------------------------------------------------------- modes


def official_jaw_kernel() -> np.ndarray:
    """musetalk.md 6.2: 33x33, anchor at the centre; rows 10..20 a cone of widths 1, 3, ..., 21; rows 21..32 21 wide."""
    k = np.zeros((33, 33), np.uint8)
    for row, width in zip(range(10, 21), range(1, 22, 2)):
        k[row, 16 - width // 2 : 16 + width // 2 + 1] = 1
    k[21:33, 6:27] = 1
    return k


def official_cheeks(width: int) -> np.ndarray:
    """255 for columns <= 256 - width and >= 256 + width."""
    cols = np.arange(512)
    return np.broadcast_to(np.where((cols <= 256 - width) | (cols >= 256 + width), 255, 0).astype(np.uint8), (512, 512))


def official_jaw(labels: np.ndarray, width: int) -> np.ndarray:
    """The jaw steps of musetalk.md 6.2, one by one."""
    face = np.where(labels == 1, 255, 0).astype(np.uint8)
    dil = np.asarray(cv2.dilate(face, official_jaw_kernel(), iterations=1), np.uint8)
    ero = np.asarray(cv2.erode(dil, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2), np.uint8)
    cheeks = official_cheeks(width)
    region = (ero & cheeks) | (dil & ~cheeks)
    keep = ((region == 255) & (labels != 10)) | np.isin(labels, [11, 12, 13])
    return np.where(keep, 255, 0).astype(np.uint8)


def test_ellipse_35x3_is_a_row_with_one_pixel_above_and_below() -> None:
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))
    expected = np.zeros((3, 35), np.uint8)
    expected[1] = 1
    expected[0, 17] = expected[2, 17] = 1
    np.testing.assert_array_equal(element, expected)


def stripes() -> np.ndarray:
    """Every class 0..18 in a band of 26 rows (the rest background)."""
    labels = np.zeros((512, 512), np.int64)
    for c in range(N):
        labels[26 * c : 26 * (c + 1)] = c
    return labels


@pytest.mark.parametrize(("mode", "classes"), [("raw", {1, 11, 12, 13}), ("neck", {1, 11, 12, 13, 14})])
def test_raw_and_neck_keep_their_classes(mode: str, classes: set[int]) -> None:
    labels = stripes()
    mask = labels_to_mask(labels, mode)
    assert mask.dtype == np.uint8 and mask.shape == (512, 512)
    for c in range(N):
        assert np.all(mask[labels == c] == (255 if c in classes else 0)), c


def test_jaw_dilation_grows_the_skin_by_a_cone_below_and_16_px_above() -> None:
    labels = np.zeros((512, 512), np.int64)
    labels[100:200, 200:312] = 1  # skin, wholly inside the middle band (cols 167..345 for 90 px cheeks)
    mask = labels_to_mask(labels, "jaw", 90)
    expected = np.zeros((512, 512), np.uint8)
    expected[84:196, 190:322] = 255  # +-10 px sideways, 16 rows above
    for row, half in zip(range(196, 206), range(9, -1, -1)):  # below the chin: 9, 8, ..., 0 px sideways
        expected[row, 200 - half : 312 + half] = 255
    np.testing.assert_array_equal(mask, expected)


def test_jaw_narrows_the_skin_on_the_cheeks_only() -> None:
    labels = np.zeros((512, 512), np.int64)
    labels[100:200, 100:412] = 1  # skin across both cheeks
    mask = labels_to_mask(labels, "jaw", 90)
    np.testing.assert_array_equal(mask, official_jaw(labels, 90))
    row = mask[150]
    # Dilated skin spans 90..421; two erosions by the 35-wide row take 2 x 17 px off each side, on the cheeks only.
    assert not row[:124].any() and row[124:388].all() and not row[388:].any()
    # Vertically each erosion takes one row: the cheeks start at row 86, the middle at the dilated top, row 84.
    assert not mask[:86, :167].any() and mask[86, 124:167].all()
    assert mask[84, 167:346].all() and not mask[83].any()
    wide = labels_to_mask(labels, "jaw", 0)  # all cheek: eroded everywhere
    assert not wide[84:86].any() and wide[150, 124:388].all() and not wide[150, :124].any()


def test_jaw_drops_the_nose_and_keeps_mouth_and_lips_anywhere() -> None:
    labels = np.zeros((512, 512), np.int64)
    labels[100:300, 180:330] = 1
    labels[150:170, 240:270] = 10  # nose inside the skin
    labels[200:205, 240:245] = 4  # an eye inside the skin: in the dilated region, kept
    labels[400:410, 20:30] = 11  # mouth and lips far from any skin
    labels[420:430, 20:30] = 12
    labels[440:450, 20:30] = 13
    labels[460:470, 20:30] = 14  # neck: not in jaw mode
    labels[10:20, 20:30] = 17  # hair away from the skin
    mask = labels_to_mask(labels, "jaw", 90)
    assert not mask[150:170, 240:270].any()
    assert mask[200:205, 240:245].all()
    assert mask[400:410, 20:30].all() and mask[420:430, 20:30].all() and mask[440:450, 20:30].all()
    assert not mask[460:470, 20:30].any() and not mask[10:20, 20:30].any()
    np.testing.assert_array_equal(mask, official_jaw(labels, 90))


def test_cheek_mask_columns() -> None:
    for width in (90, 80):
        mask = cheek_mask(width)
        np.testing.assert_array_equal(mask, official_cheeks(width))
        assert mask[0, 256 - width] == 255 and mask[0, 257 - width] == 0
        assert mask[511, 255 + width] == 0 and mask[511, 256 + width] == 255


def test_random_label_maps_follow_the_official_rules() -> None:
    rng = np.random.default_rng(3)
    blobs = cv2.resize(rng.integers(0, N, (32, 32)).astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST)
    labels = blobs.astype(np.int64)
    for width in (90, 80, 30):
        np.testing.assert_array_equal(labels_to_mask(labels, "jaw", width), official_jaw(labels, width))


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros((512, 512), np.int64), "chin", 90),
        (np.zeros((512, 512), np.int64), "jaw", 257),
        (np.zeros((256, 256), np.int64), "raw", 90),
    ],
)
def test_bad_mode_width_or_shape(args: tuple) -> None:
    with pytest.raises(ValueError, match=r"parsing mode|cheek_width|label map"):
        labels_to_mask(*args)


# ---------------------------------------------------------------------------------------------------- to the crop


def test_blur_kernel_follows_the_crop_width() -> None:
    for width, k in [(200, 21), (300, 31), (450, 45)]:  # int(0.1*S//2*2)+1, musetalk.md 6.3
        region = np.zeros((width, width), np.uint8)
        region[width // 2 :, width // 3 :] = 255
        np.testing.assert_array_equal(blur_mask(region), cv2.GaussianBlur(region, (k, k), 0))


def test_mask_goes_to_the_crop_as_upstream(
    astronaut: np.ndarray, astronaut_landmarks: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parsing mask resized with Pillow's bicubic to the crop, cut to the face box and the crop's lower half
    with PIL crop/paste, blurred: upstream get_image_prepare_material step by step."""
    disc = np.zeros((512, 512), np.uint8)
    cv2.circle(disc, (256, 300), 170, (1,), -1)
    labels = disc.astype(np.int64)
    labels[330:360, 200:312] = 12
    parser = FaceParser(net=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    monkeypatch.setattr(parser, "labels", lambda frame, crop: labels)
    box = face_box(astronaut_landmarks, astronaut.shape, "v15")
    crop = crop_box(box)
    x, y, x1, y1 = box
    x_s, y_s = crop[:2]
    size = (crop[2] - crop[0], crop[3] - crop[1])
    for mode in ("jaw", "raw"):
        mask_image = Image.fromarray(labels_to_mask(labels, mode, 90)).resize(size, Image.Resampling.BICUBIC)
        small = mask_image.crop((x - x_s, y - y_s, x1 - x_s, y1 - y_s))
        mask_image = Image.new("L", size, 0)
        mask_image.paste(small, (x - x_s, y - y_s, x1 - x_s, y1 - y_s))
        top = int(size[1] * 0.5)
        kept = Image.new("L", size, 0)
        kept.paste(mask_image.crop((0, top, size[0], size[1])), (0, top))
        k = int(0.1 * size[0] // 2 * 2) + 1
        expected = cv2.GaussianBlur(np.array(kept), (k, k), 0)
        got = parser.blend_mask(astronaut, box, crop, mode, 90)
        np.testing.assert_array_equal(got, expected)
        assert got.any()


# ---------------------------------------------------------------------------------------------------- prepare


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_prepare_uses_bisenet_when_its_weights_are_there(
    tmp_path: Path, models: Path, astronaut: np.ndarray, astronaut_landmarks: np.ndarray
) -> None:
    path = prepare_avatar(astronaut, "parsed", tmp_path, PrepareOptions(progress=False, models_dir=models))
    manifest = _manifest(path)
    assert manifest["mask"] == "bisenet-jaw" and manifest["cheek_width"] == 90
    avatar = load_avatar("parsed", tmp_path)
    box = as_box(avatar.face_boxes[0])
    crop = as_box(avatar.crop_boxes[0])
    # All-skin weights: the jaw mask covers the whole crop, so what is left is face box ∩ lower half, blurred.
    size = crop[2] - crop[0]
    region = np.zeros((size, size), np.uint8)
    region[max(box[1] - crop[1], size // 2) : box[3] - crop[1], box[0] - crop[0] : box[2] - crop[0]] = 255
    k = int(0.1 * size // 2 * 2) + 1
    np.testing.assert_array_equal(avatar.mask(0), cv2.GaussianBlur(region, (k, k), 0))
    assert not np.array_equal(avatar.mask(0), blend_mask(astronaut_landmarks, box, crop))  # not the oval
    parser = load_face_parser(models, device="cpu")
    np.testing.assert_array_equal(avatar.mask(0), parser.blend_mask(astronaut, box, crop, "jaw", 90))


def test_prepare_cli_modes_and_defaults_per_version(
    tmp_path: Path, models: Path, astronaut: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    cv2.imwrite(str(tmp_path / "face.png"), astronaut)
    base = [
        "--avatars_dir",
        str(tmp_path / "avatars"),
        "prepare",
        "--source",
        str(tmp_path / "face.png"),
        "--models_dir",
        str(models),
    ]
    assert main([*base, "--avatar_id", "v1raw", "--version", "v1"]) == 0
    assert main([*base, "--avatar_id", "neck", "--parsing_mode", "neck", "--cheek_width", "70"]) == 0
    assert main([*base, "--avatar_id", "jaw70", "--cheek_width", "70"]) == 0
    v1, neck, jaw = (_manifest(tmp_path / "avatars" / i) for i in ("v1raw", "neck", "jaw70"))
    assert v1["mask"] == "bisenet-raw" and "cheek_width" not in v1
    assert neck["mask"] == "bisenet-neck" and "cheek_width" not in neck
    assert jaw["mask"] == "bisenet-jaw" and jaw["cheek_width"] == 70
    capsys.readouterr()
    assert main(["--avatars_dir", str(tmp_path / "avatars"), "list"]) == 0
    assert "mask: bisenet-neck" in capsys.readouterr().out
    assert main([*base, "--avatar_id", "bad", "--cheek_width", "300"]) == 1
    assert "cheek_width" in capsys.readouterr().err


def test_prepare_falls_back_to_the_oval_without_weights(
    tmp_path: Path, astronaut: np.ndarray, astronaut_landmarks: np.ndarray
) -> None:
    path = prepare_avatar(
        astronaut, "oval", tmp_path, PrepareOptions(progress=False, models_dir=tmp_path / "no-models")
    )
    assert _manifest(path)["mask"] == "face-oval" and "cheek_width" not in _manifest(path)
    avatar = load_avatar("oval", tmp_path)
    box = as_box(avatar.face_boxes[0])
    crop = as_box(avatar.crop_boxes[0])
    np.testing.assert_array_equal(avatar.mask(0), blend_mask(avatar.landmarks[0], box, crop))
    np.testing.assert_allclose(avatar.landmarks[0], astronaut_landmarks, atol=0.5)


def test_a_parsing_mode_without_weights_is_an_error(
    tmp_path: Path, astronaut: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MissingWeightsError, match=r"79999_iter\.pth"):
        prepare_avatar(
            astronaut,
            "x",
            tmp_path / "avatars",
            PrepareOptions(progress=False, models_dir=tmp_path / "none", parsing_mode="jaw"),
        )
    assert not (tmp_path / "avatars").exists() or not any((tmp_path / "avatars").iterdir())
    cv2.imwrite(str(tmp_path / "face.png"), astronaut)
    assert (
        main(
            [
                "--avatars_dir",
                str(tmp_path / "avatars"),
                "prepare",
                "--source",
                str(tmp_path / "face.png"),
                "--avatar_id",
                "x",
                "--parsing_mode",
                "raw",
                "--models_dir",
                str(tmp_path / "none"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "resnet18-5c106cde.pth" in err and "python -m musetalk.download" in err and "Traceback" not in err
