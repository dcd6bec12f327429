"""The batched augmentation: output ranges, per-image randomness, rates matching the per-sample
torchvision reference it replaces (flip, erasing), and operations with their presets."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torchvision.transforms import v2

from cvstudy.trainers.augment import (
    BatchTransform,
    adjust,
    affine,
    augment,
    grayscale,
    pad_crop,
    pixel_moves,
    random_erasing,
    trivial_augment,
)
from cvstudy.trainers.config import AugConfig, TrainConfig
from cvstudy.trainers.errors import ConfigError


def _batch(n=256, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("policy", ["none", "basic", "original", "strong"])
def test_policies_keep_shape_and_range(policy):
    torch.manual_seed(0)
    out = augment(_batch(), AugConfig(aug=policy))
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("policy", ["basic", "original", "strong"])
def test_randomness_is_per_image(policy):
    torch.manual_seed(0)
    same = _batch(1).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = augment(same, AugConfig(aug=policy))
    distinct = len({tuple(o.flatten()[::97].tolist()) for o in out})
    assert distinct > 16, f"{policy}: only {distinct} distinct outputs for 64 copies"


def test_mirror_is_exact_and_its_rate_matches_torchvision_reference():
    """The original policy mirrors inside its rotation's grid_sample: with angle 0 that must be an exact
    flip for the drawn images and the identity for the rest, at torchvision's rates."""
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 8, 8)
    zero = torch.zeros(len(x))
    mask = torch.rand(len(x)) < 0.5
    out = affine(x, zero, mirror_x=mask)
    assert torch.allclose(out[mask], x[mask].flip(3), atol=1e-5)
    assert torch.allclose(out[~mask], x[~mask], atol=1e-5)
    both = affine(x[:4], zero[:4], mirror_x=torch.ones(4, dtype=torch.bool), mirror_y=torch.ones(4, dtype=torch.bool))
    assert torch.allclose(both, x[:4].flip(2, 3), atol=1e-5)
    # the original policy draws its mirrors at the rates its torchvision pipeline did: hflip 0.5, vflip 0.2
    reference = {
        dim: np.mean([not torch.equal(flip(img), img) for img in x[:2000]])
        for dim, flip in ((1, v2.RandomVerticalFlip(0.2)), (2, v2.RandomHorizontalFlip(0.5)))
    }
    # A grey ramp keeps its direction through its
    # rotation (<= 40 degrees) and colour jitter (positive factors, no chroma), so the sign of the
    # correlation between output and position, over pixels not zero-filled or erased, tells a mirror.
    torch.manual_seed(1)
    for dim, rate in ((1, 0.2), (2, 0.5)):  # ramp down the rows (vflip), across the columns (hflip)
        ramp = ((torch.arange(32.0) + 1) / 33 * 255).round().to(torch.uint8)
        ramp = ramp.view(1, 32, 1, 1) if dim == 1 else ramp.view(1, 1, 32, 1)
        out = augment(ramp.expand(3000, 32, 32, 3).contiguous(), AugConfig(aug="original"))[:, 0]
        position = torch.arange(32.0).view(1, 32, 1) if dim == 1 else torch.arange(32.0).view(1, 1, 32)
        position = position.expand_as(out)
        kept = (out > 0).float()
        centred = (position - (position * kept).sum((1, 2), keepdim=True) / kept.sum((1, 2), keepdim=True)) * kept
        mirrored = ((centred * out).sum((1, 2)) < 0).float().mean().item()
        assert mirrored == pytest.approx(rate, abs=0.03), (dim, mirrored)
        assert mirrored == pytest.approx(reference[dim], abs=0.05), (dim, mirrored, reference[dim])


def test_erasing_rate_and_area_match_torchvision_reference():
    torch.manual_seed(0)
    x = torch.rand(2000, 3, 32, 32) * 0.9 + 0.1  # no zeros before erasing
    ours = random_erasing(x, 0.5)
    erased = (ours == 0).all(1)  # pixels zeroed in every channel
    rate = erased.flatten(1).any(1).float()
    ref_t = v2.RandomErasing(p=0.5, value=0)
    ref = torch.stack([ref_t(img) for img in x[:1000]])
    ref_erased = (ref == 0).all(1)
    ref_rate = ref_erased.flatten(1).any(1).float()
    assert rate.mean().item() == pytest.approx(0.5, abs=0.04)
    assert rate.mean().item() == pytest.approx(ref_rate.mean().item(), abs=0.06)
    area = erased.flatten(1).float().mean(1)[rate.bool()].mean().item()
    ref_area = ref_erased.flatten(1).float().mean(1)[ref_rate.bool()].mean().item()
    assert 0.02 <= area <= 0.33 and area == pytest.approx(ref_area, rel=0.25)


