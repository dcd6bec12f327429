"""TrivialAugment, measured against torchvision: each operation at a given magnitude against
torchvision's functional operation at the magnitude TrivialAugmentWide gives it, and the draw's
distribution (operation, size, sign) against the uniform and fair ones it promises (scipy.stats).

cvstudy's operations differ from torchvision's in what ``trivial_apply`` documents (bilinear warps,
shear about the centre, continuous translation, the sharpness border, posterize's bit table, the
rotation's sign convention); the
comparisons below use torchvision with those choices, and everything else is torchvision's.
Tolerances, in grey levels of the 8-bit input: colour operations and warps 0.05 (float32 rounding of
the same arithmetic done in another order); operations on 8-bit levels (posterize, solarize,
identity) exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from scipy import stats
from torchvision.transforms import InterpolationMode

from cvstudy.trainers.augment import STRONG_OPS, augment, trivial_apply, trivial_draw
from cvstudy.trainers.config import AugConfig

MAGNITUDES = (-0.9, -0.4, 0.3, 0.75)  # signed, in (-1, 1)
BILINEAR = InterpolationMode.BILINEAR


def photos(n: int = 6) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32: smooth random colour images (upsampled 8 x 8 noise), full 0..255 range."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    fine = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    lo, hi = fine.amin(dim=(1, 2, 3), keepdim=True), fine.amax(dim=(1, 2, 3), keepdim=True)
    return ((fine - lo) / (hi - lo) * 255).round().to(torch.uint8)


def ours(name: str, magnitude: float, images: torch.Tensor) -> torch.Tensor:
    n = len(images)
    op = torch.full((n,), STRONG_OPS.index(name))
    return trivial_apply(images.float() / 255, op, torch.full((n,), magnitude))


def levels_apart(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs() * 255).max().item()


def torchvision_op(name: str, m: float, x: torch.Tensor) -> torch.Tensor:
    """torchvision's operation at TrivialAugmentWide's value for signed magnitude m (a fraction of the
    widest bin: 135 degrees, 0.99 shear, 32 px, enhance 0.99), on float images in [0, 1]."""
    factor = 1 + 0.99 * m
    if name == "brightness":
        return TF.adjust_brightness(x, factor)
    if name == "color":
        return TF.adjust_saturation(x, factor)
    if name == "contrast":
        return TF.adjust_contrast(x, factor)
    if name == "rotate":
        # cvstudy's positive angle turns clockwise as displayed, torchvision's counter-clockwise; every
        # draw is symmetric about 0, so only the convention differs
        return TF.rotate(x, angle=-135 * m, interpolation=BILINEAR)
    if name in ("shear_x", "shear_y"):
        shear = [math.degrees(math.atan(0.99 * m)), 0.0]
        shear = shear if name == "shear_x" else shear[::-1]
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=BILINEAR)
    if name in ("translate_x", "translate_y"):
        shift = [32 * m, 0.0] if name == "translate_x" else [0.0, 32 * m]
        return TF.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=BILINEAR)
    raise AssertionError(name)


@pytest.mark.parametrize("m", MAGNITUDES)
@pytest.mark.parametrize("name", ["brightness", "color", "contrast", "rotate", "shear_x", "shear_y"])
def test_colour_and_warp_operations_are_torchvisions_at_trivial_augment_wides_magnitude(name, m):
    images = photos()
    expected = torchvision_op(name, m, images.float() / 255)
    assert levels_apart(ours(name, m, images), expected) <= 0.05


@pytest.mark.parametrize("m", [-0.5, -0.25, 0.125, 0.5])  # whole pixels: 16, 8, 4 px
@pytest.mark.parametrize("name", ["translate_x", "translate_y"])
def test_translation_moves_up_to_32_pixels_as_torchvisions_does(name, m):
    images = photos()
    assert levels_apart(ours(name, m, images), torchvision_op(name, m, images.float() / 255)) <= 0.05


@pytest.mark.parametrize("name", ["translate_x", "translate_y"])
def test_translation_is_in_pixels_on_an_image_that_is_not_square(name):
    """32 px at magnitude 1 along each axis whatever the other side: a 16 x 48 image moved 8 px at
    magnitude 0.25 (torchvision's translate is in pixels too)."""
    images = F.interpolate(photos(), size=(16, 48), mode="bilinear", align_corners=False).round().to(torch.uint8)
    assert levels_apart(ours(name, 0.25, images), torchvision_op(name, 0.25, images.float() / 255)) <= 0.05


@pytest.mark.parametrize("m", MAGNITUDES)
def test_sharpness_is_torchvisions_away_from_the_border(m):
    images = photos()
    expected = TF.adjust_sharpness(images.float() / 255, 1 + 0.99 * m)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert levels_apart(ours("sharpness", m, images)[inner], expected[inner]) <= 0.05


# size -> bits, worked by hand from 8 - floor(6.99 * size): a seventh of the sizes each, 8 down to 2
@pytest.mark.parametrize(("m", "bits"), [(0.1, 8), (-0.2, 7), (0.3, 6), (0.5, 5), (-0.6, 4), (0.8, 3), (0.95, 2)])
def test_posterize_keeps_the_top_bits_of_each_level_exactly(m, bits):
    images = photos()
    assert torch.equal(ours("posterize", m, images), TF.posterize(images, bits).float() / 255)


@pytest.mark.parametrize("m", MAGNITUDES)
def test_solarize_inverts_the_levels_at_or_above_one_minus_the_size_exactly(m):
    images = photos()
    x = images.float() / 255
    assert torch.equal(ours("solarize", m, images), TF.solarize(x, threshold=1 - abs(m)))


def test_autocontrast_stretches_each_channel_and_leaves_a_flat_one_as_it_is():
    images = photos()
    images[0, 1] = 77  # a flat green channel: torchvision (and PIL) leave it, not blank it
    images[1] = images[1] // 2 + 40  # a low-contrast image: 40..167, stretched to 0..255
    x = images.float() / 255
    assert levels_apart(ours("autocontrast", 0.5, images), TF.autocontrast(x)) <= 0.05


def test_the_identity_leaves_every_pixel_as_it_was():
    images = photos()
    assert torch.equal(ours("identity", 0.7, images), images.float() / 255)


def test_the_draw_is_uniform_over_the_operations_and_sizes_with_a_fair_sign():
    """13 operations at 1/13 each (chi-square), size ~ U(0, 1) (KS), sign +1 at 1/2 (binomial): each at
    p > 1e-4, so a correct draw fails about once in 10,000 runs."""
    torch.manual_seed(0)
    n = 26_000
    op, magnitude = trivial_draw(n, "cpu")
    counts = torch.bincount(op, minlength=len(STRONG_OPS)).numpy()
    assert len(counts) == len(STRONG_OPS) == 13
    assert stats.chisquare(counts).pvalue > 1e-4, counts
    assert stats.kstest(magnitude.abs().numpy(), stats.uniform(0, 1).cdf).pvalue > 1e-4
    assert stats.binomtest(int((magnitude > 0).sum()), n, 0.5).pvalue > 1e-4


def test_augment_applies_the_drawn_operation_to_each_image():
    """``augment`` with trivial on is ``trivial_apply`` at its own draw: replay the seed, draw, apply."""
    images = photos(64)
    torch.manual_seed(5)
    out = augment(images.permute(0, 2, 3, 1).contiguous(), AugConfig(aug="none", trivial=True))
    torch.manual_seed(5)
    op, magnitude = trivial_draw(64, "cpu")
    assert len(op.unique()) >= 10  # most operations occur in this batch
    assert levels_apart(out, trivial_apply(images.float() / 255, op, magnitude)) == 0
