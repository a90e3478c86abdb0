import numpy as np
import pytest

from core.harmonization.statistics import harmonize_statistics
from core.imaging.color import rgb_to_lab
from core.protocol import SemanticError


def composite(dtype=np.uint8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    h, w = 64, 80
    background = np.stack([0.8 + 0.1 * rng.random((h, w)), 0.5 + 0.1 * rng.random((h, w)),
                           0.2 + 0.1 * rng.random((h, w))], -1)
    foreground = np.stack([0.2 + 0.1 * rng.random((h, w)), 0.3 + 0.1 * rng.random((h, w)),
                           0.8 + 0.1 * rng.random((h, w))], -1)
    mask = np.zeros((h, w), np.float32)
    mask[16:48, 20:60] = 1.0
    mask[14:16, 20:60] = 0.5  # a soft edge
    image = background * (1 - mask[..., None]) + foreground * mask[..., None]
    if channels == 4:
        image = np.concatenate([image, rng.random((h, w, 1))], -1)
    if dtype == np.uint8:
        image = (image * 255 + 0.5).astype(np.uint8)
    elif dtype == np.uint16:
        image = (image * 65535 + 0.5).astype(np.uint16)
    else:
        image = image.astype(np.float32)
    return image, mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [3, 4])
def test_background_is_bit_identical_and_alpha_kept(dtype, channels):
    image, mask = composite(dtype, channels)
    out = harmonize_statistics(image, mask, 1.0)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert np.array_equal(out[mask == 0], image[mask == 0])
    if channels == 4:
        assert np.array_equal(out[..., 3], image[..., 3])
    assert not np.array_equal(out[mask == 1], image[mask == 1])


def test_strength_zero_is_identity():
    image, mask = composite()
    assert np.array_equal(harmonize_statistics(image, mask, 0.0), image)


def test_foreground_statistics_move_to_background():
    image, mask = composite(np.float32)
    out = harmonize_statistics(image, mask, 1.0)
    lab_in, lab_out = rgb_to_lab(image), rgb_to_lab(out)
    fg, bg = mask == 1, mask == 0
    before = np.abs(lab_in[fg].mean(0) - lab_in[bg].mean(0)).sum()
    after = np.abs(lab_out[fg].mean(0) - lab_in[bg].mean(0)).sum()
    assert after < 0.2 * before


def test_soft_mask_blends_proportionally():
    image, mask = composite(np.float32)
    full = harmonize_statistics(image, mask, 1.0)
    edge = mask == 0.5
    change_edge = np.abs(full[edge] - image[edge]).mean()
    change_core = np.abs(full[mask == 1] - image[mask == 1]).mean()
    assert 0.2 * change_core < change_edge < 0.8 * change_core


def test_strength_is_monotonic():
    image, mask = composite(np.float32)
    changes = [np.abs(harmonize_statistics(image, mask, s) - image).mean() for s in (0.25, 0.5, 1.0)]
    assert changes[0] < changes[1] < changes[2]


def test_gray_image_stays_gray():
    image, mask = composite()
    gray = image.mean(axis=2, keepdims=True).astype(np.uint8)
    out = harmonize_statistics(gray, mask, 1.0)
    assert out.shape == gray.shape
    assert np.array_equal(out[mask == 0], gray[mask == 0])


def test_empty_and_full_masks_are_clear_errors():
    image, mask = composite()
    with pytest.raises(SemanticError, match="empty"):
        harmonize_statistics(image, np.zeros_like(mask), 1.0)
    with pytest.raises(SemanticError, match="whole layer"):
        harmonize_statistics(image, np.ones_like(mask), 1.0)
