"""An official-layout models folder holding tiny random weights of the real architectures.

The UNet and VAE use the reduced-width configs (same state_dict keys as the official checkpoints); the
whisper encoder keeps whisper-tiny's width (the UNet's cross-attention needs 384) with a small FFN and a
one-layer decoder, saved as a Hugging Face folder the way openai/whisper-tiny is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import WhisperModel

from musetalk import config
from musetalk.models import build_unet, build_vae
from musetalk.whisper import whisper_tiny_config


@dataclass
class TinyLayout:
    root: Path
    unet: torch.nn.Module  # the in-memory originals the files were written from
    vae: torch.nn.Module


def write_tiny_layout(root: Path, seed: int = 0, whisper: bool = True) -> TinyLayout:
    """Write models/musetalkV15, models/sd-vae and models/whisper under `root` (whisper=False: empty stubs)."""
    torch.manual_seed(seed)
    unet = build_unet(config.unet_tiny_config()).eval()
    vae = build_vae(config.vae_tiny_config()).eval()
    (root / "musetalkV15").mkdir(parents=True)
    (root / "musetalkV15" / "musetalk.json").write_text(
        json.dumps({"_class_name": "UNet2DConditionModel", **config.unet_tiny_config()})
    )
    torch.save(unet.state_dict(), root / "musetalkV15" / "unet.pth")
    (root / "sd-vae").mkdir()
    vae_config = {"_class_name": "AutoencoderKL", **config.vae_tiny_config()}
    (root / "sd-vae" / "config.json").write_text(json.dumps(vae_config))
    torch.save(vae.state_dict(), root / "sd-vae" / "diffusion_pytorch_model.bin")
    folder = root / "whisper"
    if whisper:
        cfg = whisper_tiny_config()
        cfg.encoder_ffn_dim, cfg.decoder_ffn_dim, cfg.decoder_layers = 128, 128, 1
        cfg.vocab_size, cfg.pad_token_id, cfg.decoder_start_token_id = 64, 0, 1
        cfg.bos_token_id, cfg.eos_token_id = 1, 2
        WhisperModel(cfg).save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text("{}")
    else:
        folder.mkdir()
        for name in ("config.json", "pytorch_model.bin", "preprocessor_config.json"):
            (folder / name).write_bytes(b"{}")  # only their presence is checked
    return TinyLayout(root, unet, vae)
