"""Batched augmentation on the training device, with per-image randomness.

A batch arrives as uint8 N x H x W x 3 on the device (the whole split lives there). Every operation
below draws one random parameter per image as a tensor and applies it to the whole batch in a few
kernels: no per-image Python, no host round trip. Cheap geometric and colour operations run at the
stored resolution; the batch is resized to the model's input size afterwards (for flips, crops,
rotations and jitter this is equivalent up to interpolation, and it is 49x cheaper at 32 -> 224).

Policies (``AugConfig.aug``):
- ``none``: resize + normalise only.
- ``basic``: reflect-pad 4 px, random crop back, horizontal flip 0.5 (the CIFAR standard).
- ``seed``: the original study's policy -- hflip 0.5, vflip 0.2, rotation uniform in +-40 degrees
  (zero fill), colour jitter brightness/contrast/saturation 0.2 and hue 0.1, random erasing 0.5
  (area 2-33 %, aspect 0.3-3.3, zero fill) -- in that order, as its torchvision pipeline did.
- ``strong``: one operation per image drawn from TrivialAugment-Wide's set with a uniform random
  magnitude, then pad-crop, hflip and random erasing 0.25.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Rec. 601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _bernoulli(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def flip(x: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    """Flip each image along ``dim`` (3: horizontal, 2: vertical) with probability p."""
    return torch.where(_per_image(_bernoulli(len(x), p, x.device)), x.flip(dim), x)


def pad_crop(x: torch.Tensor, pad: int, hflip_p: float = 0.0) -> torch.Tensor:
    """Reflect-pad by ``pad`` px and crop back at a random offset per image, mirroring each crop
    horizontally with probability ``hflip_p`` -- all in one gather over the flattened padded planes."""
    n, c, h, w = x.shape
    d = x.device
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").flatten(2)  # n x c x (h+2p)(w+2p)
    oy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=d)
    ox = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=d)
    cols = torch.arange(w, device=d).view(1, 1, w)
    cols = torch.where(_bernoulli(n, hflip_p, d).view(n, 1, 1), w - 1 - cols, cols)
    index = (oy + torch.arange(h, device=d).view(1, h, 1)) * (w + 2 * pad) + ox + cols  # n x h x w
    return padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def affine(x: torch.Tensor, angle_deg: torch.Tensor, shear_x=None, shear_y=None, tx=None, ty=None) -> torch.Tensor:
    """Rotate (degrees), shear (tan of the angle) and translate (fraction of the side) each image about
    its centre with its own parameters, zero fill, in one grid_sample."""
    n = len(x)
    zeros = torch.zeros(n, device=x.device)
    shear_x = zeros if shear_x is None else shear_x
    shear_y = zeros if shear_y is None else shear_y
    tx = zeros if tx is None else tx
    ty = zeros if ty is None else ty
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    # grid_sample maps output coordinates to input ones: the inverse rotation, then shear.
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones_like(shear_x), shear_x], -1),
                         torch.stack([shear_y, torch.ones_like(shear_y)], -1)], -2)
    theta = torch.cat([rot @ shear, torch.stack([-2 * tx, -2 * ty], -1)[..., None]], -1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust(x: torch.Tensor, brightness=None, contrast=None, saturation=None, hue=None) -> torch.Tensor:
    """Per-image colour factors (1 = unchanged; hue in turns, 0 = unchanged), torchvision's formulas.

    Hue is a rotation of the chroma plane in YIQ space: one 3x3 matrix per image instead of a per-pixel
    HSV round trip (the same as torchvision's hue shift up to the HSV/YIQ difference)."""
    if brightness is not None:
        x = (x * _per_image(brightness)).clamp_(0, 1)
    if contrast is not None:
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + (x - mean) * _per_image(contrast)).clamp_(0, 1)
    if saturation is not None:
        gray = grayscale(x)
        x = (gray + (x - gray) * _per_image(saturation)).clamp_(0, 1)
    if hue is not None:
        rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
        yiq2rgb = torch.linalg.inv(rgb2yiq)
        a = 2 * math.pi * hue
        cos, sin, one, zero = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
        rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                           torch.stack([zero, sin, cos], -1)], -2)
        m = yiq2rgb @ rot @ rgb2yiq  # N x 3 x 3
        x = torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)
    return x


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """torchvision ColorJitter semantics with a factor per image (fixed order b, c, s, h)."""
    n, d = len(x), x.device
    return adjust(x, _uniform(n, 1 - brightness, 1 + brightness, d), _uniform(n, 1 - contrast, 1 + contrast, d),
                  _uniform(n, 1 - saturation, 1 + saturation, d), _uniform(n, -hue, hue, d))


