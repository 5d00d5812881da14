import math

import torch

from imageclf.data.augment import (
    AugmentConfig,
    affine,
    apply_flip,
    augment_batch,
    cutout,
    flip_mask,
    random_resized_crop,
    translate,
)


def _batch(n=8, h=8, w=8):
    torch.manual_seed(0)
    return torch.randn(n, 3, h, w).contiguous(memory_format=torch.channels_last)


def test_flip_is_an_involution_and_only_flips_masked():
    x = _batch()
    mask = torch.tensor([True, False] * 4)
    y = apply_flip(x, mask)
    torch.testing.assert_close(apply_flip(y, mask), x)
    torch.testing.assert_close(y[1], x[1])
    torch.testing.assert_close(y[0], x[0].flip(-1))


def test_alternate_flip_complements_between_epochs():
    idx = torch.arange(1000)
    gen = torch.Generator().manual_seed(0)
    even = flip_mask(idx, 0, "alternate", gen, seed=0)
    odd = flip_mask(idx, 1, "alternate", gen, seed=0)
    assert torch.equal(even, ~odd)
    assert 400 < int(even.sum()) < 600  # about half
    assert torch.equal(even, flip_mask(idx, 2, "alternate", gen, seed=0))


def test_translate_is_a_window_of_the_reflect_padded_image():
    x = _batch(n=16)
    gen = torch.Generator().manual_seed(1)
    y = translate(x, 2, gen)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(y[i], win) for win in windows)
    assert not torch.equal(y, x)  # 16 images: some moved


def test_cutout_zeroes_a_square_inside_the_image():
    x = torch.ones(32, 3, 16, 16)
    y = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (y == 0).all(1).sum(dim=(1, 2))
    assert (zeros <= 16).all() and (zeros > 0).all()
    assert torch.equal((y == 0).any(1), (y == 0).all(1))  # all channels together


def _ramps(n: int, size: int) -> torch.Tensor:
    """Channel 0 = x, channel 1 = y, each pixel's centre in affine_grid's [-1, 1] units, so
    bilinear sampling returns the sampled point's own coordinates wherever it lands inside."""
    centres = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    x = centres.expand(size, size)
    ramps = torch.stack([x, x.T, torch.zeros_like(x)])
    return ramps.expand(n, 3, size, size).float().contiguous(memory_format=torch.channels_last)


def _fit_plane(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Least-squares (a, b, c) with image ~ a*x + b*y + c over the given pixels."""
    design = torch.stack([coords[0], coords[1], torch.ones_like(coords[0])], 1).double()
    return torch.linalg.lstsq(design, image.double()[:, None]).solution[:, 0]


def test_affine_identity_and_shape():
    x = _batch()
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(affine(x, 0.0, 0.0, gen), x, atol=1e-5, rtol=1e-5)
    assert affine(x, 15, 0.1, gen).shape == x.shape


def test_affine_is_a_rotation_and_shift_within_the_ranges():
    """Sampling the coordinate ramps returns the source point of every output pixel, so
    the output is the affine map itself: read back each image's angle and shift."""
    n, size, degrees, shift = 64, 33, 15.0, 0.1
    x = _ramps(n, size)
    y = affine(x, degrees, shift, torch.Generator().manual_seed(0)).double()
    ramps = _ramps(1, size)[0].double()
    # Central pixels: their source points stay inside the image (no border clamping).
    inner = slice(size // 4, size - size // 4)
    coords = ramps[:2, inner, inner].reshape(2, -1)
    found = []  # per image: angle (degrees), horizontal and vertical shift (image sides)
    for i in range(n):
        a, b, c = _fit_plane(y[i, 0, inner, inner].reshape(-1), coords)  # cos, -sin, tx
        d, e, f = _fit_plane(y[i, 1, inner, inner].reshape(-1), coords)  # sin, cos, ty
        # A rotation: no scale, no shear, and both channels agree on the angle.
        torch.testing.assert_close(torch.stack([e, d]), torch.stack([a, -b]), atol=1e-4, rtol=0)
        assert abs(a * a + d * d - 1) < 1e-4
        # Grid units span 2 per side: a shift of `shift` sides is 2 * shift units.
        found.append([math.degrees(math.atan2(d, a)), c / 2, f / 2])
    found = torch.tensor(found).T
    assert (found[1] - found[2]).abs().max() > shift / 2  # the two shifts are drawn apart
    for values, limit in zip(found, [degrees, shift, shift], strict=True):
        assert values.abs().max() <= limit * 1.001
        # The random draws span the range both ways (not stuck at zero or at one value).
        assert values.max() > limit / 2 and values.min() < -limit / 2


def test_augment_batch_replays_with_same_generator():
    x = _batch(n=32)
    cfg = AugmentConfig(flip="random", translate=2, cutout=4, rotate=10, shift=0.1)
    idx = torch.arange(32)
    a = augment_batch(x, idx, 0, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(x, idx, 0, cfg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    # Replaying means something only if the batch was changed, and by the generator.
    changed = (a - x).flatten(1).abs().amax(1) > 0.1
    assert changed.all(), f"{int((~changed).sum())} of 32 images left as they were"
    other = augment_batch(x, idx, 0, cfg, torch.Generator().manual_seed(6))
    assert (other - a).abs().amax() > 0.1
    assert torch.equal(augment_batch(x, idx, 0, AugmentConfig(), torch.Generator()), x)


def test_random_resized_crop_zooms_into_boxes_of_the_image():
    # a horizontal ramp: a crop of the whole image reproduces it, a smaller box zooms in
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    gen = torch.Generator().manual_seed(0)
    whole = random_resized_crop(ramp, 1.0, gen, ratio=(1.0, 1.0))
    torch.testing.assert_close(whole, ramp, atol=1e-5, rtol=1e-5)
    crops = random_resized_crop(ramp, 0.25, torch.Generator().manual_seed(1))
    assert crops.shape == ramp.shape
    span = crops[:, 0, 32, -1] - crops[:, 0, 32, 0]  # how much of the ramp each crop covers
    assert (span <= 1.0 + 1e-5).all() and (span >= 0.45).all() and (span < 0.99).any()
    assert crops.min() >= 0 and crops.max() <= 1  # inside the picture: no padding
    again = random_resized_crop(ramp, 0.25, torch.Generator().manual_seed(1))
    torch.testing.assert_close(crops, again)  # replayable from the generator
