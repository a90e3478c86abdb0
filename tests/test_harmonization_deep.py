"""Full-resolution deep harmonization: background untouched, soft masks, sharp edges, weight errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.harmonization.deep import (
    DEFAULT_WEIGHTS,
    apply_local_affine,
    fit_local_affine,
    harmonize_deep,
    load_model,
)
from core.models.dih import DeepHarmonization, DIHConfig
from core.protocol import ErrorCode, SemanticError
from core.weights import Manifest, register_weights, save_tensors

TINY = DIHConfig(resolution=32, channels=(8, 8, 16), fc_dim=64, parsing_classes=5, residual=True,
                 fg_normalized=True)


def _model(seed: int = 0) -> DeepHarmonization:
    """A small network whose correction is not zero (random last layer), so it changes colours."""
    torch.manual_seed(seed)
    model = DeepHarmonization(TINY)
    torch.nn.init.normal_(model.harmonization[-1].weight, std=0.05)
    torch.nn.init.constant_(model.harmonization[-1].bias, 0.1)
    return model.eval()


def _scene(height=120, width=160, dtype=np.uint8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, channels)).astype(np.float32)
    if dtype == np.uint8:
        image = (image * 255).astype(np.uint8)
    elif dtype == np.uint16:
        image = (image * 65535).astype(np.uint16)
    mask = np.zeros((height, width), np.float32)
    mask[30:90, 40:120] = 1.0
    mask[30:90, 36:40] = 0.5  # a soft edge
    return image, mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_background_is_bit_identical(dtype, channels):
    image, mask = _scene(dtype=dtype, channels=channels)
    result = harmonize_deep(image, mask, _model())
    assert result.dtype == image.dtype and result.shape == image.shape
    outside = mask == 0
    assert np.array_equal(result[outside], image[outside])
    assert not np.array_equal(result[mask == 1], image[mask == 1])
    if channels == 4:
        assert np.array_equal(result[..., 3], image[..., 3])  # alpha kept


def test_soft_mask_blends_proportionally():
    image = np.full((64, 64, 3), 0.6, np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[:, 16:48] = 1.0
    mask[:, 48:] = 0.25
    coeffs = np.zeros((16, 16, 12), np.float32)
    coeffs[..., [0, 4, 8]] = 0.5  # out = 0.5·in
    result = apply_local_affine(image, mask, coeffs)
    np.testing.assert_allclose(result[:, 20], 0.3, atol=1e-6)
    np.testing.assert_allclose(result[:, 50], 0.6 + 0.25 * (0.3 - 0.6), atol=1e-6)
    assert np.array_equal(result[:, :16], image[:, :16])


def test_strength_scales_the_change():
    image, mask = _scene()
    model = _model()
    full = harmonize_deep(image, mask, model).astype(np.float32)
    half = harmonize_deep(image, mask, model, strength=0.5).astype(np.float32)
    inside = mask == 1
    change_full = np.abs(full - image)[inside].mean()
    change_half = np.abs(half - image)[inside].mean()
    assert 0.35 < change_half / change_full < 0.65
    assert np.array_equal(harmonize_deep(image, mask, model, strength=0.0), image)


def test_fit_recovers_a_global_affine_colour_change():
    rng = np.random.default_rng(1)
    source = rng.random((48, 48, 3)).astype(np.float32)
    matrix = np.array([[0.8, 0.1, 0.0], [0.0, 1.1, 0.0], [0.05, 0.0, 0.7]], np.float32)
    target = source @ matrix.T + np.array([0.05, -0.02, 0.1], np.float32)
    weight = np.zeros((48, 48), np.float32)
    weight[8:40, 8:40] = 1
    coeffs = fit_local_affine(source, target, weight)
    np.testing.assert_allclose(coeffs[24, 24, :9].reshape(3, 3), matrix, atol=0.02)
    np.testing.assert_allclose(coeffs[24, 24, 9:], [0.05, -0.02, 0.1], atol=0.02)


def _high_frequency_energy(gray: np.ndarray) -> float:
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


def test_full_resolution_keeps_edges_sharp():
    """The change is fitted at 32×32 and applied at 512×512: fine texture survives, scaled by the gain."""
    import cv2

    rng = np.random.default_rng(2)
    size = 512
    yy, xx = np.mgrid[:size, :size]
    blocks = np.kron(rng.random((8, 8)), np.ones((64, 64)))  # coarse content the fit can see
    checker = 0.1 * ((yy // 2 + xx // 2) % 2)  # 2-pixel detail it cannot
    image = np.repeat((0.2 + 0.5 * blocks + checker)[..., None], 3, axis=2).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[128:384, 128:384] = 1
    gain = 0.7
    small = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
    coeffs = fit_local_affine(small, small * gain + 0.1, cv2.resize(mask, (32, 32), interpolation=cv2.INTER_AREA))
    result = apply_local_affine(image, mask, coeffs)
    inner = (slice(160, 352), slice(160, 352))
    ratio = _high_frequency_energy(result[inner][..., 0]) / _high_frequency_energy(image[inner][..., 0])
    assert ratio == pytest.approx(gain ** 2, rel=0.15)
    # Upsampling the low-resolution result itself (what a naive pipeline does) loses the texture.
    naive = cv2.resize(small * gain + 0.1, (size, size), interpolation=cv2.INTER_LINEAR)
    assert _high_frequency_energy(naive[inner][..., 0]) < 0.2 * _high_frequency_energy(result[inner][..., 0])


def test_full_pipeline_preserves_detail_through_the_network():
    rng = np.random.default_rng(3)
    size = 256
    image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[64:192, 64:192] = 1
    result = harmonize_deep(image, mask, _model()).astype(np.float32)
    inner = (slice(80, 176), slice(80, 176))
    before = _high_frequency_energy(image[inner].astype(np.float32).mean(axis=2))
    after = _high_frequency_energy(result[inner].mean(axis=2))
    assert after > 0.5 * before


def test_empty_and_full_masks_are_bad_input():
    image, mask = _scene()
    with pytest.raises(SemanticError) as info:
        harmonize_deep(image, np.zeros_like(mask), _model())
    assert info.value.code is ErrorCode.bad_input and "empty" in info.value.message
    with pytest.raises(SemanticError) as info:
        harmonize_deep(image, np.ones_like(mask), _model())
    assert info.value.code is ErrorCode.bad_input
    with pytest.raises(SemanticError):
        harmonize_deep(image, mask[:10], _model())


def _export(tmp_path, model: DeepHarmonization, config: DIHConfig, weight_id="dih-test"):
    path = tmp_path / f"{weight_id}.safetensors"
    tensors = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_tensors(path, tensors)
    register_weights(path, weight_id, model="dih", config=config.to_dict(), directory=tmp_path)
    return path


def test_weights_round_trip(tmp_path):
    model = _model()
    _export(tmp_path, model, TINY)
    loaded = load_model("dih-test", Manifest.load(tmp_path))
    image, mask = _scene()
    np.testing.assert_allclose(harmonize_deep(image, mask, loaded).astype(np.float32),
                               harmonize_deep(image, mask, model).astype(np.float32), atol=2)


def test_corrupt_weights_give_a_clear_error_naming_the_file(tmp_path):
    path = _export(tmp_path, _model(), TINY)
    data = bytearray(path.read_bytes())
    data[-10:] = b"\x00" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(SemanticError) as info:
        load_model("dih-test", Manifest.load(tmp_path))
    assert info.value.code is ErrorCode.weights_corrupt
    assert str(path) in info.value.message


def test_weights_for_another_shape_give_a_clear_error(tmp_path):
    other = DIHConfig(resolution=32, channels=(4, 8, 16), fc_dim=64, parsing_classes=5)
    path = _export(tmp_path, DeepHarmonization(other), other)
    manifest = Manifest.load(tmp_path)
    entry = manifest.entries["dih-test"]
    manifest.entries["dih-test"] = type(entry)(**{**entry.__dict__, "config": TINY.to_dict()})
    manifest.save()
    with pytest.raises(SemanticError) as info:
        load_model("dih-test", Manifest.load(tmp_path))
    assert info.value.code is ErrorCode.weights_corrupt and str(path) in info.value.message


def test_missing_weights_name_the_id(tmp_path):
    with pytest.raises(SemanticError) as info:
        load_model("dih-nothing", Manifest.load(tmp_path))
    assert info.value.code is ErrorCode.weights_missing


def test_shipped_weights_load_and_harmonize():
    manifest = Manifest.load()
    if DEFAULT_WEIGHTS not in manifest.entries:
        pytest.skip(f"{DEFAULT_WEIGHTS} is not in weights/manifest.json yet")
    model = load_model(DEFAULT_WEIGHTS, manifest)
    image, mask = _scene(height=300, width=500)
    result = harmonize_deep(image, mask, model)
    assert np.array_equal(result[mask == 0], image[mask == 0])


def test_harmonize_action_runs_dih_also_under_its_old_name_deep():
    from core.actions.base import JobContext, ModelCache
    from core.actions.harmonize import METHODS, run

    if DEFAULT_WEIGHTS not in Manifest.load().entries:
        pytest.skip(f"{DEFAULT_WEIGHTS} is not in weights/manifest.json yet")
    assert {"dih", "statistics", "transform"} <= set(METHODS)
    image, mask = _scene(height=90, width=120)
    ctx = JobContext(device=torch.device("cpu"), models=ModelCache())
    mask_u8 = (mask[..., None] * 255).astype(np.uint8)
    result = run({"image": image, "mask": mask_u8}, {"method": "deep"}, ctx)["image"]
    assert result.shape == image.shape and np.array_equal(result[mask == 0], image[mask == 0])
    assert any(key.startswith("dih:") for key in ctx.models.keys())  # loaded once, kept for the next job


def _transparent_scene(hidden_rgb: int, dtype=np.uint8):
    """RGBA scene whose left third is invisible (alpha 0) and holds ``hidden_rgb``; the rest is half
    or fully opaque, and so is part of the foreground."""
    image, mask = _scene(channels=4, dtype=np.uint8)
    image[..., 3] = 255
    image[:, 100:, 3] = 128
    image[:, :50, :3] = hidden_rgb
    image[:, :50, 3] = 0
    image[40:60, 40:50, :3] = hidden_rgb  # invisible foreground pixels too (mask starts at column 36)
    if dtype == np.uint16:
        image = image.astype(np.uint16) * 257
    return image, mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_invisible_pixels_do_not_change_the_result(dtype):
    """As in statistics transfer, pixels with alpha 0 are neither foreground nor background: whatever
    colour they hold, the visible pixels get the same result."""
    model = _model()
    dark, dark_mask = _transparent_scene(0, dtype)
    bright, _ = _transparent_scene(255, dtype)
    out_dark = harmonize_deep(dark, dark_mask, model)
    out_bright = harmonize_deep(bright, dark_mask, model)
    visible = dark[..., 3] > 0
    assert np.array_equal(out_dark[visible], out_bright[visible])
    assert not np.array_equal(out_dark[visible & (dark_mask == 1)], dark[visible & (dark_mask == 1)])
    assert np.array_equal(out_dark[..., 3], dark[..., 3])


def test_no_visible_background_is_bad_input():
    image, mask = _scene(channels=4)
    image[..., 3] = 0
    image[mask == 1, 3] = 255  # only the fully selected pixels are visible
    with pytest.raises(SemanticError) as info:
        harmonize_deep(image, mask, _model())
    assert info.value.code is ErrorCode.bad_input and "background" in info.value.message
    image[..., 3] = 255
    image[mask > 0, 3] = 0  # the selection is invisible
    with pytest.raises(SemanticError) as info:
        harmonize_deep(image, mask, _model())
    assert info.value.code is ErrorCode.bad_input and "empty" in info.value.message
