"""Training-time augmentation on batches of decoded cells (float NCHW, 0..255).

Everything the model will meet in another laboratory and that can be simulated from one lab's
images: orientation (any rotation, flips), magnification (zoom 0.75x..1.3x, small shifts), stain
and colour (H&E-style stain-vector jitter in optical density, hue rotation, saturation including
full grayscale, brightness, contrast, per-channel gain), optics (Gaussian blur), sensor noise.
JPEG re-compression is applied earlier, to the file bytes, when the training cache is built.
All randomness comes from the ``torch.Generator`` passed in, so a seed fixes every draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

# Ruifrok & Johnston (2001) haematoxylin / eosin / DAB stain vectors (rows), as in scikit-image.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
# YIQ, for hue rotation about the luma axis.
_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float32
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


@dataclass(frozen=True)
class AugmentConfig:
    zoom: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.06  # fraction of the image size
    stain_scale: float = 0.1  # multiplicative jitter of each stain's optical density
    stain_shift: float = 0.03
    hue_degrees: float = 15.0
    saturation: tuple[float, float] = (0.5, 1.5)
    grayscale_p: float = 0.05
    brightness: float = 20.0
    contrast: tuple[float, float] = (0.75, 1.3)
    channel_gain: float = 0.08
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_std: float = 4.0


def _per_sample(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random rotation (any angle), flip, zoom and shift in one resampling pass."""
    n = x.shape[0]
    angle = _per_sample(n, 0, 2 * math.pi, g)
    zoom = torch.exp(_per_sample(n, math.log(cfg.zoom[0]), math.log(cfg.zoom[1]), g))
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tx, ty = (_per_sample(n, -cfg.shift, cfg.shift, g) * 2 for _ in range(2))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Reflection fills the corners with more slide background, not black.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def stain_jitter(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Perturb each stain's concentration in optical-density space (Tellez et al. 2018 style)."""
    n = x.shape[0]
    od = -torch.log((x.clamp(1, 255)) / 255.0)  # (N, 3, H, W) optical density
    hed = torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB)
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * cfg.stain_scale
    beta = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * cfg.stain_shift
    od2 = torch.einsum("ndhw,dc->nchw", hed * alpha + beta, _RGB_FROM_HED)
    return 255.0 * torch.exp(-od2)


def colour(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    # Hue rotation about the luma axis in YIQ.
    a = _per_sample(n, -cfg.hue_degrees, cfg.hue_degrees, g) * math.pi / 180
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)
    m = _RGB_FROM_YIQ @ rot @ _YIQ_FROM_RGB  # (N, 3, 3)
    x = torch.einsum("ncd,ndhw->nchw", m, x)
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sat = _per_sample(n, *cfg.saturation, g)
    sat = torch.where(torch.rand(n, generator=g) < cfg.grayscale_p, torch.zeros_like(sat), sat)
    x = gray + sat.view(n, 1, 1, 1) * (x - gray)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + _per_sample(n, *cfg.contrast, g).view(n, 1, 1, 1) * (x - mean)
    x = x + _per_sample(n, -cfg.brightness, cfg.brightness, g).view(n, 1, 1, 1)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * cfg.channel_gain
    return x * gain


def blur(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur on a random subset, one sigma per image (separable, depthwise)."""
    n, c, h, w = x.shape
    chosen = torch.nonzero(torch.rand(n, generator=g) < cfg.blur_p).flatten()
    if chosen.numel() == 0:
        return x
    sigma = _per_sample(chosen.numel(), *cfg.blur_sigma, g)
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = k / k.sum(1, keepdim=True)  # (m, 2r+1)
    sub = x[chosen].reshape(1, -1, h, w)  # each image-channel its own group
    kern = k.repeat_interleave(c, dim=0)
    sub = F.conv2d(
        F.pad(sub, (radius, radius, 0, 0), mode="reflect"), kern.view(-1, 1, 1, 2 * radius + 1), groups=sub.shape[1]
    )
    sub = F.conv2d(
        F.pad(sub, (0, 0, radius, radius), mode="reflect"), kern.view(-1, 1, 2 * radius + 1, 1), groups=sub.shape[1]
    )
    out = x.clone()
    out[chosen] = sub.view(-1, c, h, w)
    return out


def augment(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """uint8 NHWC in, augmented uint8 NHWC out (the model's input type, so training sees exactly
    the quantisation it will see in use)."""
    x = images.permute(0, 3, 1, 2).float()
    x = geometric(x, cfg, g)
    x = stain_jitter(x, cfg, g)
    x = colour(x, cfg, g)
    x = blur(x, cfg, g)
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(x.shape[0], 1, 1, 1, generator=g) * cfg.noise_std)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
