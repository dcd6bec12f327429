"""Each augmentation operation's parameters, measured back from the images it produced and tested against
the distribution its setting promises (scipy.stats), on both sides of every range.

The images are linear ramps: bilinear resampling of a linear function is that function at the sampled
point, so every output pixel away from the zero-filled border is an exact linear function of its position,
and a least-squares plane fit per image gives back the warp (zoom, angle, shift) or colour factor that was
drawn for it. Tolerances: KS tests at p > 1e-4 (a correct operation fails about once in 10,000 runs of a
test), and rates within 4.5 standard errors of the binomial.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cvstudy.trainers.augment import augment
from cvstudy.trainers.config import AugConfig

N = 2000  # images per measurement
SIZE = 32
CENTRE = (SIZE - 1) / 2  # pixel-centre coordinates of the image's centre


def ramp(n: int = N, slope_x: float = 5.0, slope_y: float = 0.0, base: float = 40.0) -> torch.Tensor:
    """uint8 N x H x W x 3: grey ``base + slope_x * column + slope_y * row`` (integers, no rounding)."""
    rows = torch.arange(SIZE, dtype=torch.float64).view(SIZE, 1)
    cols = torch.arange(SIZE, dtype=torch.float64).view(1, SIZE)
    image = base + slope_x * cols + slope_y * rows
    assert image.min() >= 0 and image.max() <= 255 and torch.equal(image, image.round())
    return image.to(torch.uint8).view(1, SIZE, SIZE, 1).expand(n, SIZE, SIZE, 3).contiguous()


def plane_fit(out: torch.Tensor, half: int) -> np.ndarray:
    """Per image, least squares of grey level (0..255) on (1, column - centre, row - centre) over the
    central (2 * half) x (2 * half) pixels: N x 3 (intercept, slope along columns, slope along rows)."""
    grey = out[:, 0].double() * 255
    lo, hi = int(CENTRE - half + 0.5), int(CENTRE + half + 0.5)
    ys, xs = torch.meshgrid(torch.arange(lo, hi), torch.arange(lo, hi), indexing="ij")
    design = torch.stack([torch.ones_like(xs), xs - CENTRE, ys - CENTRE], -1).view(-1, 3).double()
    target = grey[:, lo:hi, lo:hi].reshape(len(out), -1).T
    return torch.linalg.lstsq(design, target).solution.T.numpy()


def uniform_ks(values: np.ndarray, low: float, high: float) -> float:
    return stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue


def binomial_close(rate: float, p: float, n: int = N) -> bool:
    return abs(rate - p) <= 4.5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("scale", [0.1, 0.3])
def test_scale_zooms_in_and_out_uniformly_over_its_range(scale):
    """zoom ~ U(1 - scale, 1 + scale): a ramp of slope 5 per pixel comes out with slope 5 / zoom."""
    torch.manual_seed(0)
    out = augment(ramp(), AugConfig(aug="none", scale=scale))
    zoom = 5.0 / plane_fit(out, 5)[:, 1]
    assert zoom.min() < 1 - 0.95 * scale and zoom.max() > 1 + 0.95 * scale  # both sides reached
    assert zoom.min() >= 1 - scale - 1e-3 and zoom.max() <= 1 + scale + 1e-3
    assert uniform_ks(zoom, 1 - scale, 1 + scale) > 1e-4


@pytest.mark.parametrize("degrees", [10.0, 40.0])
def test_rotate_draws_angles_uniformly_in_plus_minus_its_degrees(degrees):
    """The ramp's gradient turns with the image: its direction is the angle drawn (sign aside: a
    rotation either way is in the range), its length stays 5 per pixel."""
    torch.manual_seed(0)
    out = augment(ramp(), AugConfig(aug="none", rotate=degrees))
    fit = plane_fit(out, 4)
    angle = np.degrees(np.arctan2(fit[:, 2], fit[:, 1]))
    assert np.allclose(np.hypot(fit[:, 1], fit[:, 2]), 5.0, atol=1e-2)
    assert angle.min() < -0.95 * degrees and angle.max() > 0.95 * degrees
    assert np.abs(angle).max() <= degrees + 1e-2
    assert uniform_ks(angle, -degrees, degrees) > 1e-4


def test_translate_shifts_uniformly_by_up_to_its_fraction_of_the_side_each_way():
    """A shift of t * 32 px along the columns moves a slope-5 ramp's centre value by 5 * t * 32."""
    torch.manual_seed(0)
    fraction = 0.1
    out = augment(ramp(slope_x=5.0, slope_y=0.0), AugConfig(aug="none", translate=fraction))
    fit = plane_fit(out, 4)
    centre_value = 40 + 5 * CENTRE
    shift = (fit[:, 0] - centre_value) / 5 / SIZE  # fraction of the side, along the columns
    assert np.allclose(fit[:, 1], 5.0, atol=1e-3)  # moved, not scaled
    assert shift.min() < -0.95 * fraction and shift.max() > 0.95 * fraction
    assert uniform_ks(shift, -fraction, fraction) > 1e-4


