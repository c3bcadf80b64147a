"""Paper crops (§1.7 Listing 1, §3.5 Listing 2) and the plain resize: shapes, ranges, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_zero.data.transforms import (
    DVAETransform,
    PriorTransform,
    ResizeTransform,
    aspect_ratio_ok,
    make_transform,
    pil_to_tensor,
)


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["dvae", "prior", "resize"])
@pytest.mark.parametrize("size", [(100, 60), (40, 90), (32, 32), (20, 12)])
def test_output_is_res_square_float_in_unit_range(name, size):
    t = make_transform(name, 32)
    out = t(noise_image(*size), gen(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("name", ["dvae", "prior"])
def test_same_seed_same_crop_and_other_seeds_differ(name):
    t, img = make_transform(name, 32), noise_image(120, 80)
    assert torch.equal(t(img, gen(3)), t(img, gen(3)))
    assert any(not torch.equal(t(img, gen(3)), t(img, gen(s))) for s in range(4, 10))


def test_dvae_transform_flips_horizontally_about_half_the_time():
    img = noise_image(32, 32)
    plain = pil_to_tensor(img)
    t = DVAETransform(resolution=32)  # s_min = res: no rescale, no crop: only the flip is random
    outs = [t(img, gen(s)) for s in range(200)]
    flipped = sum(torch.equal(o, plain.flip(-1)) for o in outs)
    assert sum(torch.equal(o, plain) for o in outs) + flipped == 200
    assert 70 < flipped < 130


def test_prior_transform_never_flips_and_crops_near_the_centre():
    # A tall image whose left half is black, right half white: a flip would swap them.
    arr = np.zeros((96, 48, 3), np.uint8)
    arr[:, 24:] = 255
    img = Image.fromarray(arr)
    for s in range(20):
        out = PriorTransform(resolution=48)(img, gen(s))
        assert out[:, :, :20].max() == 0 and out[:, :, 28:].min() == 1


def test_prior_crop_offset_is_in_the_middle_quarter():
    # Rows are numbered by their grey level: the crop's first row tells the offset.
    h, w = 200, 40
    arr = np.repeat(np.arange(h, dtype=np.uint8)[:, None, None], w, 1).repeat(3, 2)
    for s in range(30):
        out = PriorTransform(resolution=40, max_scale=1.0)(Image.fromarray(arr), gen(s))
        top = round(float(out[0, 0, 0]) * 255)
        assert 3 * (h - w) // 8 <= top < 5 * (h - w) // 8


def test_resize_transform_is_deterministic_and_area_averages():
    img = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]] * 2, np.uint8))  # 2x2: black|white
    out = ResizeTransform(resolution=1)(img)
    assert torch.allclose(out, torch.full((3, 1, 1), 127.5 / 255), atol=1 / 255)
    big = noise_image(64, 64)
    assert torch.equal(ResizeTransform(resolution=32)(big, gen(1)), ResizeTransform(resolution=32)(big, gen(2)))


def test_aspect_ratio_filter_is_the_papers_half_to_two():
    assert aspect_ratio_ok(200, 100) and aspect_ratio_ok(100, 200) and aspect_ratio_ok(64, 64)
    assert not aspect_ratio_ok(201, 100) and not aspect_ratio_ok(100, 201)


def test_bad_transform_settings_are_rejected():
    with pytest.raises(ValueError, match="resolution"):
        DVAETransform(resolution=0)
    with pytest.raises(ValueError, match="resample"):
        ResizeTransform(resolution=8, resample="nearest-ish")
    with pytest.raises(ValueError, match="unknown transform"):
        make_transform("mixup", 8)
