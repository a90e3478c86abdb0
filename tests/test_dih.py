"""Deep Image Harmonization network: the released model's wiring (sum skip links, fc7 bottleneck,
parsing features into the harmonization decoder), Eq. 3, the stage-two freeze, the v1 layout."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.models.dih import (
    IGNORE_LABEL,
    PAPER,
    PAPER_LAMBDA_CRO,
    SMALL,
    VARIANTS,
    DeepHarmonization,
    DIHConfig,
    joint_loss,
    reconstruction_loss,
)
from core.weights import Manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = DIHConfig(resolution=32, channels=(8, 8, 16), fc_dim=64, parsing_classes=5, residual=True,
                 fg_normalized=True)
TINY_V1 = replace(TINY, layout="v1")


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    composite = torch.rand(n, 3, size, size, generator=g)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    return composite, mask


def _record_inputs(layers) -> tuple[list[torch.Tensor], list]:
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
             for layer in layers]
    return seen, hooks


@pytest.mark.parametrize("config", [TINY, TINY_V1], ids=["released", "v1"])
@pytest.mark.parametrize("semantic", [True, False])
def test_output_shapes(config, semantic):
    model = DeepHarmonization(replace(config, semantic=semantic))
    out = model(*_batch())
    assert out["image"].shape == (2, 3, 32, 32)
    if semantic:
        assert out["parsing"].shape == (2, 5, 32, 32)
    else:
        assert out["parsing"] is None and model.parsing is None


def test_paper_config_is_the_released_architecture():
    assert PAPER.resolution == 512 and PAPER.channels == (64, 64, 128, 128, 256, 256, 512)
    assert PAPER.layout == "released" and not PAPER.residual and not PAPER.fg_normalized
    assert PAPER.lambda_rec == 1.0 and PAPER.lambda_cro == pytest.approx(100 / (0.5 * 255 ** 2))
    model = DeepHarmonization(PAPER)
    for layer in model.encoder:
        conv = layer[0]
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
        assert isinstance(layer[1], torch.nn.BatchNorm2d) and isinstance(layer[2], torch.nn.ELU)
    # fc7: 512·4·4 → 1024, linear (no batch norm or ELU after it in the released model)
    assert len(model.fc) == 1 and model.fc[0].in_features == 512 * 4 * 4 and model.fc[0].out_features == 1024
    # deconv6: the 1024×1×1 code → 512×4×4; then deconvolutions mirroring the encoder, then RGB
    for decoder in (model.harmonization, model.parsing):
        widths = [layer[0].out_channels for layer in decoder[:-1]]
        assert widths == [512, 256, 256, 128, 128, 64, 64]
        assert all(layer[0].kernel_size == (4, 4) for layer in decoder[:-1])
        assert isinstance(decoder[-1], torch.nn.ConvTranspose2d) and decoder[-1].stride == (2, 2)
    assert model.harmonization[-1].out_channels == 3 and model.parsing[-1].out_channels == 33
    nosem = DeepHarmonization(VARIANTS["paper-nosem"])
    assert nosem.parsing is None
    assert [layer[0].in_channels for layer in nosem.harmonization[1:-1]] == [512, 256, 256, 128, 128, 64]


def test_small_is_the_paper_structure_at_smaller_size():
    assert SMALL.layout == "released" and not SMALL.global_head
    assert SMALL.bottleneck_size == PAPER.bottleneck_size == 4
    assert SMALL.channels == tuple(c // 2 for c in PAPER.channels[:5]) and SMALL.fc_dim == PAPER.fc_dim // 2
    for name in ("small", "small-nosem"):
        params = sum(p.numel() for p in DeepHarmonization(VARIANTS[name]).parameters())
        assert params * 2 < 25e6  # fp16 bytes


@pytest.mark.parametrize("semantic", [True, False])
def test_skip_links_are_added_and_parsing_features_concatenated(semantic):
    """Input of harmonization deconvolution k: [decoder map + encoder map of its resolution, parsing map]."""
    torch.manual_seed(0)
    model = DeepHarmonization(replace(TINY, semantic=semantic)).eval()
    encoder_out, enc_hooks = [], [layer.register_forward_hook(lambda m, i, o: encoder_out.append(o.detach()))
                                  for layer in model.encoder]
    decoder_out, dec_hooks = [], [layer.register_forward_hook(lambda m, i, o: decoder_out.append(o.detach()))
                                  for layer in model.harmonization[:-1]]
    inputs, in_hooks = _record_inputs(model.harmonization)
    parsing_out = []
    par_hooks = [layer.register_forward_hook(lambda m, i, o: parsing_out.append(o.detach()))
                 for layer in model.parsing[:-1]] if semantic else []
    model(*_batch())
    for hook in enc_hooks + dec_hooks + in_hooks + par_hooks:
        hook.remove()
    depth = len(TINY.channels)
    assert inputs[0].shape[1:] == (TINY.fc_dim, 1, 1)  # the fc code as a 1×1 map
    for k in range(1, depth + 1):  # input of layer k: level depth - k
        level = depth - k
        summed = decoder_out[k - 1] + encoder_out[level]
        if semantic and k < depth:
            parsing = parsing_out[k - 1] + encoder_out[level]  # the parsing decoder has the same skips
            torch.testing.assert_close(inputs[k], torch.cat([summed, parsing], dim=1))
        else:  # the RGB layer (and every layer without semantics): the summed map alone
            torch.testing.assert_close(inputs[k], summed)


def test_parsing_features_reach_the_harmonized_image_except_the_finest():
    model = DeepHarmonization(replace(TINY, residual=False))
    model(*_batch())["image"].sum().backward()
    # Every parsing deconvolution but the finest (R/2, which only feeds the class scores) is
    # concatenated into the harmonization decoder, so gets gradient from the image.
    for layer in list(model.parsing)[:-2]:
        assert layer[0].weight.grad is not None and layer[0].weight.grad.abs().sum() > 0
    assert model.parsing[-2][0].weight.grad is None and model.parsing[-1].weight.grad is None


def test_every_encoder_layer_reaches_the_output_through_its_skip_link():
    """Perturbing one encoder layer's output changes the image even with the fc code held fixed."""
    torch.manual_seed(0)
    model = DeepHarmonization(replace(TINY, residual=False, semantic=False)).eval()
    composite, mask = _batch()
    fixed_code = model.fc.register_forward_hook(lambda m, inp, out: out.detach() * 0)
    reference = model(composite, mask)["image"]
    for layer in model.encoder:
        handle = layer.register_forward_hook(lambda m, inp, out: out + 1.0)
        changed = model(composite, mask)["image"]
        handle.remove()
        assert not torch.allclose(changed, reference)
    fixed_code.remove()


