"""Deep Image Harmonization network: shapes, skip/concat wiring, Eq. 3 loss, a tiny overfit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.models.dih import (
    IGNORE_LABEL,
    PAPER,
    SMALL,
    VARIANTS,
    DeepHarmonization,
    DIHConfig,
    joint_loss,
    reconstruction_loss,
)

TINY = DIHConfig(resolution=32, channels=(8, 8, 16), fc_dim=64, parsing_classes=5, residual=True,
                 fg_normalized=True)


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    composite = torch.rand(n, 3, size, size, generator=g)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    return composite, mask


@pytest.mark.parametrize("semantic", [True, False])
def test_output_shapes(semantic):
    config = replace(TINY, semantic=semantic)
    model = DeepHarmonization(config)
    composite, mask = _batch()
    out = model(composite, mask)
    assert out["image"].shape == (2, 3, 32, 32)
    if semantic:
        assert out["parsing"].shape == (2, 5, 32, 32)
    else:
        assert out["parsing"] is None and model.parsing is None


def test_paper_config_is_the_released_architecture():
    assert PAPER.resolution == 512 and PAPER.channels == (64, 64, 128, 128, 256, 256, 512)
    assert PAPER.bottleneck_size == 4 and PAPER.fc_dim == 1024  # fc7 reshaped to 64×4×4
    model = DeepHarmonization(PAPER)
    assert model.fc[0].in_features == 512 * 4 * 4 and model.fc[0].out_features == 1024
    for layer in model.encoder:
        conv = layer[0]
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2)
        assert isinstance(layer[1], torch.nn.BatchNorm2d) and isinstance(layer[2], torch.nn.ELU)


def test_small_variant_fits_the_weight_budget():
    for name in ("small", "small-nosem"):
        params = sum(p.numel() for p in DeepHarmonization(VARIANTS[name]).parameters())
        assert params * 2 < 25e6  # fp16 bytes


def test_skip_links_and_parsing_concat_channels():
    """Every harmonization layer after the first takes [decoder, encoder skip, parsing features]."""
    model = DeepHarmonization(TINY)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
             for layer in model.harmonization]
    model(*_batch())
    for h in hooks:
        h.remove()
    code = TINY.fc_dim // TINY.bottleneck_size ** 2
    # layer 3 (4×4): the code; layer 2 (8×8): 8 decoder + 8 skip (encoder 2) + 8 parsing;
    # layer 1 (16×16): 8 decoder + 8 skip (encoder 1) + 8 parsing
    assert seen == [code, 8 + 8 + 8, 8 + 8 + 8]
    nosem = DeepHarmonization(replace(TINY, semantic=False))
    seen.clear()
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1]))
             for layer in nosem.harmonization]
    nosem(*_batch())
    assert seen == [code, 8 + 8, 8 + 8]


def test_parsing_features_reach_the_harmonized_image():
    config = replace(TINY, residual=False)
    model = DeepHarmonization(config)
    composite, mask = _batch()
    model(composite, mask)["image"].sum().backward()
    # All parsing layers but the last feed the harmonization decoder, so they get gradient from it.
    for layer in list(model.parsing)[:-1]:
        assert layer[0].weight.grad is not None and layer[0].weight.grad.abs().sum() > 0
    assert model.parsing[-1].weight.grad is None


def test_every_encoder_layer_has_a_skip_link():
    """Perturbing one encoder layer's output changes the image even with the bottleneck held fixed."""
    torch.manual_seed(0)
    model = DeepHarmonization(replace(TINY, residual=False, semantic=False)).eval()
    composite, mask = _batch()
    base = model(composite, mask)["image"]
    for layer in model.encoder[:-1]:
        handle = layer.register_forward_hook(lambda m, inp, out: out + 1.0)
        fc_handle = model.fc.register_forward_hook(lambda m, inp, out: out.detach() * 0)
        changed = model(composite, mask)["image"]
        fc_handle.remove()
        handle.remove()
        fixed_fc = model.fc.register_forward_hook(lambda m, inp, out: out.detach() * 0)
        reference = model(composite, mask)["image"]
        fixed_fc.remove()
        assert not torch.allclose(changed, reference)
    assert base.shape == (2, 3, 32, 32)


