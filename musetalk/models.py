"""MuseTalk networks: building them from configs and loading the official checkpoints.

The official code builds `UNet2DConditionModel(**musetalk.json)` and strictly loads a plain state dict into it;
the VAE is stabilityai/sd-vae-ft-mse. We do the same without `from_pretrained`, so the loading rules (strict keys,
legacy VAE attention names, weights_only) are ours and tested.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file as load_safetensors
from torch import nn

from .config import UNET_CONFIG_PATH, VAE_SCALING_FACTOR, check_version

DEFAULT_MODELS_DIR = Path("models")
FEATURE_DIM = 384  # whisper-tiny width = the UNet's cross_attention_dim


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal encoding added to the 50 audio tokens (interleaved sin/cos, as upstream)."""

    pe: torch.Tensor  # (1, max_len, d_model), a buffer

    def __init__(self, d_model: int = FEATURE_DIM, max_len: int = 5000) -> None:
        super().__init__()
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_len = x.size(1)
        if seq_len > self.pe.size(1):
            raise ValueError(f"sequence of {seq_len} tokens is longer than the encoding's {self.pe.size(1)}")
        return x + self.pe[:, :seq_len].to(device=x.device, dtype=x.dtype)


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`) that are not constructor args."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_unet(config: Mapping[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel(**_public(config))


def build_vae(config: Mapping[str, Any]) -> AutoencoderKL:
    # sd-vae-ft-mse's config.json has no scaling_factor; upstream relies on diffusers' default of 0.18215.
    return AutoencoderKL(**{"scaling_factor": VAE_SCALING_FACTOR, **_public(config)})


# ---------------------------------------------------------------------------------------------------- file layout


def _weights_file(folder: Path, official: str, safetensors: str) -> Path:
    """Prefer a .safetensors copy when present; otherwise the official file name (what the downloader writes)."""
    preferred = folder / safetensors
    return preferred if preferred.is_file() else folder / official


def _vae_weights(folder: Path) -> Path:
    return _weights_file(folder, "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class ModelPaths:
    """The official download layout under `root` for one model version."""

    root: Path = DEFAULT_MODELS_DIR
    version: str = "v15"

    def __post_init__(self) -> None:
        check_version(self.version)
        object.__setattr__(self, "root", Path(self.root))

    @property
    def unet(self) -> Path:
        if self.version == "v1":
            return self.root / "musetalk" / "pytorch_model.bin"
        return self.root / "musetalkV15" / "unet.pth"

    @property
    def unet_config(self) -> Path:
        if self.version == "v1":
            return self.root / "musetalk" / "musetalk.json"
        # The v1.5 config is architecturally identical to v1's, so the copy shipped with this package will do.
        own = self.root / "musetalkV15" / "musetalk.json"
        return own if own.is_file() else UNET_CONFIG_PATH

    @property
    def vae_dir(self) -> Path:
        return self.root / "sd-vae"

    @property
    def vae_config(self) -> Path:
        return self.vae_dir / "config.json"

    @property
    def vae_weights(self) -> Path:
        return _vae_weights(self.vae_dir)

    @property
    def whisper(self) -> Path:
        """v1: openai-whisper's tiny.pt; v1.5: a Hugging Face whisper-tiny folder."""
        if self.version == "v1":
            return self.root / "whisper" / "tiny.pt"
        return self.root / "whisper"

    @property
    def whisper_files(self) -> tuple[Path, ...]:
        if self.version == "v1":
            return (self.whisper,)
        folder = self.whisper
        weights = _weights_file(folder, "pytorch_model.bin", "model.safetensors")
        return folder / "config.json", weights, folder / "preprocessor_config.json"

    def required(self) -> list[Path]:
        return [self.unet, self.unet_config, self.vae_config, self.vae_weights, *self.whisper_files]

    def missing(self) -> list[Path]:
        return [p for p in self.required() if not p.is_file()]


class MissingWeightsError(FileNotFoundError):
    def __init__(self, missing: list[Path], version: str, root: Path = DEFAULT_MODELS_DIR) -> None:
        self.missing = list(missing)
        self.version = version
        command = f"python -m musetalk.download --version {version}"
        if Path(root) != DEFAULT_MODELS_DIR:
            command += f" --models_dir {root}"
        lines = [f"MuseTalk {version} weights are missing ({len(self.missing)} file(s)):"]
        lines += [f"  {p}" for p in self.missing]
        lines.append(f"Download them with: {command}")
        self.command = command
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # FileNotFoundError would otherwise format (errno, strerror)
        return self.args[0]


# ---------------------------------------------------------------------------------------------------- loading


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model built from its config."""


def device_and_dtype(device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """fp16 on CUDA (as the official realtime script), fp32 elsewhere (CPU half kernels are slow or missing)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from .safetensors, or from .bin/.pth without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_safetensors(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors, got {type(state).__name__}")
    return dict(state)


def _first(keys: set[str], n: int = 5) -> str:
    shown = sorted(keys)[:n]
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(shown) + more


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    wrong = {k for k in set(expected) & set(state) if expected[k].shape != state[k].shape}
    if wrong:
        first = sorted(wrong)[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es), e.g. {first}: checkpoint {tuple(state[first].shape)} "
            f"vs model {tuple(expected[first].shape)} (wrong config?)"
        )
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))


def _load_into(
    build: Callable[[Mapping[str, Any]], nn.Module],
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    source: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    # Building on the meta device skips the random init of ~900M parameters; assign=True then adopts the loaded
    # tensors, so nothing is allocated twice.
    with torch.device("meta"):
        model = build(config)
    _check_fits(model, state, source)
    # Cast the tensors rather than the module: diffusers' ModelMixin.to(dtype) logs a spurious warning.
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: tensors not set by the checkpoint: {_first(set(left))}")
    model.to(device=device).eval().requires_grad_(False)
    return model


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON config ({e})") from e


def load_unet(
    unet_path: Path, config_path: Path, device: torch.device | str, dtype: torch.dtype
) -> UNet2DConditionModel:
    return _load_into(
        build_unet, read_config(config_path), read_state_dict(unet_path), Path(unet_path), torch.device(device), dtype
    )


_LEGACY_ATTENTION = re.compile(
    r"^(?P<block>.+\.attentions\.\d+)\.(?P<old>query|key|value|proj_attn)\.(?P<kind>weight|bias)$"
)
_NEW_ATTENTION_NAME = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_vae_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map pre-0.14 diffusers attention names (query/key/value/proj_attn) to to_q/to_k/to_v/to_out.0.

    sd-vae-ft-mse's diffusion_pytorch_model.bin dates from before diffusers renamed its attention blocks;
    the tensors themselves are unchanged, only the names moved. Already-new names pass through.
    """
    renamed = {}
    for key, value in state.items():
        m = _LEGACY_ATTENTION.match(key)
        if m:
            key = f"{m['block']}.{_NEW_ATTENTION_NAME[m['old']]}.{m['kind']}"
        if key in renamed:
            raise CheckpointError(f"checkpoint holds both the legacy and the new name of {key}")
        renamed[key] = value
    return renamed


def load_vae(vae_dir: Path, device: torch.device | str, dtype: torch.dtype) -> AutoencoderKL:
    vae_dir = Path(vae_dir)
    weights = _vae_weights(vae_dir)
    if not weights.is_file():
        raise FileNotFoundError(f"no diffusion_pytorch_model.bin or .safetensors in {vae_dir}")
    state = rename_legacy_vae_keys(read_state_dict(weights))
    return _load_into(build_vae, read_config(vae_dir / "config.json"), state, weights, torch.device(device), dtype)


# ---------------------------------------------------------------------------------------------------- bundle


@dataclass
class MuseTalkModels:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    pe: PositionalEncoding
    device: torch.device
    dtype: torch.dtype
    version: str


def load_models(root: Path = DEFAULT_MODELS_DIR, version: str = "v15", device: str | None = None) -> MuseTalkModels:
    """UNet, VAE and PE for `version` from the official layout under `root` (the whisper encoder is loaded apart)."""
    paths = ModelPaths(Path(root), version)
    missing = paths.missing()
    if missing:
        raise MissingWeightsError(missing, version, Path(root))
    dev, dtype = device_and_dtype(device)
    unet = load_unet(paths.unet, paths.unet_config, dev, dtype)
    vae = load_vae(paths.vae_dir, dev, dtype)
    pe = PositionalEncoding().to(device=dev, dtype=dtype).eval()
    return MuseTalkModels(unet=unet, vae=vae, pe=pe, device=dev, dtype=dtype, version=version)
