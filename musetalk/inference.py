"""MuseTalk's single-step inference: face crops -> VAE latents, and (audio features, latents) -> face crops.

MuseTalk is not a diffusion sampler: one UNet call at t=0 maps [masked face latent | reference latent] plus the
audio tokens to the latent of the full face, which the VAE decodes.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from .config import FACE_SIZE, LATENT_SIZE
from .models import FEATURE_DIM, MuseTalkModels

AUDIO_TOKENS = 50  # 10 whisper steps x 5 encoder layers per video frame
LATENT_CHANNELS = 8  # 4 masked-face + 4 reference-face


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def _check_faces(faces: np.ndarray) -> None:
    if not isinstance(faces, np.ndarray) or faces.dtype != np.uint8:
        raise TypeError(f"faces must be a uint8 ndarray, got {getattr(faces, 'dtype', type(faces).__name__)}")
    if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or faces.shape[0] < 1:
        raise ValueError(f"faces must have shape (N>=1, {FACE_SIZE}, {FACE_SIZE}, 3), got {faces.shape}")


def faces_to_latents(vae: AutoencoderKL, faces_bgr: np.ndarray, batch_size: int = 8) -> torch.Tensor:
    """(N,256,256,3) uint8 BGR face crops -> (N,8,32,32) CPU float32 UNet input latents.

    Channels 0-3 encode the face with its lower half (rows 128..255) set to -1 in [-1,1] space, i.e. black:
    the region the UNet repaints. Channels 4-7 encode the whole face as the reference. Returned as float32 on
    the CPU whatever the VAE's dtype, because these are computed once per avatar and stored; `infer_faces`
    casts them to the model dtype.

    The posterior mode is used, so the latents are deterministic. The official realtime script samples
    from the posterior instead (`latent_dist.sample()`); its std is small, and the mode is what training used.
    """
    _check_faces(faces_bgr)
    weight = _param(vae)
    scale = vae.config.scaling_factor
    out = []
    with torch.inference_mode():
        for start in range(0, len(faces_bgr), batch_size):
            rgb = torch.from_numpy(np.ascontiguousarray(faces_bgr[start : start + batch_size, ..., ::-1]))
            # Same order of operations as upstream: /255 to [0,1], then Normalize(mean=0.5, std=0.5).
            full = (rgb.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
            masked = full.clone()
            masked[:, :, FACE_SIZE // 2 :, :] = -1.0
            # One encoder call for both halves of the input halves the kernel launches.
            both = torch.cat([masked, full]).to(device=weight.device, dtype=weight.dtype)
            latents = vae.encode(both).latent_dist.mode() * scale
            n = len(full)
            out.append(torch.cat([latents[:n], latents[n:]], dim=1).float().cpu())
    return torch.cat(out)


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor's values as a numpy array. On CUDA: copied asynchronously into pinned (page-locked) host
    memory from PyTorch's caching host allocator and waited for with an event on the current stream, so only this
    thread waits, for this copy, and the DMA is not staged through a pageable buffer. Elsewhere a plain copy."""
    if t.device.type != "cuda":
        return t.cpu().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    copied.synchronize()
    return host.numpy()  # keeps `host` alive; its block returns to the pinned cache when the array is freed


def decoded_pixels(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B,4,32,32) face latents (on the VAE's device and dtype) -> (B,256,256,3) uint8 BGR on the device."""
    image = vae.decode(latents / vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    # Scaled, rounded and flipped to BGR on the device: a quarter of the bytes cross to the host as uint8.
    return (image.permute(0, 2, 3, 1).flip(-1).float() * 255).round().to(torch.uint8).contiguous()


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """(B,4,32,32) face latents -> (B,256,256,3) uint8 BGR, C-contiguous (upstream's VAE.decode_latents)."""
    weight = _param(vae)
    with torch.inference_mode():
        return to_host(decoded_pixels(vae, latents.to(device=weight.device, dtype=weight.dtype)))


def unet_latents(models: MuseTalkModels, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """(B,50,384) audio feature chunks and (B,8,32,32) input latents, on the models' device and dtype -> (B,4,32,32)
    predicted face latents: positional encoding, then the UNet at t=0 (MuseTalk is one step, not a sampler)."""
    context = models.pe(features)
    timestep = torch.zeros(1, dtype=torch.long, device=latents.device)  # diffusers broadcasts it over the batch
    return models.unet(latents, timestep, encoder_hidden_states=context).sample


def _as_tensor(x: torch.Tensor | np.ndarray, name: str, shape_tail: tuple[int, ...]) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or ndarray, got {type(x).__name__}")
    if t.ndim != 1 + len(shape_tail) or tuple(t.shape[1:]) != shape_tail or t.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B>=1, {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t


def infer_faces(
    models: MuseTalkModels, features: torch.Tensor | np.ndarray, latents: torch.Tensor | np.ndarray
) -> np.ndarray:
    """B audio feature chunks (B,50,384) and B input latents (B,8,32,32) -> B faces (B,256,256,3) uint8 BGR."""
    feats = _as_tensor(features, "features", (AUDIO_TOKENS, FEATURE_DIM))
    lat = _as_tensor(latents, "latents", (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE))
    if len(feats) != len(lat):
        raise ValueError(f"features hold {len(feats)} frames but latents {len(lat)}")
    with torch.inference_mode():
        pred = unet_latents(
            models, feats.to(device=models.device, dtype=models.dtype), lat.to(device=models.device, dtype=models.dtype)
        )
        return to_host(decoded_pixels(models.vae, pred))