def test_seed_policy_colour_and_rotation_statistics_match_reference():
    """Mean brightness and the share of zero-filled (rotated-in) corner pixels vs torchvision's PIL-free
    per-sample pipeline of the same policy."""
    torch.manual_seed(0)
    x = _batch(400, 32, seed=3)
    ours = augment(x, AugConfig(aug="original"))
    ref_t = v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.2),
            v2.RandomRotation(40),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.1),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(0.5, value=0),
        ]
    )
    ref = torch.stack([ref_t(img.permute(2, 0, 1)) for img in x])
    assert ours.mean().item() == pytest.approx(ref.mean().item(), abs=0.03)
    corner_ours = (ours[:, :, :3, :3] == 0).float().mean().item()
    corner_ref = (ref[:, :, :3, :3] == 0).float().mean().item()
    assert corner_ours == pytest.approx(corner_ref, abs=0.12)


def test_transform_resizes_and_normalises():
    t = BatchTransform(AugConfig(aug="none"), 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = t(torch.full((2, 32, 32, 3), 255, dtype=torch.uint8), train=False)
    assert out.shape == (2, 3, 64, 64) and torch.allclose(out, torch.ones_like(out))


def test_pad_crop_without_padding_is_identity_or_mirror():
    x = torch.rand(8, 3, 6, 6)
    assert torch.equal(pad_crop(x, 0, hflip_p=0.0), x)
    assert torch.equal(pad_crop(x, 0, hflip_p=1.0), x.flip(3))
    torch.manual_seed(0)
    big = torch.rand(4000, 1, 4, 4)
    mirrored = (pad_crop(big, 0, hflip_p=0.5) == big.flip(3)).flatten(1).all(1).float().mean().item()
    assert mirrored == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_pad_crop_output_is_a_reflect_padded_crop_of_its_input(dtype):
    """Every output image equals some 32 x 32 window of the reflect-padded input, mirrored or not, and
    the offsets and mirrors vary over the batch (the CIFAR standard, checked against F.pad)."""
    torch.manual_seed(0)
    x = _batch(64).permute(0, 3, 1, 2).to(dtype)
    out = pad_crop(x, 4, hflip_p=0.5)
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    seen = set()
    for i in range(len(x)):
        windows = [(dy, dx, padded[i, :, dy : dy + 32, dx : dx + 32]) for dy in range(9) for dx in range(9)]
        matches = [
            (dy, dx, m)
            for dy, dx, w in windows
            for m in (False, True)
            if torch.equal(w.flip(2) if m else w, out[i].float())
        ]
        assert matches, f"image {i} is not a reflect-padded crop"
        seen.add(matches[0])
    assert out.dtype == dtype and len(seen) > 32


def test_uint8_resize_matches_pil_bilinear():
    """The CPU path resizes uint8 like PIL's Resize did in the original pipeline: same pixels after
    normalisation, to float precision."""
    from PIL import Image

    x = _batch(4)
    t = BatchTransform(AugConfig(aug="none"), 224, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    out = t(x, train=False)
    ref = (
        torch.stack(
            [torch.from_numpy(np.array(Image.fromarray(im.numpy()).resize((224, 224), Image.BILINEAR))) for im in x]
        )
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )
    ref = (ref - torch.tensor((0.4, 0.5, 0.6)).view(1, 3, 1, 1)) / torch.tensor((0.2, 0.25, 0.3)).view(1, 3, 1, 1)
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-4)


def test_basic_policy_through_the_uint8_resize_path_varies_per_image_and_keeps_the_range():
    """Train batches through the uint8 path stay in the normalised range of the eval transform and
    differ per image (crop offsets and mirrors drawn per image)."""
    torch.manual_seed(0)
    t = BatchTransform(AugConfig(aug="basic"), 64, mean=(0.5,) * 3, std=(0.5,) * 3)
    same = _batch(1).expand(32, -1, -1, -1).contiguous()
    out = t(same, train=True)
    assert out.shape == (32, 3, 64, 64) and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert len({tuple(o.flatten()[::101].tolist()) for o in out}) > 10


def test_affine_matches_torch_affine_grid_with_composed_matrices():
    """The written-out theta and broadcast grid equal F.affine_grid on (mirror) x (inverse rotation) x
    (shear), with the translation, on a non-square image."""
    torch.manual_seed(0)
    n = 16
    x = torch.rand(n, 3, 20, 28)
    angle, shx, shy = (
        torch.empty(n).uniform_(-40, 40),
        torch.empty(n).uniform_(-0.5, 0.5),
        torch.empty(n).uniform_(-0.5, 0.5),
    )
    tx, ty, mirror = torch.empty(n).uniform_(-0.2, 0.2), torch.empty(n).uniform_(-0.2, 0.2), torch.rand(n) < 0.5
    ours = affine(x, angle, shx, shy, tx, ty, mirror_x=mirror)
    a = torch.deg2rad(angle)
    rot = torch.stack([torch.stack([a.cos(), a.sin()], -1), torch.stack([-a.sin(), a.cos()], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones(n), shx], -1), torch.stack([shy, torch.ones(n)], -1)], -2)
    theta = torch.cat([rot @ shear, torch.stack([-2 * tx, -2 * ty], -1)[..., None]], -1)
    theta[:, 0] *= torch.where(mirror, -1.0, 1.0)[:, None]
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_float_resize_branch_agrees_with_the_uint8_branch(monkeypatch):
    """Where there is no uint8 bilinear kernel (CUDA), the batch is normalised at 32 px and resized
    in float: the same image up to the uint8 kernel's fixed-point weights and rounding (< 1 grey level)."""
    import cvstudy.trainers.augment as augment_module

    x = _batch(8)
    t = BatchTransform(AugConfig(aug="none"), 96, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    uint8_path = t(x, train=False)
    monkeypatch.setattr(augment_module, "uint8_resize_supported", lambda device: False)
    float_path = t(x, train=False)
    assert float_path.shape == uint8_path.shape == (8, 3, 96, 96)
    assert (float_path - uint8_path).abs().max().item() <= 1 / 255 / 0.2
    assert (float_path - uint8_path).abs().max().item() > 0  # the branches really differ in the rounding


# ----------------------------------------------------------------------------- operations and presets
PRESET_IMAGES = Path(__file__).with_name("preset_images.pt")


def grey_levels_apart(a: torch.Tensor, b: torch.Tensor, per_unit: float = 255.0) -> torch.Tensor:
    """|a - b| in grey levels of the 8-bit input (``per_unit`` grey levels per unit of the values)."""
    return (a.float() - b.float()).abs() * per_unit


@pytest.mark.parametrize("preset", ["none", "basic", "original", "strong"])
def test_each_preset_gives_the_images_its_policy_gave_before_operations_existed(preset):
    """``preset_images.pt`` holds what ``augment(batch, policy)`` and the training transform (48 px) gave
    for a seeded batch at commit 5892ecc, before policies became operation values (float16).

    ``none`` and ``basic`` only move pixels (uint8 all the way): equal exactly. ``original`` and ``strong``
    resample and recolour in float, whose last bits depend on the CPU's kernels (grid_sample, einsum):
    within a quarter of a grey level (the saved float16 alone rounds by up to 0.06), or, for ``strong``
    (whose posterize and solarize jump at thresholds that a last-bit difference can cross), at most 1
    value in 1,000 beyond 1.1 grey levels: the saved images also carry TrivialAugment's old rounding,
    which floored every image to a whole grey level (a drop of up to one level; an image that drew
    no posterize is now left as it was)."""
    saved = torch.load(PRESET_IMAGES)
    ops = AugConfig(aug=preset)
    preset = {"original": "seed"}.get(preset, preset)  # saved under the preset's former name
    torch.manual_seed(123)
    images = augment(saved["batch"], ops)
    torch.manual_seed(123)
    trained_on = BatchTransform(ops, 48, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))(saved["batch"], train=True)
    if ops.pixel_moves_only:
        assert torch.equal(images.half(), saved[f"augment/{preset}"])
        assert torch.equal(trained_on.contiguous().half(), saved[f"transform/{preset}/48"])
        return
    # normalised values: one grey level is 1 / 255 / std; the smallest std (0.2) bounds them all
    for ours, before, per_unit in (
        (images, saved[f"augment/{preset}"], 255.0),
        (trained_on, saved[f"transform/{preset}/48"], 255.0 * 0.2),
    ):
        apart = grey_levels_apart(ours, before, per_unit)
        assert ours.shape == before.shape
        if preset == "strong":
            assert (apart > 1.1).float().mean().item() <= 1e-3, apart.max()
        else:
            assert apart.max().item() <= 0.25, apart.max()