def test_residual_starts_as_identity_and_leaves_background():
    model = DeepHarmonization(TINY)
    composite, mask = _batch()
    out = model(composite, mask)["image"]
    assert torch.equal(out, composite)  # the correction layer starts at zero
    with torch.no_grad():
        model.harmonization[-1].bias.fill_(0.1)
    out = model(composite, mask)["image"]
    assert torch.equal(out[mask.expand_as(out) == 0], composite[mask.expand_as(out) == 0])


def test_joint_loss_is_eq3_and_ignores_unknown_labels():
    model = DeepHarmonization(TINY)
    composite, mask = _batch()
    target = composite.clone()
    out = model(composite, mask)
    labels = torch.full((2, 32, 32), IGNORE_LABEL, dtype=torch.long)
    loss, parts = joint_loss(out, target, mask, labels, TINY)
    assert parts["cro"] == 0.0 and loss.item() == pytest.approx(TINY.lambda_rec * parts["rec"])
    labels[:, :16] = 2
    loss, parts = joint_loss(out, target, mask, labels, TINY)
    assert parts["cro"] > 0
    assert loss.item() == pytest.approx(TINY.lambda_rec * parts["rec"] + TINY.lambda_cro * parts["cro"], rel=1e-5)


def test_fg_normalized_loss_weights_small_objects_up():
    target = torch.zeros(1, 3, 32, 32)
    output = target.clone()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :8, :8] = 1
    output[..., :8, :8] = 0.5
    paper = reconstruction_loss(output, target, mask, replace(TINY, fg_normalized=False))
    fg = reconstruction_loss(output, target, mask, TINY)
    assert paper.item() == pytest.approx(0.75 * 64 / 1024)
    assert fg.item() == pytest.approx(0.75)


def test_config_round_trip():
    assert DIHConfig.from_dict(SMALL.to_dict()) == SMALL
    assert DIHConfig.from_dict({**PAPER.to_dict(), "unknown": 1}) == PAPER


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError):
        DeepHarmonization(replace(TINY, resolution=40))


def test_freeze_parsing_keeps_parsing_fixed():
    model = DeepHarmonization(TINY)
    model.freeze_parsing()
    model.train()
    assert all(not p.requires_grad for p in model.parsing.parameters())
    assert not model.parsing[0][1].training and model.encoder[0][1].training


@pytest.mark.parametrize("config", [TINY, replace(TINY, residual=False, fg_normalized=False)],
                         ids=["improved", "paper-loss"])
def test_tiny_overfit_reduces_the_loss(config):
    torch.manual_seed(0)
    model = DeepHarmonization(config)
    composite, mask = _batch(n=2)
    target = composite.clone()
    target[:, 0] = (target[:, 0] * 0.6 + 0.3) * mask[:, 0] + target[:, 0] * (1 - mask[:, 0])
    labels = torch.randint(0, config.parsing_classes, (2, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = joint_loss(model(composite, mask), target, mask, labels, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_global_head_starts_as_identity_and_maps_colours_inside_the_mask():
    config = replace(TINY, global_head=True)
    model = DeepHarmonization(config).eval()
    composite, mask = _batch()
    assert torch.equal(model(composite, mask)["image"], composite)
    with torch.no_grad():
        model.code_head.bias[9:] = torch.tensor([0.1, 0.0, -0.1])  # offset of the affine map
    out = model(composite, mask)["image"]
    inside, outside = mask.expand_as(out) == 1, mask.expand_as(out) == 0
    assert torch.equal(out[outside], composite[outside])
    torch.testing.assert_close((out - composite)[:, 0][mask[:, 0] == 1].mean(), torch.tensor(0.1))
    assert inside.any()


def test_region_statistics():
    from core.models.dih import region_statistics

    composite = torch.zeros(1, 3, 4, 4)
    composite[..., :2, :] = 1.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    stats = region_statistics(composite, mask)
    assert stats.shape == (1, 12)
    torch.testing.assert_close(stats[0, :3], torch.ones(3))  # fg mean
    torch.testing.assert_close(stats[0, 6:9], torch.zeros(3))  # bg mean
