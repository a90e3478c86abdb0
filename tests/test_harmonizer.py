"""The learned colour-transform harmonizer: transform algebra, full-resolution path, training, weights."""

import numpy as np
import pytest
import torch

from core.harmonization.inputs import check_composite
from core.harmonization.transform import apply_global_transform, harmonize_transform, load_harmonizer
from core.models.harmonizer import (
    HarmonizerConfig,
    WhiteBoxHarmonizer,
    apply_curves,
    apply_transform,
    foreground_mse,
    region_weights,
)
from core.protocol import SemanticError
from core.training.harmonizer import export
from core.weights import Manifest, register_weights, save_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = HarmonizerConfig(use_backbone=False, hidden=32, dropout=0.0)


def composite(seed=0, size=48):
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size + 8, 3)) * 200 + 20).astype(np.uint8)
    mask = np.zeros((size, size + 8), np.float32)
    mask[10:30, 12:40] = 1.0
    mask[9, 12:40] = 0.5  # a soft edge
    return image, mask


def test_the_untrained_model_is_the_identity_transform():
    model = WhiteBoxHarmonizer(SMALL).eval()
    rgb = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    params = model(rgb, mask)
    assert torch.equal(params, torch.zeros_like(params))
    assert torch.allclose(apply_transform(params, rgb, SMALL.curve_knots), rgb, atol=1e-6)


def test_curves_are_monotone_and_continue_their_end_segments():
    raw = torch.randn(4, 3, 8)
    values = torch.linspace(-0.5, 1.5, 201).expand(4, 3, 201)
    out = apply_curves(raw, values)
    assert (out.diff(dim=-1) >= -1e-6).all()
    identity = apply_curves(torch.zeros(1, 1, 8), torch.tensor([[[-0.25, 0.3, 1.25]]]))
    assert torch.allclose(identity, torch.tensor([[[-0.25, 0.3, 1.25]]]), atol=1e-6)


def test_numpy_full_resolution_transform_matches_the_trained_torch_one():
    params = torch.randn(1, SMALL.parameter_count) * 0.3
    pixels = torch.rand(1, 3, 10, 10)
    expected = apply_transform(params, pixels, SMALL.curve_knots)[0].permute(1, 2, 0).numpy()
    got = apply_global_transform(pixels[0].permute(1, 2, 0).numpy(), params[0].double().numpy(), SMALL.curve_knots)
    assert np.allclose(got, expected, atol=1e-5)


def test_ring_is_background_around_the_object_and_alpha_weights_every_region():
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 15:25, 15:25] = 1
    alpha = torch.ones_like(mask)
    alpha[..., :, :5] = 0
    weights = region_weights(mask, alpha, ring_fraction=0.1)
    fg, bg, ring = weights[0]
    assert ring[15:25, 15:25].sum() == 0 and ring[12, 20] == 1 and ring[2, 2] == 0
    assert torch.equal(fg, mask[0, 0]) and bg[:, :5].sum() == 0


def trained_small_model(tmp_path):
    model = WhiteBoxHarmonizer(SMALL)
    with torch.no_grad():
        model.predictor.mlp[-1].bias[9:12] = 0.1  # a known transform: brighten every channel
    directory = tmp_path / "weights"
    directory.mkdir()
    path = directory / "harmonizer-test.safetensors"
    save_tensors(path, model.predictor.state_dict())
    register_weights(path, "harmonizer-test", "harmonizer", SMALL.to_dict(), directory=directory)
    return Manifest.load(directory)


def test_full_resolution_path_keeps_background_bits_soft_edges_alpha_and_dtype(tmp_path):
    model = load_harmonizer("harmonizer-test", trained_small_model(tmp_path))
    image, mask = composite()
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 77, np.uint8)], axis=2)
    out = harmonize_transform(rgba, mask, model)
    assert out.dtype == np.uint8 and out.shape == rgba.shape
    assert np.array_equal(out[mask == 0], rgba[mask == 0]) and np.all(out[..., 3] == 77)
    inside = out[15, 20, :3].astype(int) - image[15, 20].astype(int)
    edge = out[9, 20, :3].astype(int) - image[9, 20].astype(int)
    assert np.all(np.abs(inside - 26) <= 1)  # +0.1 of 255, clipped nowhere here
    assert np.all(np.abs(edge - 13) <= 1)  # half the effect on the half-selected row
    wide = harmonize_transform(image.astype(np.uint16) * 257, mask, model, strength=0.5)
    assert wide.dtype == np.uint16 and np.array_equal(wide[mask == 0], image[mask == 0].astype(np.uint16) * 257)
    gray = harmonize_transform(image[..., :1], mask, model)
    assert gray.shape == image[..., :1].shape and np.array_equal(gray[mask == 0], image[..., :1][mask == 0])


