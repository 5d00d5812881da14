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


def test_affine_identity_and_shape():
    x = _batch()
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(affine(x, 0.0, 0.0, gen), x, atol=1e-5, rtol=1e-5)
    assert affine(x, 15, 0.1, gen).shape == x.shape


def test_augment_batch_replays_with_same_generator():
    x = _batch(n=32)
    cfg = AugmentConfig(flip="random", translate=2, cutout=4, rotate=10, shift=0.1)
    idx = torch.arange(32)
    a = augment_batch(x, idx, 0, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(x, idx, 0, cfg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
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