def test_translate_shifts_the_rows_uniformly_too_and_independently_of_the_columns():
    """The same along the rows, on a ramp along the rows; and on a diagonal ramp the row shift does not
    follow the column shift (one draw per axis)."""
    torch.manual_seed(0)
    fraction = 0.1
    out = augment(ramp(slope_x=0.0, slope_y=5.0), AugConfig(aug="none", translate=fraction))
    fit = plane_fit(out, 4)
    shift = (fit[:, 0] - (40 + 5 * CENTRE)) / 5 / SIZE
    assert np.allclose(fit[:, 2], 5.0, atol=1e-3)
    assert shift.min() < -0.95 * fraction and shift.max() > 0.95 * fraction
    assert uniform_ks(shift, -fraction, fraction) > 1e-4
    torch.manual_seed(0)
    columns = augment(ramp(slope_x=5.0, slope_y=0.0), AugConfig(aug="none", translate=fraction))
    torch.manual_seed(0)
    rows = augment(ramp(slope_x=0.0, slope_y=5.0), AugConfig(aug="none", translate=fraction))
    along_columns, along_rows = plane_fit(columns, 4)[:, 0], plane_fit(rows, 4)[:, 0]
    assert abs(stats.pearsonr(along_columns, along_rows).statistic) < 0.1  # independent draws: |r| ~ 0.02


@pytest.mark.parametrize(("op", "p"), [("hflip", 0.3), ("vflip", 0.7), ("hflip", 1.0), ("vflip", 0.0)])
def test_flips_mirror_at_their_probability(op, p):
    """A mirrored ramp's slope changes sign, along the columns for hflip and the rows for vflip."""
    torch.manual_seed(0)
    images = ramp(slope_x=5.0, slope_y=0.0) if op == "hflip" else ramp(slope_x=0.0, slope_y=5.0)
    out = augment(images, AugConfig(aug="none", **{op: p}))
    fit = plane_fit(out, 8)
    slope = fit[:, 1] if op == "hflip" else fit[:, 2]
    assert np.allclose(np.abs(slope), 5.0, atol=1e-6)
    assert binomial_close(float((slope < 0).mean()), p)


def test_crop_pad_offsets_are_uniform_over_every_position_of_both_axes():
    """Reflect-pad 4 then crop: the window's offset is U{-4..4} per axis. On a ramp along one axis the
    central pixels (never reflected) give each image's offset along it exactly."""
    for along_columns in (True, False):
        torch.manual_seed(0)
        images = ramp(slope_x=5.0, slope_y=0.0) if along_columns else ramp(slope_x=0.0, slope_y=5.0)
        out = augment(images, AugConfig(aug="none", crop_pad=4))
        offset = np.round((plane_fit(out, 8)[:, 0] - (40 + 5 * CENTRE)) / 5).astype(int)
        counts = np.bincount(offset + 4, minlength=9)
        assert len(counts) == 9 and counts.min() > 0, counts
        assert stats.chisquare(counts).pvalue > 1e-4, counts


@pytest.mark.parametrize("strength", [0.2, 0.4])
def test_jitter_brightness_factor_is_uniform_in_one_plus_minus_its_strength(strength):
    """On a flat grey image contrast and saturation change nothing (the image is its own mean and its own
    grey), so the output over the input is the brightness factor drawn."""
    torch.manual_seed(0)
    grey = torch.full((N, SIZE, SIZE, 3), 100, dtype=torch.uint8)
    out = augment(grey, AugConfig(aug="none", jitter=strength))
    factor = (out[:, :, 4:-4, 4:-4].mean((1, 2, 3)) * 255 / 100).double().numpy()
    assert factor.min() < 1 - 0.95 * strength and factor.max() > 1 + 0.95 * strength
    assert uniform_ks(factor, 1 - strength, 1 + strength) > 1e-4


def test_hue_turns_the_chroma_uniformly_by_up_to_its_fraction_of_a_turn():
    """Hue rotates the (I, Q) chroma plane of YIQ by 2 pi h, h ~ U(-hue, hue): measured from a mid colour
    that no clamp reaches."""
    torch.manual_seed(0)
    hue = 0.1
    colour = torch.tensor([150, 110, 90], dtype=torch.uint8)
    images = colour.view(1, 1, 1, 3).expand(N, SIZE, SIZE, 3).contiguous()
    out = augment(images, AugConfig(aug="none", hue=hue))[:, :, 16, 16].double()
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
    before = yiq @ (colour.double() / 255)
    after = out @ yiq.T
    turn = (torch.atan2(after[:, 2], after[:, 1]) - torch.atan2(before[2], before[1])) / (2 * math.pi)
    turn = ((turn + 0.5) % 1.0 - 0.5).numpy()
    assert np.allclose(after[:, 0].numpy(), before[0].item(), atol=2e-3)  # luma kept
    assert turn.min() < -0.95 * hue and turn.max() > 0.95 * hue
    assert uniform_ks(turn, -hue, hue) > 1e-4


@pytest.mark.parametrize("p", [0.25, 0.75])
def test_erase_blanks_one_rectangle_at_its_probability_with_torchvisions_area_range(p):
    torch.manual_seed(0)
    flat = torch.full((N, SIZE, SIZE, 3), 200, dtype=torch.uint8)
    out = augment(flat, AugConfig(aug="none", erase=p))
    blank = (out == 0).all(1)
    erased = blank.flatten(1).any(1)
    assert binomial_close(float(erased.float().mean()), p)
    area = blank.flatten(1).float().mean(1)[erased].numpy()
    # area ~ U(0.02, 0.33) of the image before rounding the sides and clipping to fit
    assert area.min() < 0.04 and area.max() > 0.25 and area.max() <= 0.4
    for image in blank[erased][:50]:  # one axis-aligned rectangle each
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