def random_erasing(x: torch.Tensor, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0.0) -> torch.Tensor:
    """torchvision RandomErasing with a rectangle per image: area ~ U(scale) of the image, log-aspect
    ~ U(log ratio), clipped to fit, filled with ``value``."""
    n, _, h, w = x.shape
    d = x.device
    area = _uniform(n, *scale, d) * h * w
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), d))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, device=d) * (h - eh + 1)).long()
    left = (torch.rand(n, device=d) * (w - ew + 1)).long()
    rows = torch.arange(h, device=d).view(1, h, 1)
    cols = torch.arange(w, device=d).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    mask = inside & _bernoulli(n, p, d).view(-1, 1, 1)
    return x.masked_fill(mask[:, None], value)


# TrivialAugment-Wide's operation set and magnitude ranges (Mueller & Hutter 2021, torchvision).
_STRONG_OPS = ("identity", "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
               "autocontrast", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """One operation per image, uniformly drawn, with a uniform magnitude and sign (TrivialAugment-Wide)."""
    n, d = len(x), x.device
    op = torch.randint(0, len(_STRONG_OPS), (n,), device=d)
    mag = torch.rand(n, device=d)
    sign = torch.where(_bernoulli(n, 0.5, d), 1.0, -1.0)

    def pick(name: str, value: torch.Tensor, neutral: float) -> torch.Tensor:
        return torch.where(op == _STRONG_OPS.index(name), value, torch.full_like(value, neutral))

    factor = 1 + 0.99 * mag * sign  # enhance factors in [0.01, 1.99]
    x = affine(x, pick("rotate", 135.0 * mag * sign, 0.0), pick("shear_x", 0.99 * mag * sign, 0.0),
               pick("shear_y", 0.99 * mag * sign, 0.0), pick("translate_x", mag * sign, 0.0) * 32 / x.shape[-1],
               pick("translate_y", mag * sign, 0.0) * 32 / x.shape[-2])
    x = adjust(x, brightness=pick("brightness", factor, 1.0), contrast=pick("contrast", factor, 1.0),
               saturation=pick("color", factor, 1.0))
    # sharpness: blend with a 3x3 smoothed copy (PIL's SMOOTH kernel)
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=d).div(13).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = (blurred + (x - blurred) * _per_image(pick("sharpness", factor, 1.0))).clamp_(0, 1)
    # posterize to 2..8 bits
    step = 2.0 ** (8 - _per_image(pick("posterize", (8 - (mag * 6.99).floor()), 8.0)))
    x = torch.floor(x * 255 / step) * step / 255
    # solarize above a threshold in [0, 1]
    threshold = _per_image(pick("solarize", 1 - mag, 1.01))
    x = torch.where(x >= threshold, 1 - x, x)
    # autocontrast: stretch each channel to [0, 1]
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    stretched = (x - lo) / (hi - lo).clamp_min(1e-3)
    return torch.where(_per_image(op == _STRONG_OPS.index("autocontrast")), stretched, x)


def augment(images: torch.Tensor, policy: str) -> torch.Tensor:
    """uint8 N x H x W x 3 on the device -> augmented float N x 3 x H x W in [0, 1], same size."""
    x = to_float(images)
    if policy == "none":
        return x
    if policy == "basic":
        return pad_crop(x, 4, hflip_p=0.5)
    if policy == "seed":
        x = flip(flip(x, 0.5, dim=3), 0.2, dim=2)
        x = affine(x, _uniform(len(x), -40.0, 40.0, x.device))
        x = color_jitter(x, 0.2, 0.2, 0.2, 0.1)
        return random_erasing(x, 0.5)
    if policy == "strong":
        x = pad_crop(trivial_augment(x), 4, hflip_p=0.5)
        return random_erasing(x, 0.25)
    raise ValueError(f"unknown augmentation policy {policy!r}")


class BatchTransform:
    """The device-side input pipeline: augment (training only), resize, normalise, memory format."""

    def __init__(self, policy: str, img_size: int, mean, std, channels_last: bool = False):
        self.policy = policy
        self.img_size = img_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = augment(images, self.policy) if train else to_float(images)
        # Normalise before resizing: bilinear interpolation is linear with weights summing to 1, so the
        # result is identical, and the per-pixel work happens at the small size (49x fewer at 32 -> 224).
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