def test_paper_output_is_linear_in_pixel_space():
    model = DeepHarmonization(replace(TINY, residual=False, semantic=False)).eval()
    with torch.no_grad():
        model.harmonization[-1].weight.zero_()
        model.harmonization[-1].bias.fill_(1.5)  # beyond tanh's range: a linear output passes it on
    out = model(*_batch())["image"]
    torch.testing.assert_close(out, torch.full_like(out, 1.25))


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
    expected = TINY.lambda_rec * parts["rec"] + TINY.lambda_cro * parts["cro"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_paper_lambda_balances_like_caffe_on_0_255_pixels():
    """Eq. 1 on 0–255 pixels (½·Σ) with λ2 = 100 weighs the terms as PAPER_LAMBDA_CRO does here."""
    err01, ce, pixels = 0.1, 2.0, 64
    caffe_rec = 0.5 * pixels * 3 * (255 * err01) ** 2
    caffe_cro = pixels * ce
    ours_rec, ours_cro = 3 * err01 ** 2, ce
    assert (100 * caffe_cro / caffe_rec) == pytest.approx(PAPER_LAMBDA_CRO * ours_cro / ours_rec)


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
    legacy = {k: v for k, v in TINY_V1.to_dict().items() if k != "layout"}
    assert DIHConfig.from_dict(legacy).layout == "v1"  # written before the field existed


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        DeepHarmonization(replace(TINY, resolution=36))
    with pytest.raises(ValueError):
        DeepHarmonization(replace(TINY, layout="other"))
    with pytest.raises(ValueError):
        DeepHarmonization(replace(TINY, global_head=True))  # not part of the paper's network


def _parsing_batch_norms(model):
    return [m for m in model.parsing.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_freeze_parsing_puts_its_batch_norm_in_eval_now_and_after_train():
    model = DeepHarmonization(TINY).train()
    model.freeze_parsing()
    norms = _parsing_batch_norms(model)
    assert norms and not any(m.training for m in norms)  # at once, without a later train() call
    before = [m.running_mean.clone() for m in norms]
    model(*_batch())  # a training-mode forward must not move the frozen statistics
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    model.eval()
    model.train()
    assert not any(m.training for m in norms) and model.encoder[0][1].training
    assert all(not p.requires_grad for p in model.parsing.parameters())
    assert all(p.requires_grad for p in model.harmonization.parameters())


@pytest.mark.parametrize("config", [TINY, replace(TINY, residual=False, fg_normalized=False)],
                         ids=["small-deviations", "paper-loss"])
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


def test_v1_global_head_starts_as_identity_and_maps_colours_inside_the_mask():
    config = replace(TINY_V1, global_head=True)
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


def test_v1_weights_still_load():
    manifest = Manifest.load()
    if "dih-small" not in manifest.entries:
        pytest.skip("dih-small is not in weights/manifest.json")
    config = DIHConfig.from_dict(manifest.entry("dih-small").config)
    assert config.layout == "v1"
    model = DeepHarmonization(config)
    state = manifest.load_state_dict("dih-small")
    assert set(state) == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


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
