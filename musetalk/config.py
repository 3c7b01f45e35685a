"""Model configurations: the official full-size ones and reduced-width stand-ins with the same key set.

The reduced configs keep the full model's channel pattern (x2, x2, x1), so their state_dict keys are exactly
those of the official checkpoints: only tensor shapes differ. That lets tests exercise the real loading code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

UNET_CONFIG_PATH = Path(__file__).with_name("musetalk.json")

# Image sizes the official code assumes (its audio and video rates are core.units's).
FACE_SIZE = 256
LATENT_SIZE = FACE_SIZE // 8
VAE_SCALING_FACTOR = 0.18215

Version = Literal["v1", "v15"]
VERSIONS: tuple[Version, ...] = ("v1", "v15")


def check_version(version: str) -> Version:
    """`version` as a Version; ValueError unless it names a MuseTalk release this code supports."""
    if version not in VERSIONS:
        raise ValueError(f"unknown MuseTalk version {version!r}; expected one of {', '.join(VERSIONS)}")
    return version


def unet_config() -> dict[str, Any]:
    """The official musetalk.json (identical for v1 and v1.5), without diffusers' private keys."""
    cfg = json.loads(UNET_CONFIG_PATH.read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def unet_tiny_config() -> dict[str, Any]:
    return dict(unet_config(), block_out_channels=[16, 32, 64, 64], norm_num_groups=8, attention_head_dim=2)


# stabilityai/sd-vae-ft-mse config.json (no scaling_factor key upstream: diffusers' default 0.18215 applies).
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def vae_config() -> dict[str, Any]:
    return dict(VAE_CONFIG)


def vae_tiny_config() -> dict[str, Any]:
    return dict(VAE_CONFIG, block_out_channels=[16, 32, 64, 64], norm_num_groups=8)
