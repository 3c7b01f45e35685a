"""Face encoding and single-step inference (musetalk/inference.py) on tiny random-weight models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from musetalk.inference import decode_latents, faces_to_latents, infer_faces
from musetalk.models import PositionalEncoding, load_models

SCALE = 0.18215


@pytest.fixture(scope="module")
def models(tiny_layout):
    return load_models(tiny_layout.root, "v15", device="cpu")


def random_faces(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- encoding


def test_faces_to_latents_matches_a_per_face_reference(models, tiny_layout):
    faces = random_faces(2)
    latents = faces_to_latents(models.vae, faces, batch_size=1)  # two chunks: exercises the concatenation
    assert latents.shape == (2, 8, 32, 32) and latents.dtype == torch.float32
    for i, face in enumerate(faces):
        rgb = face[:, :, [2, 1, 0]].astype(np.float32) / 255.0 * 2.0 - 1.0
        masked = rgb.copy()
        masked[128:, :, :] = -1.0
        for image, channels in ((masked, slice(0, 4)), (rgb, slice(4, 8))):
            x = torch.from_numpy(image).permute(2, 0, 1)[None]
            with torch.no_grad():
                expected = tiny_layout.vae.encode(x).latent_dist.mean * SCALE
            torch.testing.assert_close(latents[i : i + 1, channels], expected, atol=1e-3, rtol=1e-3)


def test_masked_latents_ignore_the_lower_half(models):
    faces = random_faces(1)
    changed = faces.copy()
    changed[:, 128:] = 255 - changed[:, 128:]
    a, b = faces_to_latents(models.vae, faces), faces_to_latents(models.vae, changed)
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    assert torch.equal(a, faces_to_latents(models.vae, faces))  # posterior mode: deterministic


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (np.zeros((1, 256, 256, 3), np.float32), TypeError),
        (np.zeros((256, 256, 3), np.uint8), ValueError),
        (np.zeros((1, 128, 128, 3), np.uint8), ValueError),
        (np.zeros((0, 256, 256, 3), np.uint8), ValueError),
    ],
)
def test_faces_to_latents_rejects_bad_input(models, bad, error):
    with pytest.raises(error, match="faces"):
        faces_to_latents(models.vae, bad)


# ------------------------------------------------------------------------------------------- decoding


class KnownImageVAE(torch.nn.Module):
    """Records the latents it is asked to decode and returns a fixed image with one value per RGB channel."""

    def __init__(self, rgb: tuple[float, float, float]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(scaling_factor=SCALE)
        self.rgb = rgb
        self.seen: torch.Tensor | None = None

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        self.seen = z.clone()
        image = torch.tensor(self.rgb).view(1, 3, 1, 1).expand(len(z), 3, 256, 256)
        return SimpleNamespace(sample=image.clone())


def test_decode_formula_on_a_known_image():
    # red -1.5 clamps to 0; green 0 -> 0.5*255 = 127.5 rounds (half to even) to 128; blue 1.2 clamps to 255.
    vae = KnownImageVAE((-1.5, 0.0, 1.2))
    z = torch.full((2, 4, 32, 32), SCALE * 3)
    out = decode_latents(vae, z)
    torch.testing.assert_close(vae.seen, torch.full_like(z, 3.0))
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert (out[..., 0] == 255).all() and (out[..., 1] == 128).all() and (out[..., 2] == 0).all()  # BGR


def test_decode_rounds_to_nearest():
    vae = KnownImageVAE((0.5 / 255 * 2 - 1 + 0.3 / 255 * 2, 200.6 / 255 * 2 - 1, 10.4 / 255 * 2 - 1))
    out = decode_latents(vae, torch.zeros(1, 4, 32, 32))
    assert tuple(out[0, 0, 0]) == (10, 201, 1)  # B, G, R


# ------------------------------------------------------------------------------------------- full step


def reference_faces(tiny_layout, features: torch.Tensor, latents: torch.Tensor) -> np.ndarray:
    """The upstream sequence written out step by step on the in-memory models the files were saved from."""
    with torch.no_grad():
        context = PositionalEncoding(384)(features)
        pred = tiny_layout.unet(latents, torch.tensor([0]), encoder_hidden_states=context).sample
        image = tiny_layout.vae.decode(pred / SCALE).sample
    image = np.clip(image.numpy() / 2 + 0.5, 0, 1)
    rgb = np.round(np.transpose(image, (0, 2, 3, 1)) * 255).astype(np.uint8)
    return rgb[..., ::-1]


@pytest.mark.parametrize("batch", [1, 4])
def test_infer_faces_matches_the_step_by_step_reference(models, tiny_layout, batch):
    torch.manual_seed(batch)
    features = torch.randn(batch, 50, 384)
    latents = faces_to_latents(models.vae, random_faces(batch, seed=batch))
    out = infer_faces(models, features, latents)
    assert out.shape == (batch, 256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference_faces(tiny_layout, features, latents))


def test_ndarray_input_and_the_audio_features_matter(models):
    latents = faces_to_latents(models.vae, random_faces(1)).repeat(2, 1, 1, 1)
    features = np.random.default_rng(0).standard_normal((2, 50, 384)).astype(np.float32)
    out = infer_faces(models, features, latents.numpy())
    np.testing.assert_array_equal(out, infer_faces(models, torch.from_numpy(features), latents))
    assert not np.array_equal(out[0], out[1])  # same face, different audio


@pytest.mark.parametrize(
    ("features", "latents", "error", "match"),
    [
        (torch.zeros(2, 50, 384), torch.zeros(3, 8, 32, 32), ValueError, "2 frames but latents 3"),
        (torch.zeros(2, 49, 384), torch.zeros(2, 8, 32, 32), ValueError, "features must have shape"),
        (torch.zeros(2, 50, 384), torch.zeros(2, 4, 32, 32), ValueError, "latents must have shape"),
        (torch.zeros(0, 50, 384), torch.zeros(0, 8, 32, 32), ValueError, "B>=1"),
        (torch.zeros(1, 50, 384, dtype=torch.int64), torch.zeros(1, 8, 32, 32), TypeError, "floating"),
        ([[0.0]], torch.zeros(1, 8, 32, 32), TypeError, "tensor or ndarray"),
    ],
)
def test_infer_faces_rejects_bad_input(models, features, latents, error, match):
    with pytest.raises(error, match=match):
        infer_faces(models, features, latents)
