"""The batched policies: output ranges, per-image randomness, and rates matching the per-sample
torchvision reference they replace (flip, erasing)."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from trainers.augment import BatchTransform, augment, flip, random_erasing


def _batch(n=256, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("policy", ["none", "basic", "seed", "strong"])
def test_policies_keep_shape_and_range(policy):
    torch.manual_seed(0)
    out = augment(_batch(), policy)
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("policy", ["basic", "seed", "strong"])
def test_randomness_is_per_image(policy):
    torch.manual_seed(0)
    same = _batch(1).expand(64, -1, -1, -1).contiguous()  # 64 copies of one image
    out = augment(same, policy)
    distinct = len({tuple(o.flatten()[:: 97].tolist()) for o in out})
    assert distinct > 16, f"{policy}: only {distinct} distinct outputs for 64 copies"


def test_flip_rate_matches_torchvision_reference():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 8, 8)
    ours = (flip(x, 0.5, dim=3) != x).flatten(1).any(1).float().mean().item()
    ref_t = v2.RandomHorizontalFlip(0.5)
    ref = np.mean([not torch.equal(ref_t(img), img) for img in x[:1000]])
    assert ours == pytest.approx(0.5, abs=0.03) and ref == pytest.approx(ours, abs=0.05)
    assert (flip(x, 0.2, dim=2) != x).flatten(1).any(1).float().mean().item() == pytest.approx(0.2, abs=0.03)


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
    ours = augment(x, "seed")
    ref_t = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.2), v2.RandomRotation(40),
                        v2.ColorJitter(0.2, 0.2, 0.2, 0.1), v2.ToDtype(torch.float32, scale=True),
                        v2.RandomErasing(0.5, value=0)])
    ref = torch.stack([ref_t(img.permute(2, 0, 1)) for img in x])
    assert ours.mean().item() == pytest.approx(ref.mean().item(), abs=0.03)
    corner_ours = (ours[:, :, :3, :3] == 0).float().mean().item()
    corner_ref = (ref[:, :, :3, :3] == 0).float().mean().item()
    assert corner_ours == pytest.approx(corner_ref, abs=0.12)


def test_transform_resizes_and_normalises():
    t = BatchTransform("none", 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = t(torch.full((2, 32, 32, 3), 255, dtype=torch.uint8), train=False)
    assert out.shape == (2, 3, 64, 64) and torch.allclose(out, torch.ones_like(out))


def test_pad_crop_without_padding_is_identity_or_mirror():
    from trainers.augment import pad_crop

    x = torch.rand(8, 3, 6, 6)
    assert torch.equal(pad_crop(x, 0, hflip_p=0.0), x)
    assert torch.equal(pad_crop(x, 0, hflip_p=1.0), x.flip(3))
    torch.manual_seed(0)
    big = torch.rand(4000, 1, 4, 4)
    mirrored = (pad_crop(big, 0, hflip_p=0.5) == big.flip(3)).flatten(1).all(1).float().mean().item()
    assert mirrored == pytest.approx(0.5, abs=0.03)