def test_an_operation_given_overrides_its_preset_and_the_config_records_effective_values():
    original = TrainConfig.from_flat({"aug": "original", "rotate": 10, "erase": 0})
    flat = original.to_flat()
    assert (flat["rotate"], flat["erase"], flat["hflip"], flat["vflip"], flat["crop_pad"]) == (10.0, 0.0, 0.5, 0.2, 0)
    assert TrainConfig.from_flat(flat) == original  # the recorded values give back the same configuration
    # a preset named later resets every operation not named with it; "none" asks for the preset's value
    assert TrainConfig.from_flat({"aug": "basic"}, base=original).augmentation == AugConfig(aug="basic")
    assert TrainConfig.from_flat({"hflip": "none"}, base=original).augmentation.hflip == 0.5
    assert TrainConfig.from_flat({"hflip": 0.0}, base=original).augmentation.rotate == 10.0
    with pytest.raises(ConfigError, match="rotate must be degrees in"):
        AugConfig(rotate=200)


def test_an_operation_at_zero_draws_nothing_and_pixel_moves_stay_uint8():
    x = _batch(8)
    off = AugConfig(aug="none", hflip=0.0, rotate=0.0, jitter=0.0, erase=0.0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert torch.equal(augment(x, off), augment(x, AugConfig(aug="none")))
    assert torch.equal(torch.get_rng_state(), before)
    moves = AugConfig(aug="none", crop_pad=2, hflip=0.5, vflip=0.5, erase=0.5)
    assert moves.pixel_moves_only and pixel_moves(x, moves).dtype == torch.uint8
    assert not AugConfig(aug="none", hue=0.1).pixel_moves_only


def test_flips_are_exact_inside_the_pad_crop():
    x = _batch(4).permute(0, 3, 1, 2)
    assert torch.equal(pad_crop(x, 0, 0.0, 1.0), x.flip(2))
    assert torch.equal(pad_crop(x, 0, 1.0, 1.0), x.flip(2, 3))


def test_zoom_matches_affine_grid():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 12, 12)
    zoom = torch.tensor([0.8, 1.0, 1.25])
    ours = affine(x, torch.zeros(3), zoom=zoom)
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize(
    "op",
    [
        ("hflip", 1.0),
        ("vflip", 1.0),
        ("crop_pad", 4),
        ("rotate", 30.0),
        ("translate", 0.2),
        ("scale", 0.3),
        ("jitter", 0.4),
        ("hue", 0.2),
        ("trivial", True),
        ("erase", 1.0),
    ],
)
def test_each_operation_alone_changes_the_images(op):
    x = _batch(32)
    torch.manual_seed(0)
    out = augment(x, AugConfig(aug="none", **dict([op])))
    assert out.shape == (32, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, augment(x, AugConfig(aug="none")))


