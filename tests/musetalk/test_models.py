"""Model building, checkpoint layout and strict loading (musetalk/models.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from musetalk import config
from musetalk.models import (
    CheckpointError,
    MissingWeightsError,
    ModelPaths,
    PositionalEncoding,
    build_unet,
    build_vae,
    device_and_dtype,
    load_models,
    load_unet,
    load_vae,
    rename_legacy_vae_keys,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    with torch.device("meta"):  # shapes only: no memory, no random init
        return build_unet(config.unet_config()), build_vae(config.vae_config())


# ------------------------------------------------------------------------------------------- full-size shapes


def test_full_unet_matches_official_checkpoint_shape(full_models):
    unet, _ = full_models
    state = unet.state_dict()
    assert n_params(unet) == 849_947_844
    assert len(state) == 686
    assert state["conv_in.weight"].shape == (320, 8, 3, 3)
    assert state["conv_out.weight"].shape == (4, 320, 3, 3)
    channels = {
        "down_blocks.0": 320,
        "down_blocks.1": 640,
        "down_blocks.2": 1280,
        "mid_block": 1280,
        "up_blocks.1": 1280,
        "up_blocks.2": 640,
        "up_blocks.3": 320,
    }
    to_k = [k for k in state if k.endswith("attn2.to_k.weight")]
    assert len(to_k) == 16
    for key in to_k:
        width = next(c for prefix, c in channels.items() if key.startswith(prefix + "."))
        assert state[key].shape == (width, 384), key
        assert state[key.replace("to_k", "to_v")].shape == (width, 384), key


def test_full_vae_parameter_count(full_models):
    _, vae = full_models
    assert n_params(vae) == 83_653_863
    assert vae.config.scaling_factor == 0.18215


def test_tiny_configs_have_the_full_key_sets(full_models):
    unet, vae = full_models
    with torch.device("meta"):
        tiny_unet, tiny_vae = build_unet(config.unet_tiny_config()), build_vae(config.vae_tiny_config())
    assert set(tiny_unet.state_dict()) == set(unet.state_dict())
    assert set(tiny_vae.state_dict()) == set(vae.state_dict())
    assert n_params(tiny_unet) < n_params(unet) / 100


def test_build_unet_ignores_diffusers_private_keys():
    cfg = json.loads(config.UNET_CONFIG_PATH.read_text())
    assert "_class_name" in cfg
    with torch.device("meta"):
        assert build_unet(cfg).config.in_channels == 8


# ------------------------------------------------------------------------------------------- positional encoding


def test_positional_encoding_matches_the_formula():
    pe = PositionalEncoding()
    assert pe.pe.shape == (1, 5000, 384)
    expected = torch.zeros(60, 384, dtype=torch.float64)
    for p in range(60):
        for i in range(192):
            angle = p * 10000.0 ** (-2 * i / 384)
            expected[p, 2 * i] = math.sin(angle)
            expected[p, 2 * i + 1] = math.cos(angle)
    torch.testing.assert_close(pe.pe[0, :60].double(), expected, atol=2e-5, rtol=0)
    x = torch.randn(3, 50, 384)
    torch.testing.assert_close(pe(x), x + expected[:50].float(), atol=2e-5, rtol=0)
    assert "pe" in pe.state_dict()  # persistent buffer, as upstream


def test_positional_encoding_follows_input_dtype_and_rejects_too_long():
    pe = PositionalEncoding(max_len=10)
    assert pe(torch.zeros(1, 10, 384, dtype=torch.float16)).dtype == torch.float16
    with pytest.raises(ValueError, match="11 tokens"):
        pe(torch.zeros(1, 11, 384))


# ------------------------------------------------------------------------------------------- layout and errors

V15_FILES = [
    "musetalkV15/unet.pth",
    "sd-vae/config.json",
    "sd-vae/diffusion_pytorch_model.bin",
    "whisper/config.json",
    "whisper/pytorch_model.bin",
    "whisper/preprocessor_config.json",
]
V1_FILES = [
    "musetalk/pytorch_model.bin",
    "musetalk/musetalk.json",
    "sd-vae/config.json",
    "sd-vae/diffusion_pytorch_model.bin",
    "whisper/tiny.pt",
]


@pytest.mark.parametrize(("version", "files"), [("v15", V15_FILES), ("v1", V1_FILES)])
def test_missing_lists_every_file_and_the_command(tmp_path, version, files):
    paths = ModelPaths(tmp_path, version)
    assert sorted(paths.missing()) == sorted(tmp_path / f for f in files)
    with pytest.raises(MissingWeightsError) as err:
        load_models(tmp_path, version)
    message = str(err.value)
    lines = message.splitlines()
    for f in files:
        assert f"  {tmp_path / f}" in lines
    assert f"python -m musetalk.download --version {version} --models_dir {tmp_path}" in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_command_for_the_default_folder():
    err = MissingWeightsError([Path("models/musetalkV15/unet.pth")], "v15")
    assert str(err).splitlines()[-1].endswith("python -m musetalk.download --version v15")


def test_v15_config_falls_back_to_the_shipped_one(tmp_path):
    paths = ModelPaths(tmp_path, "v15")
    assert paths.unet_config == config.UNET_CONFIG_PATH
    (tmp_path / "musetalkV15").mkdir()
    (tmp_path / "musetalkV15" / "musetalk.json").write_text("{}")
    assert paths.unet_config == tmp_path / "musetalkV15" / "musetalk.json"


def test_safetensors_alternatives_count_as_present(tmp_path):
    for f in V15_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    paths = ModelPaths(tmp_path, "v15")
    assert paths.missing() == []
    for old, new in [
        ("sd-vae/diffusion_pytorch_model.bin", "sd-vae/diffusion_pytorch_model.safetensors"),
        ("whisper/pytorch_model.bin", "whisper/model.safetensors"),
    ]:
        (tmp_path / old).rename(tmp_path / new)
    assert paths.missing() == []
    assert paths.vae_weights.name == "diffusion_pytorch_model.safetensors"


def test_unknown_version_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="v2"):
        ModelPaths(tmp_path, "v2")


def test_device_and_dtype():
    assert device_and_dtype("cpu") == (torch.device("cpu"), torch.float32)
    assert device_and_dtype("cuda:0") == (torch.device("cuda:0"), torch.float16)
    dev, _ = device_and_dtype()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------- loading


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    a, b = loaded.state_dict(), original.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_models_restores_the_saved_weights(tiny_layout):
    models = load_models(tiny_layout.root, "v15", device="cpu")
    assert (models.device, models.dtype, models.version) == (torch.device("cpu"), torch.float32, "v15")
    assert_same_weights(models.unet, tiny_layout.unet)
    assert_same_weights(models.vae, tiny_layout.vae)
    for module in (models.unet, models.vae, models.pe):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert models.unet.config.block_out_channels == config.unet_tiny_config()["block_out_channels"]


def test_load_unet_casts_to_the_requested_dtype(tiny_layout):
    unet = load_unet(
        tiny_layout.root / "musetalkV15/unet.pth", tiny_layout.root / "musetalkV15/musetalk.json", "cpu", torch.float16
    )
    assert {p.dtype for p in unet.parameters()} == {torch.float16}
    torch.testing.assert_close(unet.conv_in.weight.float(), tiny_layout.unet.conv_in.weight.half().float())


def _unet_with_state(tmp_path: Path, state: dict, suffix: str = ".pth") -> Path:
    path = tmp_path / f"unet{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_load_unet_from_safetensors(tiny_layout, tmp_path):
    path = _unet_with_state(tmp_path, tiny_layout.unet.state_dict(), ".safetensors")
    assert_same_weights(
        load_unet(path, tiny_layout.root / "musetalkV15/musetalk.json", "cpu", torch.float32), tiny_layout.unet
    )


def test_strict_loading_names_missing_and_unexpected_keys(tiny_layout, tmp_path):
    cfg = tiny_layout.root / "musetalkV15/musetalk.json"
    state = dict(tiny_layout.unet.state_dict())
    del state["conv_out.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): conv_out.bias"):
        load_unet(_unet_with_state(tmp_path, state), cfg, "cpu", torch.float32)
    state = dict(tiny_layout.unet.state_dict(), **{"module.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): module.extra"):
        load_unet(_unet_with_state(tmp_path, state), cfg, "cpu", torch.float32)


def test_loading_into_the_wrong_config_names_a_shape_mismatch(tiny_layout, tmp_path):
    wrong = tmp_path / "musetalk.json"
    wrong.write_text(json.dumps(dict(config.unet_tiny_config(), block_out_channels=[32, 32, 64, 64])))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*wrong config"):
        load_unet(tiny_layout.root / "musetalkV15/unet.pth", wrong, "cpu", torch.float32)


def test_a_pickled_object_is_refused(tmp_path, tiny_layout):
    path = tmp_path / "unet.pth"
    torch.save({"state_dict": tiny_layout.unet.state_dict(), "step": 3}, path)
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_unet(path, tiny_layout.root / "musetalkV15/musetalk.json", "cpu", torch.float32)


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names sd-vae-ft-mse's 2022 .bin uses for the mid-block attention, written out independently."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for key, value in state.items():
        for new_name, old_name in old.items():
            marker = f".attentions.0.{new_name}."
            if marker in key:
                key = key.replace(marker, f".attentions.0.{old_name}.")
        out[key] = value
    return out


def test_vae_loads_legacy_attention_names(tiny_layout, tmp_path):
    legacy = _legacy_names(tiny_layout.vae.state_dict())
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    assert "decoder.mid_block.attentions.0.proj_attn.bias" in legacy
    assert sum(".to_q." in k or ".to_out.0." in k for k in legacy) == 0
    folder = tmp_path / "sd-vae"
    folder.mkdir()
    shutil.copy(tiny_layout.root / "sd-vae/config.json", folder / "config.json")
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")
    assert_same_weights(load_vae(folder, "cpu", torch.float32), tiny_layout.vae)


def test_vae_loads_new_names_from_safetensors(tiny_layout, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "sd-vae"
    folder.mkdir()
    shutil.copy(tiny_layout.root / "sd-vae/config.json", folder / "config.json")
    save_file(tiny_layout.vae.state_dict(), str(folder / "diffusion_pytorch_model.safetensors"))
    assert_same_weights(load_vae(folder, "cpu", torch.float32), tiny_layout.vae)


def test_rename_refuses_duplicate_names():
    t = torch.zeros(1)
    with pytest.raises(CheckpointError, match="both"):
        rename_legacy_vae_keys(
            {"encoder.mid_block.attentions.0.query.weight": t, "encoder.mid_block.attentions.0.to_q.weight": t}
        )


def test_vae_strict_loading(tiny_layout, tmp_path):
    folder = tmp_path / "sd-vae"
    folder.mkdir()
    shutil.copy(tiny_layout.root / "sd-vae/config.json", folder / "config.json")
    state = dict(tiny_layout.vae.state_dict())
    del state["decoder.conv_out.weight"]
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.weight"):
        load_vae(folder, "cpu", torch.float32)
    (folder / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        load_vae(folder, "cpu", torch.float32)
