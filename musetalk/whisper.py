"""Whisper-tiny encoder for MuseTalk audio features: building, checkpoint loading, the 5 stacked states.

Both MuseTalk versions run the same network through transformers' ``WhisperEncoder``:
- v1.5 loads the Hugging Face ``openai/whisper-tiny`` folder and uses HF ``hidden_states`` (the last one is
  layer-normed);
- v1 was trained on openai-whisper's ``tiny.pt`` embeddings (no ``ln_post`` on the last state), so its checkpoint is
  mapped onto the HF module names and the last state is taken raw.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .config import check_version

N_STATES = 5  # embedding output + the 4 encoder layer outputs


def whisper_tiny_config() -> WhisperConfig:
    """The whisper-tiny dimensions (openai/whisper-tiny config.json)."""
    return WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_layers=4,
        decoder_attention_heads=6,
        decoder_ffn_dim=1536,
        max_source_positions=1500,
        max_target_positions=448,
    )


def build_encoder(config: WhisperConfig) -> WhisperEncoder:
    """A randomly initialised encoder in eval mode with gradients off (inference only)."""
    encoder = WhisperEncoder(config).eval()
    encoder.requires_grad_(False)
    return encoder


def moved(
    encoder: WhisperEncoder, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> WhisperEncoder:
    """`encoder` on `device` in `dtype` (the same module, as torch's Module.to)."""
    # transformers wraps PreTrainedModel.to with functools.wraps, which mypy reads as a function without `self`.
    return encoder.to(device=device, dtype=dtype)  # type: ignore[call-arg]


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_encoder_v15(
    whisper_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WhisperEncoder:
    """The encoder of a Hugging Face whisper folder (config.json + model.safetensors or pytorch_model.bin)."""
    whisper_dir = Path(whisper_dir)
    config_path = whisper_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in whisper folder {whisper_dir}")
    weights = next(
        (whisper_dir / n for n in ("model.safetensors", "pytorch_model.bin") if (whisper_dir / n).is_file()), None
    )
    if weights is None:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {whisper_dir}")
    config = WhisperConfig.from_pretrained(whisper_dir)
    state = _load_checkpoint(weights)
    # WhisperModel checkpoints name the encoder "encoder.", WhisperForConditionalGeneration ones "model.encoder.".
    prefixes = [p for p in ("model.encoder.", "encoder.") if any(k.startswith(p) for k in state)]
    if len(prefixes) != 1:
        raise ValueError(
            f"{weights}: expected encoder weights under exactly one of 'encoder.' / 'model.encoder.', "
            f"found prefixes {prefixes}"
        )
    prefix = prefixes[0]
    encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    encoder = build_encoder(config)
    encoder.load_state_dict(encoder_state, strict=True)
    return moved(encoder, device, dtype)


# openai-whisper AudioEncoder name -> transformers WhisperEncoder name (after the "encoder." prefix).
_OPENAI_TO_HF: list[tuple[str, str]] = [
    (r"^conv([12])\.(weight|bias)$", r"conv\1.\2"),
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^ln_post\.(weight|bias)$", r"layer_norm.\1"),
    (r"^blocks\.(\d+)\.attn\.query\.(weight|bias)$", r"layers.\1.self_attn.q_proj.\2"),
    (r"^blocks\.(\d+)\.attn\.key\.weight$", r"layers.\1.self_attn.k_proj.weight"),  # no bias on either side
    (r"^blocks\.(\d+)\.attn\.value\.(weight|bias)$", r"layers.\1.self_attn.v_proj.\2"),
    (r"^blocks\.(\d+)\.attn\.out\.(weight|bias)$", r"layers.\1.self_attn.out_proj.\2"),
    (r"^blocks\.(\d+)\.attn_ln\.(weight|bias)$", r"layers.\1.self_attn_layer_norm.\2"),
    (r"^blocks\.(\d+)\.mlp\.0\.(weight|bias)$", r"layers.\1.fc1.\2"),
    (r"^blocks\.(\d+)\.mlp\.2\.(weight|bias)$", r"layers.\1.fc2.\2"),
    (r"^blocks\.(\d+)\.mlp_ln\.(weight|bias)$", r"layers.\1.final_layer_norm.\2"),
]


def openai_encoder_key_to_hf(key: str) -> str:
    """Map one openai-whisper encoder key (without the "encoder." prefix) to the transformers name."""
    for pattern, replacement in _OPENAI_TO_HF:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"unknown openai-whisper encoder key {key!r}")


def config_from_openai_dims(dims: dict[str, int]) -> WhisperConfig:
    """WhisperConfig for an openai-whisper ModelDimensions dict (the MLP width is 4x the state in openai-whisper)."""
    try:
        return WhisperConfig(
            vocab_size=dims["n_vocab"],
            num_mel_bins=dims["n_mels"],
            d_model=dims["n_audio_state"],
            encoder_layers=dims["n_audio_layer"],
            encoder_attention_heads=dims["n_audio_head"],
            encoder_ffn_dim=4 * dims["n_audio_state"],
            max_source_positions=dims["n_audio_ctx"],
            decoder_layers=dims["n_text_layer"],
            decoder_attention_heads=dims["n_text_head"],
            decoder_ffn_dim=4 * dims["n_text_state"],
            max_target_positions=dims["n_text_ctx"],
        )
    except KeyError as e:
        raise ValueError(f"openai-whisper 'dims' lacks {e.args[0]!r}") from e


def load_encoder(
    path: str | Path, version: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WhisperEncoder:
    """The whisper encoder a MuseTalk version uses (ModelPaths.whisper): v1 tiny.pt, v1.5 a HF folder."""
    check_version(version)
    return (load_encoder_v1 if version == "v1" else load_encoder_v15)(path, device, dtype)


def load_encoder_v1(
    tiny_pt_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WhisperEncoder:
    """The encoder of an openai-whisper checkpoint (MuseTalk v1's models/whisper/tiny.pt), as a HF WhisperEncoder."""
    checkpoint = torch.load(Path(tiny_pt_path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise ValueError(f"{tiny_pt_path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    encoder_state = {
        openai_encoder_key_to_hf(k[len("encoder.") :]): v
        for k, v in checkpoint["model_state_dict"].items()
        if k.startswith("encoder.")
    }
    encoder = build_encoder(config_from_openai_dims(checkpoint["dims"]))
    encoder.load_state_dict(encoder_state, strict=True)
    return moved(encoder, device, dtype)


@torch.no_grad()
def encoder_states(encoder: WhisperEncoder, mel: torch.Tensor, layer_norm_last: bool) -> torch.Tensor:
    """(B, n_mels, 3000) log-mel -> (B, 1500, 5, d_model): the embedding output and the 4 layer outputs.

    ``layer_norm_last=True`` gives HF ``hidden_states`` (v1.5); False gives openai-whisper's
    ``include_embeddings`` output without ``ln_post`` (v1).
    """
    config = encoder.config
    expected = (config.num_mel_bins, 2 * config.max_source_positions)
    if mel.dim() != 3 or tuple(mel.shape[1:]) != expected:
        raise ValueError(f"mel must be (B, {expected[0]}, {expected[1]}), got {tuple(mel.shape)}")
    weight = encoder.conv1.weight
    x = mel.to(device=weight.device, dtype=weight.dtype)
    x = F.gelu(encoder.conv1(x))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight
    states = [x]
    for layer in encoder.layers:
        x = layer(x, None)
        states.append(x)
    if layer_norm_last:
        states[-1] = encoder.layer_norm(states[-1])
    return torch.stack(states, dim=2)
