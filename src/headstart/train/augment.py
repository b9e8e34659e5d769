"""Image augmentation on preprocessed batches, without torchvision.

Works on the normalised (N, 3, S, S) tensors the backbone already consumes, so the decoded dataset is kept
in memory once and each epoch only pays for cheap tensor ops. Seeded by a torch.Generator, so a resumed
run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from headstart.backbones.base import PreprocessConfig


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.6, 1.0)  # milder than ImageNet's 0.08: small data, small objects
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def augment_images(
    x: torch.Tensor, pre: PreprocessConfig, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """Random resized crop, horizontal flip and colour jitter on a normalised image batch."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    u = torch.rand(n, 6, generator=gen)
    for i in range(n):
        area = h * w * (cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * float(u[i, 0]))
        log_r = math.log(cfg.crop_ratio[0]) + (
            math.log(cfg.crop_ratio[1]) - math.log(cfg.crop_ratio[0])
        ) * float(u[i, 1])
        r = math.exp(log_r)
        cw = max(1, min(w, round(math.sqrt(area * r))))
        ch = max(1, min(h, round(math.sqrt(area / r))))
        top = int(float(u[i, 2]) * (h - ch + 1))
        left = int(float(u[i, 3]) * (w - cw + 1))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        if (ch, cw) != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if float(u[i, 4]) < cfg.flip:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return _colour_jitter(out, pre, gen, cfg)


def _colour_jitter(
    x: torch.Tensor, pre: PreprocessConfig, gen: torch.Generator, cfg: AugmentConfig
) -> torch.Tensor:
    """Brightness, contrast and saturation in 0..1 pixel space, then normalised back."""
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
    img = x * std + mean
    n = x.shape[0]
    f = 1 + (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor(
        [cfg.brightness, cfg.contrast, cfg.saturation]
    )
    img = img * f[:, 0].view(n, 1, 1, 1)
    m = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - m) * f[:, 1].view(n, 1, 1, 1) + m
    grey = (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]).expand_as(img)
    img = (img - grey) * f[:, 2].view(n, 1, 1, 1) + grey
    return (img.clamp(0, 1) - mean) / std
