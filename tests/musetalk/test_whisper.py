"""Encoder building, checkpoint loading (HF folder, openai tiny.pt) and the 5 stacked states."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import WhisperForConditionalGeneration, WhisperModel

from musetalk.whisper import (
    encoder_states,
    load_encoder_v1,
    load_encoder_v15,
    whisper_tiny_config,
)


def test_tiny_config_dims(tiny_encoder):
    c = whisper_tiny_config()
    assert (
        c.d_model,
        c.encoder_layers,
        c.encoder_attention_heads,
        c.encoder_ffn_dim,
        c.num_mel_bins,
        c.max_source_positions,
        c.vocab_size,
    ) == (384, 4, 6, 1536, 80, 1500, 51865)
    # openai-whisper's tiny encoder has 7,632,384 parameters without its positional buffer (1500 x 384),
    # which HF holds as a parameter.
    assert sum(p.numel() for p in tiny_encoder.parameters()) == 7_632_384 + 1500 * 384
    assert not tiny_encoder.training
    assert not any(p.requires_grad for p in tiny_encoder.parameters())


def _openai_checkpoint(dims: dict[str, int]) -> dict:
    """A synthetic openai-whisper checkpoint: openai names and shapes, random tensors, decoder keys included."""
    d, ctx, mels = dims["n_audio_state"], dims["n_audio_ctx"], dims["n_mels"]
    g = torch.Generator().manual_seed(3)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {
        "encoder.conv1.weight": r(d, mels, 3),
        "encoder.conv1.bias": r(d),
        "encoder.conv2.weight": r(d, d, 3),
        "encoder.conv2.bias": r(d),
        "encoder.positional_embedding": r(ctx, d),
        "encoder.ln_post.weight": r(d),
        "encoder.ln_post.bias": r(d),
        "decoder.token_embedding.weight": r(dims["n_vocab"], dims["n_text_state"]),
        "decoder.blocks.0.attn.key.weight": r(dims["n_text_state"], dims["n_text_state"]),
    }
    for i in range(dims["n_audio_layer"]):
        b = f"encoder.blocks.{i}."
        for name in ("query", "value", "out"):
            sd[b + f"attn.{name}.weight"], sd[b + f"attn.{name}.bias"] = r(d, d), r(d)
        sd[b + "attn.key.weight"] = r(d, d)
        for ln in ("attn_ln", "mlp_ln"):
            sd[b + f"{ln}.weight"], sd[b + f"{ln}.bias"] = r(d), r(d)
        sd[b + "mlp.0.weight"], sd[b + "mlp.0.bias"] = r(4 * d, d), r(4 * d)
        sd[b + "mlp.2.weight"], sd[b + "mlp.2.bias"] = r(d, 4 * d), r(d)
    return {"dims": dims, "model_state_dict": sd}


TINY_DIMS = dict(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)

# The mapping written out by hand (reference/probes.md "openai -> HF key map"), one entry per pattern.
EXPECTED = {
    "conv1.weight": "conv1.weight",
    "conv2.bias": "conv2.bias",
    "positional_embedding": "embed_positions.weight",
    "ln_post.weight": "layer_norm.weight",
    "blocks.2.attn.query.bias": "layers.2.self_attn.q_proj.bias",
    "blocks.0.attn.key.weight": "layers.0.self_attn.k_proj.weight",
    "blocks.3.attn.value.weight": "layers.3.self_attn.v_proj.weight",
    "blocks.1.attn.out.bias": "layers.1.self_attn.out_proj.bias",
    "blocks.1.attn_ln.weight": "layers.1.self_attn_layer_norm.weight",
    "blocks.0.mlp.0.weight": "layers.0.fc1.weight",
    "blocks.0.mlp.2.bias": "layers.0.fc2.bias",
    "blocks.3.mlp_ln.bias": "layers.3.final_layer_norm.bias",
}


def test_v1_loader_holds_exactly_the_openai_tensors(tmp_path):
    ckpt = _openai_checkpoint(TINY_DIMS)
    path = tmp_path / "tiny.pt"
    torch.save(ckpt, path)
    encoder = load_encoder_v1(path)
    hf = encoder.state_dict()
    openai = {k[len("encoder.") :]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    assert len(hf) == len(openai)  # strict both ways: nothing left over, nothing missing
    for src, dst in EXPECTED.items():
        assert torch.equal(hf[dst], openai[src]), (src, dst)
    # Every other tensor also arrives bit for bit (matched by value, each used once).
    remaining = {k: v for k, v in hf.items()}
    for name, tensor in openai.items():
        match = [k for k, v in remaining.items() if v.shape == tensor.shape and torch.equal(v, tensor)]
        assert len(match) == 1, name
        del remaining[match[0]]
    assert encoder.layers[0].self_attn.k_proj.bias is None  # openai's key has no bias, nor does HF's


def test_v1_loader_rejects_incomplete_and_foreign_checkpoints(tmp_path):
    ckpt = _openai_checkpoint(TINY_DIMS)
    del ckpt["model_state_dict"]["encoder.blocks.3.mlp_ln.bias"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match=r"final_layer_norm\.bias"):
        load_encoder_v1(tmp_path / "missing.pt")
    ckpt = _openai_checkpoint(TINY_DIMS)
    ckpt["model_state_dict"]["encoder.blocks.0.attn.key.bias"] = torch.zeros(384)
    torch.save(ckpt, tmp_path / "keybias.pt")
    with pytest.raises(KeyError, match=r"key\.bias"):
        load_encoder_v1(tmp_path / "keybias.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="openai-whisper"):
        load_encoder_v1(tmp_path / "other.pt")


@pytest.mark.parametrize("layout", ["WhisperModel/safetensors", "ForConditionalGeneration/bin"])
def test_v15_loader_takes_the_encoder_of_a_hf_folder(tmp_path, micro_config, layout):
    torch.manual_seed(4)
    if layout.startswith("WhisperModel"):
        model = WhisperModel(micro_config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
        source = model.encoder
    else:
        model = WhisperForConditionalGeneration(micro_config)
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "pytorch_model.bin")
        source = model.model.encoder
    micro_config.save_pretrained(tmp_path)
    encoder = load_encoder_v15(tmp_path, dtype=torch.float64)
    want = source.state_dict()
    got = encoder.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == torch.float64
        assert torch.equal(got[k], want[k].double()), k


def test_v15_loader_errors(tmp_path, micro_config):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_encoder_v15(tmp_path)
    micro_config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        load_encoder_v15(tmp_path)
    save_file({"decoder.x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="encoder"):
        load_encoder_v15(tmp_path)


def test_v15_states_equal_hf_hidden_states(tiny_encoder):
    mel = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(5))
    ours = encoder_states(tiny_encoder, mel, layer_norm_last=True)
    with torch.no_grad():
        hf = tiny_encoder(mel, output_hidden_states=True).hidden_states
    assert ours.shape == (2, 1500, 5, 384) and len(hf) == 5
    for layer in range(5):
        torch.testing.assert_close(ours[:, :, layer], hf[layer], rtol=0, atol=1e-5)


def _plain_forward(enc, mel: torch.Tensor) -> torch.Tensor:
    """openai-whisper AudioEncoder with include_embeddings, no ln_post, written from the formulas."""

    def ln(x, m):
        return F.layer_norm(x, (x.shape[-1],), m.weight, m.bias, eps=1e-5)

    x = F.gelu(F.conv1d(mel, enc.conv1.weight, enc.conv1.bias, padding=1))
    x = F.gelu(F.conv1d(x, enc.conv2.weight, enc.conv2.bias, stride=2, padding=1)).transpose(1, 2)
    x = x + enc.embed_positions.weight
    outs = [x]
    for layer in enc.layers:
        a = layer.self_attn
        h = ln(x, layer.self_attn_layer_norm)
        heads = a.num_heads
        q, k, v = (h @ p.weight.T + (p.bias if p.bias is not None else 0) for p in (a.q_proj, a.k_proj, a.v_proj))
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + o @ a.out_proj.weight.T + a.out_proj.bias
        h = ln(x, layer.final_layer_norm)
        x = x + F.gelu(h @ layer.fc1.weight.T + layer.fc1.bias) @ layer.fc2.weight.T + layer.fc2.bias
        outs.append(x)
    return torch.stack(outs, dim=2)


def test_v1_states_equal_plain_forward_and_differ_only_by_last_layer_norm(tiny_encoder):
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(6))
    raw = encoder_states(tiny_encoder, mel, layer_norm_last=False)
    with torch.no_grad():
        plain = _plain_forward(tiny_encoder, mel)
        normed = encoder_states(tiny_encoder, mel, layer_norm_last=True)
        ln_last = F.layer_norm(raw[:, :, 4], (384,), tiny_encoder.layer_norm.weight, tiny_encoder.layer_norm.bias)
    torch.testing.assert_close(raw, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(raw[:, :, :4], normed[:, :, :4])
    torch.testing.assert_close(normed[:, :, 4], ln_last, rtol=0, atol=1e-5)
    assert (normed[:, :, 4] - raw[:, :, 4]).abs().max() > 0.1


def test_encoder_states_rejects_wrong_mel_shape(micro_encoder):
    with pytest.raises(ValueError, match=r"\(B, 80, 3000\)"):
        encoder_states(micro_encoder, torch.zeros(1, 80, 100), layer_norm_last=True)
