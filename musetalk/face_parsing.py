"""BiSeNet face parsing: the blend mask of the official MuseTalk (musetalk.md 6.2 and 6.3).

The network is face-parsing.PyTorch's BiSeNet as MuseTalk ships it: a ResNet18 context path (no spatial path: the
stride-8 ResNet feature takes its place), attention refinement at strides 16 and 32, a 256-channel feature fusion
and three output heads over the 19 CelebAMask-HQ classes, of which inference uses only the main one. Module names
equal the official ones, so ``models/face-parse-bisent/79999_iter.pth`` (the whole net) and the ImageNet
``resnet18-5c106cde.pth`` (torchvision layout, loaded into the context path first, as upstream's constructor does)
load strictly, with ``weights_only=True``.

Per avatar frame, as upstream's realtime preparation: the 1.5x square crop (black outside the frame) is resized to
512x512 by Pillow's bilinear filter and ImageNet-normalised; the argmax labels become a 0/255 mask by the mode's rule
(``labels_to_mask``); that mask is resized to the crop with Pillow's bicubic filter, kept inside the face box and the
lower half of the crop, and Gaussian-blurred (``musetalk.face.lower_face`` / ``blur_mask``, shared with the
face-oval fallback).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from musetalk.face import Box, blur_mask, check_parsing, lower_face

PARSING_DIR = "face-parse-bisent"
PARSING_WEIGHTS = "79999_iter.pth"  # the whole BiSeNet, trained 80k iterations on CelebAMask-HQ
RESNET_WEIGHTS = "resnet18-5c106cde.pth"  # torchvision's ImageNet ResNet18 (2017)
N_CLASSES = 19
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CelebAMask-HQ labels the modes read: 1 skin, 10 nose, 11 mouth, 12 upper lip, 13 lower lip, 14 neck.
SKIN, NOSE = 1, 10
MOUTH_AND_LIPS = (11, 12, 13)
RAW_LABELS = (SKIN, *MOUTH_AND_LIPS)
NECK_LABELS = (*RAW_LABELS, 14)


def _jaw_kernel() -> np.ndarray:
    """Upstream's 33x33 dilation kernel for ``jaw`` (anchor at the centre): no ones in rows 0..9, a cone of centred
    widths 1, 3, ..., 21 in rows 10..20, then 21 wide down to row 32. Dilating the skin with it grows the skin
    downwards by up to 6 px at the chin (a narrowing cone) and upwards by up to 16 px."""
    kernel = np.zeros((33, 33), np.uint8)
    for row in range(10, 33):
        half = min(row - 10, 10)
        kernel[row, 16 - half : 16 + half + 1] = 1
    return kernel


JAW_KERNEL = _jaw_kernel()
CHEEK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))  # eroded with twice on the cheeks


def cheek_mask(cheek_width: int) -> np.ndarray:
    """512x512 uint8: 255 in the columns <= 256 - cheek_width and >= 256 + cheek_width (upstream draws the two
    filled rectangles with cv2.rectangle, corners included), 0 in the band around the middle."""
    check_parsing("jaw", cheek_width)
    mask = np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8)
    centre = INPUT_SIZE // 2
    mask[:, : centre - cheek_width + 1] = 255
    mask[:, centre + cheek_width :] = 255
    return mask


def labels_to_mask(labels: np.ndarray, mode: str, cheek_width: int = 90) -> np.ndarray:
    """Upstream FaceParsing's rule: a 512x512 label map -> uint8 0/255 mask.

    ``raw``: skin, mouth and lips. ``neck``: the same and the neck. ``jaw``: the skin dilated with ``JAW_KERNEL``;
    on the cheeks (``cheek_mask``) that dilated skin eroded twice with a 35x3 ellipse instead; then every pixel of
    that region except the nose, plus mouth and lips wherever they are.
    """
    check_parsing(mode, cheek_width)
    if labels.shape != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected a {INPUT_SIZE}x{INPUT_SIZE} label map, got {labels.shape}")
    if mode == "raw":
        keep = np.isin(labels, RAW_LABELS)
    elif mode == "neck":
        keep = np.isin(labels, NECK_LABELS)
    else:
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, JAW_KERNEL, iterations=1)
        eroded = cv2.erode(dilated, CHEEK_KERNEL, iterations=2)
        region = np.where(cheek_mask(cheek_width) == 255, eroded, dilated)
        keep = ((region == 255) & (labels != NOSE)) | np.isin(labels, MOUTH_AND_LIPS)
    return np.where(keep, 255, 0).astype(np.uint8)


def crop_rgb(frame_bgr: np.ndarray, crop: Box) -> np.ndarray:
    """The crop box of a BGR frame as RGB, black where it lies outside the frame (as PIL's Image.crop)."""
    x1, y1, x2, y2 = crop
    h, w = frame_bgr.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frame_bgr[sy1:sy2, sx1:sx2, ::-1]
    return out


def parsing_input(frame_bgr: np.ndarray, crop: Box) -> torch.Tensor:
    """(1, 3, 512, 512) float32: the crop resized by Pillow's bilinear filter, to [0, 1], ImageNet-normalised."""
    image = Image.fromarray(crop_rgb(frame_bgr, crop)).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image, np.float32) / np.float32(255)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std)[None]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 0/255 parsing mask resized to (width, height) with Pillow's bicubic filter (upstream face_seg)."""
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------------------------------- network


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block in torchvision's names (conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class ResNet18(nn.Module):
    """ResNet18 without its classifier; returns the stride 8, 16 and 32 features (128, 256, 512 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)) for cin, cout, stride in stages
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stride-8 ResNet feature, refined stride-8 context, refined stride-16 context)."""
        feat8, feat16, feat32 = self.resnet(x)
        # The 1x1 global context, broadcast over the stride-32 grid (upstream: a nearest upsampling of it).
        sum32 = self.arm32(feat32) + self.conv_avg(_global_pool(feat32))
        up32 = self.conv_head32(F.interpolate(sum32, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat * atten + feat


class OutputHead(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face-parsing BiSeNet; ``forward`` gives the main head's logits at the input size.

    ``conv_out16`` / ``conv_out32`` are the training-time auxiliary heads: they are in the checkpoint (so they are
    here, for the strict load) but do not affect the main output, so inference skips them.
    """

    def __init__(self, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, n_classes)
        self.conv_out16 = OutputHead(128, 64, n_classes)
        self.conv_out32 = OutputHead(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------------------------------- loading


def parsing_files(models_dir: Path) -> tuple[Path, Path]:
    """(79999_iter.pth, resnet18-5c106cde.pth) in the official layout under models_dir."""
    folder = Path(models_dir) / PARSING_DIR
    return folder / PARSING_WEIGHTS, folder / RESNET_WEIGHTS


def missing_parsing_files(models_dir: Path) -> list[Path]:
    return [p for p in parsing_files(models_dir) if not p.is_file()]


def _with_bn_counters(module: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint saved before torch 0.4.1 (torchvision's 2017 resnet18) has no BatchNorm ``num_batches_tracked``
    (a counter that inference never reads): add zeros then, so that the load is otherwise strict."""
    state = dict(state)
    if not any(k.endswith(".num_batches_tracked") for k in state):
        for key, value in module.state_dict().items():
            if key.endswith(".num_batches_tracked"):
                state[key] = torch.zeros_like(value)
    return state


def _load_strict(module: nn.Module, path: Path, drop_prefix: str | None = None) -> None:
    from musetalk.models import _check_fits, read_state_dict

    state = read_state_dict(path)  # weights_only=True
    if drop_prefix is not None:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix)}
    state = _with_bn_counters(module, state)
    _check_fits(module, state, path)
    module.load_state_dict(state, strict=True)


class FaceParser:
    """A loaded BiSeNet and the per-frame steps around it (see the module docstring)."""

    def __init__(self, net: BiSeNet, device: torch.device) -> None:
        self.net = net
        self.device = device

    @torch.inference_mode()
    def labels(self, frame_bgr: np.ndarray, crop: Box) -> np.ndarray:
        """(512, 512) int64 class labels of the crop box of a BGR frame."""
        logits = self.net(parsing_input(frame_bgr, crop).to(self.device))
        return logits[0].argmax(0).cpu().numpy()

    def region(self, frame_bgr: np.ndarray, box: Box, crop: Box, mode: str, cheek_width: int) -> np.ndarray:
        """The unblurred crop-sized 0..255 region: the mode's mask at crop size, in the face box and lower half."""
        mask = labels_to_mask(self.labels(frame_bgr, crop), mode, cheek_width)
        return lower_face(resize_mask(mask, (crop[2] - crop[0], crop[3] - crop[1])), box, crop)

    def blend_mask(self, frame_bgr: np.ndarray, box: Box, crop: Box, mode: str, cheek_width: int) -> np.ndarray:
        """The crop-sized uint8 alpha mask, as upstream get_image_prepare_material."""
        return blur_mask(self.region(frame_bgr, box, crop, mode, cheek_width))


def load_face_parser(models_dir: Path, device: str | torch.device | None = None, version: str = "v15") -> FaceParser:
    """BiSeNet from ``models_dir/face-parse-bisent``, fp32 (as upstream), on CUDA when there is one.

    ``MissingWeightsError`` (naming the files and the download command for ``version``) when a file is missing;
    ``CheckpointError`` when a file does not fit the network.
    """
    missing = missing_parsing_files(models_dir)
    if missing:
        from musetalk.models import MissingWeightsError

        raise MissingWeightsError(missing, version, Path(models_dir))
    weights, resnet = parsing_files(models_dir)
    net = BiSeNet()
    _load_strict(net.cp.resnet, resnet, drop_prefix="fc.")  # as upstream's constructor: ImageNet backbone first
    _load_strict(net, weights)  # then the whole net, backbone included
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return FaceParser(net.to(dev).eval().requires_grad_(False), dev)
