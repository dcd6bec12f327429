"""Batched augmentation on the training device, with per-image randomness.

A batch arrives as uint8 N x H x W x 3 on the device (the whole split lives there). Every operation
below draws one random parameter per image as a tensor and applies it to the whole batch in a few
kernels: no per-image Python, no host round trip. Cheap geometric and colour operations run at the
stored resolution; the batch is resized to the model's input size afterwards (for flips, crops,
rotations and jitter this is equivalent up to interpolation, and it is 49x cheaper at 32 -> 224).
Operations that only move or blank pixels (pad-crop, flips, erasing) run on the uint8 images; on CPU
the resize does too, pixel for pixel what PIL's bilinear resize gives (tested), and the float
conversion and normalisation happen once, in one multiply-add, at the output size.

The operations and their presets are ``config.AugConfig``; ``augment`` applies them in a fixed order,
drawing random numbers only for the operations that are on (an operation at 0 costs nothing), so a
preset yields the images its named policy gave before operations existed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugConfig

# Rec. 601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


# Every draw below takes the run's own generator (``loop.Generators``; None: torch's global one, as
# tests that seed it use): interleaved runs and other code drawing in between cannot shift them.
Gen = torch.Generator | None


def _uniform(n: int, low: float, high: float, device, generator: Gen = None) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def _bernoulli(n: int, p: float, device, generator: Gen = None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size + 1, 2 * size - 1) into [0, size) the way reflect padding does (the edge
    pixel is not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def pad_crop(
    x: torch.Tensor, pad: int, hflip_p: float = 0.0, vflip_p: float = 0.0, generator: Gen = None
) -> torch.Tensor:
    """Reflect-pad by ``pad`` px and crop back at a random offset per image, mirroring each crop
    horizontally with probability ``hflip_p`` and vertically with ``vflip_p`` (0: no draw at all).

    Works on any dtype and memory format (uint8 included): the padded image is never built; each
    output pixel copies its reflected source pixel (all C channels at once) by one ``index_select``
    over the (N * H * W) x C pixel rows, a view for a channels-last batch (how uint8 images arrive)."""
    n, c, h, w = x.shape
    d = x.device
    if pad:
        oy = torch.randint(-pad, pad + 1, (n, 1), device=d, generator=generator)
        ox = torch.randint(-pad, pad + 1, (n, 1), device=d, generator=generator)
    else:
        oy = ox = torch.zeros((n, 1), dtype=torch.long, device=d)
    cols = torch.arange(w, device=d).expand(n, w)
    if hflip_p:
        cols = torch.where(_bernoulli(n, hflip_p, d, generator).view(n, 1), w - 1 - cols, cols)  # mirror the crop
    rows = oy + torch.arange(h, device=d)  # n x h
    if vflip_p:
        rows = torch.where(_bernoulli(n, vflip_p, d, generator).view(n, 1), 2 * oy + h - 1 - rows, rows)
    rows = _reflect(rows, h)
    cols = _reflect(ox + cols, w)  # n x w
    batch = torch.arange(n, device=d).view(n, 1, 1)
    source = ((batch * h + rows[:, :, None]) * w + cols[:, None, :]).view(-1)  # flat pixel index, n*h*w
    pixels = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return pixels.index_select(0, source).view(n, h, w, c).permute(0, 3, 1, 2)


def affine(
    x: torch.Tensor,
    angle_deg: torch.Tensor,
    shear_x=None,
    shear_y=None,
    tx=None,
    ty=None,
    mirror_x=None,
    mirror_y=None,
    zoom=None,
) -> torch.Tensor:
    """Mirror (per-image bool masks, applied first), then rotate (degrees, positive turns clockwise as
    displayed, the opposite of torchvision's sign; every draw here is symmetric about 0), shear (tan of the angle),
    zoom (factor, > 1 enlarges) and translate (fraction of the side) each image about its centre with
    its own parameters, zero fill, in one grid_sample. A mirror lands output pixel centres exactly on
    input ones, so it is exact and costs nothing beyond the resampling the rotation needs anyway."""
    n = len(x)
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    zeros = torch.zeros_like(cos)
    shx, shy = (zeros if v is None else v for v in (shear_x, shear_y))
    tx, ty = (zeros if v is None else v for v in (tx, ty))
    # grid_sample maps output coordinates to input ones: [[cos, sin], [-sin, cos]] (the inverse
    # rotation) times [[1, shx], [shy, 1]], written out, plus the translation.
    theta = torch.stack(
        [cos + sin * shy, cos * shx + sin, -2 * tx, cos * shy - sin, cos - sin * shx, -2 * ty], -1
    ).view(n, 2, 3)
    if zoom is not None:  # output -> input coordinates: the linear part divided by the zoom factor
        theta = theta * torch.stack([1 / zoom, 1 / zoom, torch.ones_like(zoom)], -1).repeat(1, 2).view(n, 2, 3)
    if mirror_x is not None or mirror_y is not None:
        # Mirroring the input before the warp negates the input coordinate: a sign per theta row.
        no = torch.zeros(n, dtype=torch.bool, device=x.device)
        mx, my = (no if m is None else m for m in (mirror_x, mirror_y))
        theta = theta * torch.where(torch.stack([mx, my], -1), -1.0, 1.0).view(n, 2, 1)
    # The sampling grid, as F.affine_grid(theta, align_corners=False) builds it, by broadcasting: its
    # batched matmul against an N x H x W x 3 base grid costs ~4x more on small images.
    h, w = x.shape[-2:]
    gx = ((torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    gy = ((torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta.to(x.dtype).view(n, 6, 1, 1).unbind(1)
    grid = torch.stack([t[0] * gx + t[1] * gy + t[2], t[3] * gx + t[4] * gy + t[5]], -1)
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
        rgb2yiq = torch.tensor(
            [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device
        )
        yiq2rgb = torch.linalg.inv(rgb2yiq)
        a = 2 * math.pi * hue
        cos, sin, one, zero = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
        rot = torch.stack(
            [torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1), torch.stack([zero, sin, cos], -1)],
            -2,
        )
        m = yiq2rgb @ rot @ rgb2yiq  # N x 3 x 3
        x = torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)
    return x


def random_erasing(
    x: torch.Tensor, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3), value: float = 0.0, generator: Gen = None
) -> torch.Tensor:
    """torchvision RandomErasing with a rectangle per image: area ~ U(scale) of the image, log-aspect
    ~ U(log ratio), clipped to fit, filled with ``value``."""
    n, _, h, w = x.shape
    d = x.device
    area = _uniform(n, scale[0], scale[1], d, generator) * h * w
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), d, generator))
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, device=d, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, device=d, generator=generator) * (w - ew + 1)).long()
    rows = torch.arange(h, device=d).view(1, h)
    cols = torch.arange(w, device=d).view(1, w)
    # The rectangle is (rows in range) x (cols in range): two small masks, one full-size AND.
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + eh).view(-1, 1)) & _bernoulli(n, p, d, generator).view(-1, 1)
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + ew).view(-1, 1))
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], value)


# TrivialAugment-Wide's operation set and magnitude ranges (Mueller & Hutter 2021, torchvision).
STRONG_OPS = (
    "identity",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def trivial_draw(n: int, device, generator: Gen = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, TrivialAugment-Wide's draw: an operation index into ``STRONG_OPS``, uniformly, and a
    signed magnitude in (-1, 1): uniform size in [0, 1) times a fair sign (unsigned operations ignore
    the sign). The draw order (operation, size, sign) is what the presets' saved images depend on."""
    op = torch.randint(0, len(STRONG_OPS), (n,), device=device, generator=generator)
    size = torch.rand(n, device=device, generator=generator)
    sign = torch.where(_bernoulli(n, 0.5, device, generator), 1.0, -1.0)
    return op, size * sign


def trivial_apply(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Apply operation ``STRONG_OPS[op[i]]`` at signed ``magnitude[i]`` (in (-1, 1)) to image i of float
    N x 3 x H x W in [0, 1]. The ranges are torchvision's TrivialAugmentWide's at magnitude 1: rotate
    135 degrees, shear 0.99 (tan of the angle), translate 32 px, enhance factors 1 +- 0.99, posterize
    to 8 - floor(6.99 * size) bits (8 to 2, a seventh each), solarize above 1 - size. Differences
    from torchvision, each for the 32 px images this trains on: the geometry is bilinear, not nearest,
    and shears about the image's centre, not its corner (which at 32 px moves the content by up to a
    side's length); translation is continuous, not whole pixels; sharpness blurs the border against
    replicated edge pixels instead of leaving it; posterize's sizes give each bit count a seventh (torchvision's
    31 bins give 2 and 8 bits half the share of the others); there is no equalize."""
    size = magnitude.abs()

    def pick(name: str, value: torch.Tensor, neutral: float) -> torch.Tensor:
        return torch.where(op == STRONG_OPS.index(name), value, torch.full_like(value, neutral))

    def only(names: tuple[str, ...], changed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        # an image that drew none of ``names`` keeps its pixels: at their neutral values these
        # operations still resample or blend (float rounding), and the identity must be exact
        drew = torch.isin(op, torch.tensor([STRONG_OPS.index(name) for name in names], device=op.device))
        return torch.where(_per_image(drew), changed, kept)

    factor = 1 + 0.99 * magnitude  # enhance factors in [0.01, 1.99]
    warped = affine(
        x,
        pick("rotate", 135.0 * magnitude, 0.0),
        pick("shear_x", 0.99 * magnitude, 0.0),
        pick("shear_y", 0.99 * magnitude, 0.0),
        pick("translate_x", magnitude, 0.0) * 32 / x.shape[-1],
        pick("translate_y", magnitude, 0.0) * 32 / x.shape[-2],
    )
    x = only(("rotate", "shear_x", "shear_y", "translate_x", "translate_y"), warped, x)
    adjusted = adjust(
        x,
        brightness=pick("brightness", factor, 1.0),
        contrast=pick("contrast", factor, 1.0),
        saturation=pick("color", factor, 1.0),
    )
    x = only(("brightness", "contrast", "color"), adjusted, x)
    # sharpness: blend with a 3x3 smoothed copy (PIL's SMOOTH kernel)
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device).div(13).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    sharpened = (blurred + (x - blurred) * _per_image(pick("sharpness", factor, 1.0))).clamp(0, 1)
    x = only(("sharpness",), sharpened, x)
    # posterize to 2..8 bits: keep the grey level's top bits (8 bits: unchanged, no rounding at all)
    bits = _per_image(pick("posterize", 8 - (size * 6.99).floor(), 8.0))
    step = 2.0 ** (8 - bits)
    levels = (x * 255).round()  # an 8-bit level k arrives as k / 255, whose product with 255 may be k - 1e-5
    x = torch.where(bits < 8, torch.floor(levels / step) * step / 255, x)
    # solarize above a threshold in [0, 1]
    threshold = _per_image(pick("solarize", 1 - size, 1.01))
    x = torch.where(x >= threshold, 1 - x, x)
    # autocontrast: stretch each channel to [0, 1]; a flat channel stays as it is (torchvision, PIL)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    stretched = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    return torch.where(_per_image(op == STRONG_OPS.index("autocontrast")), stretched, x)


def trivial_augment(x: torch.Tensor, generator: Gen = None) -> torch.Tensor:
    """One operation per image, uniformly drawn, with a uniform magnitude and sign (TrivialAugment-Wide)."""
    return trivial_apply(x, *trivial_draw(len(x), x.device, generator))


def augment(images: torch.Tensor, ops: AugConfig, generator: Gen = None) -> torch.Tensor:
    """uint8 N x H x W x 3 on the device -> augmented float N x 3 x H x W in [0, 1], same size.

    In this order, each operation only when on: trivial; the geometry (rotate, translate, scale in one
    warp that also mirrors, else the flips inside the pad-crop); the pad-crop; jitter and hue; erase."""
    if ops.pixel_moves_only:
        return to_float(pixel_moves(images, ops, generator).permute(0, 2, 3, 1))
    x = to_float(images)
    n, d = len(x), x.device
    if ops.trivial:
        x = trivial_augment(x, generator)
    flips = (ops.hflip or 0.0, ops.vflip or 0.0)
    if ops.geometric:
        angle = _uniform(n, -ops.rotate, ops.rotate, d, generator) if ops.rotate else torch.zeros(n, device=d)
        shift = ops.translate
        tx, ty = (_uniform(n, -shift, shift, d, generator) for _ in "xy") if shift else (None, None)
        zoom = _uniform(n, 1 - ops.scale, 1 + ops.scale, d, generator) if ops.scale else None
        mirror_x = _bernoulli(n, ops.hflip, d, generator) if ops.hflip else None
        mirror_y = _bernoulli(n, ops.vflip, d, generator) if ops.vflip else None
        x = affine(x, angle, tx=tx, ty=ty, mirror_x=mirror_x, mirror_y=mirror_y, zoom=zoom)
        flips = (0.0, 0.0)
    if ops.crop_pad or any(flips):
        x = pad_crop(x, ops.crop_pad or 0, *flips, generator=generator)
    if ops.jitter or ops.hue:
        j = ops.jitter
        b, c, s = (_uniform(n, 1 - j, 1 + j, d, generator) for _ in "bcs") if j else (None, None, None)
        x = adjust(x, b, c, s, _uniform(n, -ops.hue, ops.hue, d, generator) if ops.hue else None)
    return random_erasing(x, ops.erase, generator=generator) if ops.erase else x


def pixel_moves(images: torch.Tensor, ops: AugConfig, generator: Gen = None) -> torch.Tensor:
    """uint8 N x H x W x 3 -> uint8 N x 3 x H x W (a channels-last view: no copy when nothing moves) after
    the operations that only move or blank pixels: pad-crop with flips, then erase."""
    x = images.permute(0, 3, 1, 2)
    if ops.crop_pad or ops.hflip or ops.vflip:
        x = pad_crop(x, ops.crop_pad or 0, ops.hflip or 0.0, ops.vflip or 0.0, generator)
    return random_erasing(x, ops.erase, generator=generator) if ops.erase else x


NO_AUGMENTATION = AugConfig(aug="none")


def uint8_resize_supported(device: torch.device) -> bool:
    """Whether F.interpolate has a uint8 bilinear kernel on this device (CPU yes; CUDA has none)."""
    return device.type == "cpu"


class BatchTransform:
    """The device-side input pipeline: augment (training only), resize, normalise, memory format.

    Output: float N x 3 x S x S, normalised. Its memory layout is whichever is cheapest to produce
    (channels-last on the uint8 path) unless ``channels_last`` asks for channels-last explicitly;
    convolutions accept either, and on CPU a channels-last input is not slower (resnet18, 224 px)."""

    def __init__(
        self, ops: AugConfig, img_size: int, mean, std, channels_last: bool = False, uint8_resize: bool = True
    ):
        self.ops = ops
        """The training augmentation (evaluation has none)."""
        self.img_size = img_size
        self.uint8_resize = uint8_resize
        """Resize uint8 images before normalising where the device has the kernel (the CPU); False: after,
        in float, as on CUDA (what an exported ONNX model does). The two differ by the rounding to whole
        grey levels of the uint8 kernel."""
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.channels_last = channels_last
        self._affine_cache: dict = {}  # (device, row width or None) -> (scale, bias), see _affine

    def __call__(self, images: torch.Tensor, train: bool, generator: Gen = None) -> torch.Tensor:
        """``generator``: the run's own, which every augmentation draw takes (None: torch's global one)."""
        size = (self.img_size, self.img_size)
        if not train or self.ops.pixel_moves_only:
            # Crops, flips and erasing only move or blank pixels, so they run on uint8 (evaluation has
            # no augmentation and always comes here). On CPU the resize does too: PyTorch's uint8 bilinear kernel
            # (PIL's SIMD algorithm, rounding to integers as the PIL reference does) takes 0.76 ms per
            # batch of 32 at 32 -> 224 px on two cores against 3.4 ms for the float kernel, and the
            # float conversion and normalisation then happen once, at the output size.
            x = pixel_moves(images, self.ops if train else NO_AUGMENTATION, generator)
            if x.shape[-2:] != size and self.uint8_resize and uint8_resize_supported(x.device):
                x = F.interpolate(
                    x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", align_corners=False
                )
            x = self.normalise_uint8(x)
        else:
            x = augment(images, self.ops, generator)
            scale, bias = self._affine(x.device)
            x = torch.addcmul(bias, x, scale)
        if x.shape[-2:] != size:
            # Float resize (CUDA has no uint8 bilinear kernel; policies that end in float). Normalised
            # first: bilinear weights sum to 1, so the result is the same and the per-pixel work above
            # ran at the small size (49x fewer pixels at 32 -> 224).
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def normalise_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W (any layout) -> float (x / 255 - mean) / std, channels-last.

        The per-channel scale and offset are tiled along a row (R G B R G B ...) so they broadcast over
        the contiguous N x H x (W * 3) view: one conversion, then one vectorised multiply-add in place."""
        n, c, h, w = x.shape
        scale, bias = self._affine(x.device, row_width=w)
        rows = x.permute(0, 2, 3, 1).reshape(n, h, w * c).float()  # no reshape copy when channels-last
        # In place on the converted copy: a mixed uint8/float addcmul would cast into a second temporary.
        return torch.addcmul(bias, rows, scale, out=rows).view(n, h, w, c).permute(0, 3, 1, 2)

    def _affine(self, device: torch.device, row_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalisation as a multiply-add, x * scale + bias = (x - mean) / std for x in [0, 1], held
        on ``device`` once (not copied from the host every step). Shaped 1 x 3 x 1 x 1; with
        ``row_width``, for uint8 input (scale / 255) and tiled along a row R G B R G B ... that wide."""
        key = (device, row_width)
        if key not in self._affine_cache:
            scale, bias = 1.0 / self.std, -self.mean / self.std
            if row_width is None:
                scale, bias = scale.view(1, 3, 1, 1), bias.view(1, 3, 1, 1)
            else:
                scale, bias = (scale / 255.0).repeat(row_width), bias.repeat(row_width)
            self._affine_cache[key] = (scale.to(device), bias.to(device))
        return self._affine_cache[key]