@pytest.mark.parametrize("bad_mask, words", [(np.zeros((48, 56), np.float32), "empty"),
                                             (np.ones((48, 56), np.float32), "whole layer"),
                                             (np.zeros((10, 10), np.float32), "must match")])
def test_bad_masks_are_refused_with_a_message(tmp_path, bad_mask, words):
    model = load_harmonizer("harmonizer-test", trained_small_model(tmp_path))
    with pytest.raises(SemanticError) as info:
        harmonize_transform(composite()[0], bad_mask, model)
    assert words in info.value.message


def test_training_learns_to_undo_a_global_change():
    """Foregrounds darkened by half a stop and cooled: the head must learn the inverse transform."""
    torch.manual_seed(0)
    model = WhiteBoxHarmonizer(SMALL)
    target = torch.rand(64, 3, 16, 16) * 0.6 + 0.2
    mask = torch.zeros(64, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    changed = (target * torch.tensor([0.6, 0.7, 0.9])[:, None, None]).clamp(0, 1)
    composite_ = target + mask * (changed - target)
    optimizer = torch.optim.Adam(model.predictor.parameters(), lr=3e-3)
    description = model.describe(composite_, mask)

    def loss():
        params = model.predictor(description)
        out = composite_ + mask * (apply_transform(params, composite_, SMALL.curve_knots) - composite_)
        return foreground_mse(out, target, mask)

    start = loss().item()
    for _ in range(150):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.05 * start


def test_export_writes_only_the_predictor_and_it_loads_back(tmp_path):
    model = WhiteBoxHarmonizer(SMALL)
    with torch.no_grad():
        model.predictor.mlp[-1].bias.fill_(0.01)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": SMALL.to_dict(), "step": 7, "best": 1.0}, run / "best.pt")
    export(run, "harmonizer-x", directory=tmp_path)
    loaded = load_harmonizer("harmonizer-x", Manifest.load(tmp_path))
    assert torch.allclose(loaded.predictor.mlp[-1].bias, torch.full_like(loaded.predictor.mlp[-1].bias, 0.01),
                          atol=1e-4)


def test_a_corrupt_head_file_is_named(tmp_path):
    manifest = trained_small_model(tmp_path)
    path = manifest.path("harmonizer-test")
    path.write_bytes(path.read_bytes()[:-4] + b"oops")
    with pytest.raises(SemanticError) as info:
        load_harmonizer("harmonizer-test", manifest)
    assert str(path) in info.value.message


def test_the_default_averages_its_heads_arguments(tmp_path):
    from core.harmonization.transform import load_harmonizers, predict_transform

    directory = tmp_path / "weights"
    directory.mkdir()
    for weight_id, lift in (("head-a", 0.1), ("head-b", 0.3)):
        model = WhiteBoxHarmonizer(SMALL)
        with torch.no_grad():
            model.predictor.mlp[-1].bias[9:12] = lift
        path = directory / f"{weight_id}.safetensors"
        save_tensors(path, model.predictor.state_dict())
        register_weights(path, weight_id, "harmonizer", SMALL.to_dict(), directory=directory)
    models = load_harmonizers(("head-a", "head-b"), Manifest.load(directory))
    image, mask = composite()
    assert np.allclose(predict_transform(check_composite(image, mask, 1.0), models)[9:12], 0.2, atol=1e-3)
    out = harmonize_transform(image, mask, models)
    assert np.all(np.abs(out[15, 20].astype(int) - image[15, 20].astype(int) - 51) <= 1)  # +0.2 of 255


def test_invisible_pixels_belong_to_no_region(tmp_path):
    """As statistics and dih: a selection over transparent pixels only is empty, and what transparent
    pixels happen to hold does not change the predicted transform."""
    from core.harmonization.transform import predict_transform

    manifest = trained_small_model(tmp_path)
    model = load_harmonizer("harmonizer-test", manifest)
    with torch.no_grad():  # make the prediction depend on the description
        model.predictor.mlp[-1].weight.normal_(0, 0.05)
    image, mask = composite()
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    rgba[:, :6, 3] = 0  # a transparent strip, outside the selection
    other = rgba.copy()
    other[:, :6, :3] = 255 - other[:, :6, :3]
    assert np.allclose(predict_transform(check_composite(rgba, mask, 1.0), [model]),
                       predict_transform(check_composite(other, mask, 1.0), [model]), atol=1e-5)
    hidden = rgba.copy()
    hidden[..., 3][mask > 0] = 0
    with pytest.raises(SemanticError) as info:
        harmonize_transform(hidden, mask, model)
    assert "empty" in info.value.message