def test_flips_alone_move_no_pixel_but_the_mirror():
    """No pad-crop asked: a certain flip is the exact mirror (no crop shifts it), and only the flip asked."""
    x = _batch(4)
    nchw = x.permute(0, 3, 1, 2)
    assert torch.equal(pixel_moves(x, AugConfig(aug="none", vflip=1.0)), nchw.flip(2))
    assert torch.equal(pixel_moves(x, AugConfig(aug="none", hflip=1.0)), nchw.flip(3))
    assert torch.equal(pad_crop(nchw, 0), nchw)  # by default neither flip is drawn


def test_erasing_draws_from_the_runs_own_generator():
    """The same run generator gives the same erasures whatever the global generator did in between."""
    x, ops = _batch(16), AugConfig(aug="none", erase=1.0)
    torch.manual_seed(0)
    first = pixel_moves(x, ops, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    again = pixel_moves(x, ops, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.equal(first, x.permute(0, 3, 1, 2))


def test_an_erasure_is_never_smaller_than_one_pixel():
    """An area of 0.0002 of 32 x 32 px is 0.2 px, a square side of 0.45 px: rounded to 0, kept at 1, so
    each image loses exactly one pixel in its three channels."""
    x = torch.ones(6, 3, 32, 32)
    out = random_erasing(x, 1.0, scale=(0.0002, 0.0002), ratio=(1.0, 1.0))
    assert (out == 0).sum(dim=(1, 2, 3)).tolist() == [3] * 6
    assert ((out == 0).sum(dim=1) % 3 == 0).all()  # a pixel is erased in all its channels at once


class _Devices(TorchFunctionMode):
    """The device of every tensor any torch function returns while it is active, factories included."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple) else (out,):
            if isinstance(value, torch.Tensor):
                self.seen.add(value.device.type)
        return out


def test_the_augmentations_make_every_tensor_on_the_images_device():
    """On the meta device (shapes without data), every tensor each operation makes, down to its random
    draws and index tables: one made on the CPU instead would on a GPU be a device mismatch or a copy
    per batch."""
    x = torch.empty(4, 3, 16, 16, device="meta")
    for operation in (
        lambda: random_erasing(x, 0.5),
        lambda: trivial_augment(x),
        lambda: grayscale(x),
        lambda: pad_crop(x, 2, 0.5, 0.5),
        lambda: pad_crop(x, 0, 0.5),
    ):
        with _Devices() as devices:
            out = operation()
        assert out.device.type == "meta" and devices.seen == {"meta"}


def test_grayscale_keeps_the_images_precision():
    """ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B, in the images' own dtype (a float32 weight would
    promote half-precision images)."""
    x = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        grey = grayscale(x.to(dtype))
        assert grey.dtype == dtype and grey.shape == (1, 1, 1, 1)
        assert grey.item() == pytest.approx(0.299 + 0.587 * 0.5 + 0.114 * 0.25, abs=4e-3)  # bfloat16's step


def test_pad_crop_draws_every_offset_and_flip_from_the_runs_own_generator():
    """The same run generator gives the same crops and flips whatever the global generator did between."""
    x = _batch(32).permute(0, 3, 1, 2)
    torch.manual_seed(0)
    first = pad_crop(x, 2, 0.5, 0.5, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    again = pad_crop(x, 2, 0.5, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.equal(first, x)


def test_a_certain_mirror_after_a_pad_crop_is_the_mirror_of_the_same_crop():
    """The offsets are drawn before the flips, so one seed gives the same crop with and without a certain
    flip: with it, the output is that crop mirrored (rows reversed for vertical, columns for horizontal)."""
    x = _batch(16).permute(0, 3, 1, 2)

    def crop(hflip, vflip):
        return pad_crop(x, 3, hflip, vflip, torch.Generator().manual_seed(7))

    plain = crop(0.0, 0.0)
    assert not torch.equal(plain, x)
    assert torch.equal(crop(0.0, 1.0), plain.flip(2)) and torch.equal(crop(1.0, 0.0), plain.flip(3))


def test_a_vertical_mirror_given_alone_is_applied():
    """``affine`` with only ``mirror_y``: the images upside down (within float32 rounding of the pixel
    centres' coordinates, 1e-6 of the [0, 1] range, on sides that are not powers of two)."""
    x = torch.rand(4, 3, 6, 10)
    out = affine(x, torch.zeros(4), mirror_y=torch.ones(4, dtype=torch.bool))
    assert (out - x.flip(2)).abs().max().item() < 1e-6


def test_the_warp_colour_and_normalise_steps_make_every_tensor_on_the_images_device():
    """As above, for the warp (with each mirror alone), the colour operations with hue, each
    operation through ``augment`` on uint8 images, and both paths of the batch transform."""
    x = torch.empty(4, 3, 8, 8, device="meta")
    uint8 = torch.empty(4, 8, 8, 3, dtype=torch.uint8, device="meta")
    draw = torch.zeros(4, device="meta")
    mask = torch.zeros(4, dtype=torch.bool, device="meta")
    # The batch transform computes its normalisation on the host once, at its first batch on a device,
    # and keeps it there: from the second batch on, nothing is made anywhere else.
    float_path = BatchTransform(AugConfig(aug="original"), 16, (0.5,) * 3, (0.25,) * 3)
    uint8_path = BatchTransform(AugConfig(aug="basic"), 16, (0.5,) * 3, (0.25,) * 3)
    float_path(uint8, train=True), uint8_path(uint8, train=False)
    operations = [
        lambda: affine(x, draw, mirror_y=mask),
        lambda: affine(x, draw, mirror_x=mask, zoom=draw + 1),
        lambda: adjust(x, draw + 1, draw + 1, draw + 1, draw),
        lambda: float_path(uint8, train=True),
        lambda: uint8_path(uint8, train=False),
    ]
    for op, value in [("rotate", 10.0), ("translate", 0.1), ("scale", 0.2), ("jitter", 0.3), ("hue", 0.1)]:
        for flips in ({}, {"hflip": 0.5}, {"vflip": 0.5}):
            ops = AugConfig(aug="none", **{op: value}, **flips)
            operations.append(lambda ops=ops: augment(uint8, ops))
    for operation in operations:
        with _Devices() as devices:
            out = operation()
        assert out.device.type == "meta" and devices.seen == {"meta"}


def test_the_warp_at_zero_is_the_identity_to_double_precision():
    """No angle, shift or zoom: every output pixel centre lands on an input one. In float64 the
    sampling grid must be float64 too (a float32 grid is off by ~1e-7 of a side on a 7-pixel row)."""
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    assert (affine(x, torch.zeros(2)) - x).abs().max().item() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_warp_keeps_half_precision_images_in_their_precision(dtype):
    """float32 angles on half-precision images: the output has the images' dtype and, away from the
    zero-filled border (where a coordinate's rounding decides between image and fill), agrees with the
    float32 warp of a smooth ramp within 3 grey levels (bfloat16 holds 8 bits of mantissa: 1.5 levels
    measured; float16 0.15)."""
    i = torch.arange(12.0)
    x = ((i.view(12, 1) + i.view(1, 12)) / 24).expand(4, 3, 12, 12).contiguous()
    angle = torch.tensor([0.0, 10.0, -30.0, 45.0])
    out = affine(x.to(dtype), angle)
    assert out.dtype == dtype
    inner = (..., slice(3, -3), slice(3, -3))
    assert ((out.float() - affine(x, angle))[inner].abs() * 255).max().item() <= 3


def test_the_warp_raises_no_warning():
    """grid_sample warns when ``align_corners`` is left unset; the warp sets it (False: pixel centres)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        affine(torch.rand(2, 3, 8, 8), torch.tensor([5.0, -5.0]), mirror_x=torch.tensor([True, False]))


class _DevicesTaken(_Devices):
    """The devices of the tensors torch functions take, as well as those they return."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for value in (*args, *(kwargs or {}).values()):
            if isinstance(value, torch.Tensor):
                self.seen.add(value.device.type)
        return super().__torch_function__(func, types, args, kwargs)


def test_the_batch_transform_keeps_its_normalisation_on_the_images_device():
    """Computed on the host at the first batch, then held on the device: a later batch's multiply-add
    takes no host tensor (one would be a copy to the GPU per batch, or a device error)."""
    uint8 = torch.empty(4, 8, 8, 3, dtype=torch.uint8, device="meta")
    for ops, train in ((AugConfig(aug="original"), True), (AugConfig(aug="basic"), False)):
        transform = BatchTransform(ops, 16, (0.5,) * 3, (0.25,) * 3)
        transform(uint8, train=train)
        with _DevicesTaken() as devices:
            transform(uint8, train=train)
        assert devices.seen == {"meta"}


AUGMENT_CASES = [
    {"rotate": 20.0},
    {"translate": 0.1},
    {"scale": 0.2},
    {"rotate": 5.0, "hflip": 0.5, "vflip": 0.5},
    {"jitter": 0.3},
    {"hue": 0.1},
    {"trivial": True},
    {"crop_pad": 2, "hflip": 0.5, "vflip": 0.5, "jitter": 0.2},
    {"crop_pad": 2, "hflip": 0.5, "erase": 0.5},  # pixel moves only: the uint8 path
]


@pytest.mark.parametrize("ops", AUGMENT_CASES, ids=lambda ops: "+".join(ops))
def test_augment_draws_every_operation_from_the_runs_own_generator(ops):
    """One run generator seed gives the same images whatever torch's global generator did before,
    and another seed gives other images."""
    x, config = _batch(16), AugConfig(aug="none", **ops)
    torch.manual_seed(0)
    first = augment(x, config, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    assert torch.equal(augment(x, config, torch.Generator().manual_seed(5)), first)
    assert not torch.equal(augment(x, config, torch.Generator().manual_seed(6)), first)


class _Draws(TorchFunctionMode):
    """How many random draws (one tensor of them each) torch functions made while it was active."""

    RANDOM = {"uniform_", "rand", "randint", "bernoulli", "bernoulli_", "normal_", "randn", "randperm"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.RANDOM
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("ops", "draws"),
    [
        ({"translate": 0.1}, 2),  # a shift per axis, no angle
        ({"scale": 0.2}, 1),
        ({"rotate": 10.0}, 1),
        ({"rotate": 10.0, "hflip": 0.5}, 2),  # the mirror rides in the warp: one draw, no pad-crop
        ({"scale": 0.2, "vflip": 0.5}, 2),
        ({"jitter": 0.2}, 3),  # brightness, contrast, saturation; no hue
        ({"hue": 0.1}, 1),  # no brightness, contrast or saturation
        ({"jitter": 0.2, "hue": 0.1}, 4),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, dict) else str(v),
)
def test_an_operation_that_is_off_draws_nothing(ops, draws):
    """Each operation that is on draws one tensor per parameter (one number per image); one at 0 draws
    none, so switching an operation off costs nothing and leaves the run's random stream to the rest."""
    x, config = _batch(8), AugConfig(aug="none", **ops)
    with _Draws() as counted:
        augment(x, config, torch.Generator().manual_seed(0))
    assert counted.count == draws


@pytest.mark.parametrize(("flip", "axis"), [("vflip", 2), ("hflip", 3)])
def test_a_certain_flip_beside_a_colour_operation_mirrors_the_whole_image(flip, axis):
    """With jitter on, the flips run in the float path's pad-crop with no padding: the output is the
    image mirrored, each colour factor within 1 +- 0.001 moving no pixel by half a grey level."""
    x = _batch(8)
    out = augment(x, AugConfig(aug="none", jitter=0.001, **{flip: 1.0}))
    mirrored = x.permute(0, 3, 1, 2).float().div(255).flip(axis)
    assert ((out - mirrored).abs() * 255).max().item() < 0.5


def test_a_pad_crop_beside_a_colour_operation_moves_the_images():
    """Pad-crop with jitter: the float path crops too (each image's offset one of 25; a few land on 0)."""
    x = _batch(64)
    out = augment(x, AugConfig(aug="none", jitter=0.001, crop_pad=2), torch.Generator().manual_seed(0))
    moved = ((out - x.permute(0, 3, 1, 2).float().div(255)).abs() * 255).flatten(1).amax(1) > 0.5
    assert moved.float().mean().item() > 0.5


@pytest.mark.parametrize("train", [True, False])
def test_the_output_is_channels_last_when_asked_and_otherwise_left_as_it_comes(train):
    """channels_last=True: channels-last on every path, with and without a resize. False: no copy to
    change the layout, so a warp's output (grid_sample writes the standard layout) stays standard."""
    x = _batch(4, size=16)
    for ops in (AugConfig(aug="none", rotate=10.0), AugConfig(aug="none", jitter=0.2), AugConfig(aug="none")):
        for size in (16, 24):  # without and with a resize
            asked = BatchTransform(ops, size, (0.5,) * 3, (0.25,) * 3, channels_last=True)(x, train=train)
            assert asked.is_contiguous(memory_format=torch.channels_last) and not asked.is_contiguous()
    warped = BatchTransform(AugConfig(aug="none", rotate=10.0), 16, (0.5,) * 3, (0.25,) * 3)(x, train=True)
    assert warped.is_contiguous() and not warped.is_contiguous(memory_format=torch.channels_last)


class _Calls(TorchFunctionMode):
    """The names of the torch functions called while it is active."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ops", [AugConfig(aug="none"), AugConfig(aug="none", jitter=0.2)], ids=["uint8", "float"])
def test_images_already_at_the_models_size_are_not_resized(ops):
    """Stored at 16 px, fed at 16 px: no interpolation on either path (a resize to the same size would
    give the same pixels at the cost of a copy of the batch); fed at 24 px: one."""
    x = _batch(4, size=16)
    for size, resizes in ((16, 0), (24, 1)):
        transform = BatchTransform(ops, size, (0.5,) * 3, (0.25,) * 3)
        with _Calls() as calls:
            out = transform(x, train=True)
        assert out.shape == (4, 3, size, size) and calls.names.count("interpolate") == resizes
