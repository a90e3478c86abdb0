"""Two-stream colorization U-Net (Ho et al.): shapes, shared encoder, instance norm only on the gray
stream, Huber loss, a tiny overfit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.models.colorization_unet import AB_SCALE, ColorizationUNet, ColorizerConfig, lab_to_inputs

TINY = ColorizerConfig(width=0.125)


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(n=2, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1, torch.rand(n, 3, h, w, generator=g)


def test_paper_depths_and_blocks():
    model = ColorizationUNet(ColorizerConfig())
    assert [b[0].out_channels for b in model.encoder.blocks] == [32, 64, 128, 256, 512]
    # Fig. 4: the first convolution of every encoder layer but the first has stride 2 (no pooling)
    assert [b[0].stride for b in model.encoder.blocks] == [(1, 1)] + [(2, 2)] * 4
    # decoder: 1024 = 512 gray + 512 map at the bottleneck; each layer starts with a 3×3 transposed conv
    assert model.ups[0][0].in_channels == 1024
    assert all(up[0].kernel_size == (3, 3) and up[0].stride == (2, 2) for up in model.ups)
    assert [b[2].out_channels for b in model.blocks] == [512, 256, 128, 64]
    for block in list(model.encoder.blocks) + list(model.blocks):
        assert [type(m) for m in block] == [nn.Conv2d, nn.LeakyReLU] * 2
        assert block[0].kernel_size == (3, 3) and block[1].negative_slope == 0.01
    assert model.head.out_channels == 2 and model.config.huber_delta == 1.0


def test_pooled_layout_of_the_first_weights_still_builds():
    model = ColorizationUNet(ColorizerConfig(width=0.125, sampling="pooled")).eval()
    assert all(b[0].stride == (1, 1) for b in model.encoder.blocks)
    assert model.ups[0].kernel_size == (2, 2)
    gray, sem = _inputs()
    with torch.no_grad():
        assert model(gray, sem).shape == (2, 2, 32, 48)


def test_huber_delta_is_in_ab_units():
    """δ = 1 ab unit: a 0.5-unit error is in the quadratic branch, a 20-unit error in the linear one
    (on ab/110 the same δ would have kept every error quadratic: an L2 loss)."""
    model = ColorizationUNet(TINY)
    zero = torch.zeros(1, 2, 1, 1)
    small = torch.full((1, 2, 1, 1), 0.5 / AB_SCALE)
    large = torch.full((1, 2, 1, 1), 20 / AB_SCALE)
    assert model.loss(small, zero).item() == pytest.approx(0.5 * 0.5 ** 2, rel=1e-4)
    assert model.loss(large, zero).item() == pytest.approx(20 - 0.5, rel=1e-4)


def test_output_shape_and_range():
    model = ColorizationUNet(TINY).eval()
    gray, sem = _inputs()
    with torch.no_grad():
        ab = model(gray, sem)
    assert ab.shape == (2, 2, 32, 48)
    assert ab.abs().max() <= 1


def test_one_encoder_serves_both_streams():
    model = ColorizationUNet(TINY).eval()
    encoders = [m for m in model.modules() if m.__class__.__name__ == "SharedEncoder"]
    assert len(encoders) == 1
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    gray, sem = _inputs()
    with torch.no_grad():
        a = model(gray, sem)
        b = model(gray, torch.zeros_like(sem))
    assert len(seen) == 4  # two streams per forward, same module (same weights)
    assert torch.equal(seen[0], gray) and torch.equal(seen[1], sem)
    assert not torch.allclose(a, b)  # the map stream reaches the output


def test_instance_norm_only_on_gray_stream():
    model = ColorizationUNet(TINY).eval()
    gray, sem = _inputs()
    with torch.no_grad():
        g, s = model.encoder(gray), model.encoder(sem)
        for level in range(len(g)):
            fused = model.fuse(g[level], s[level], level)
            c = g[level].shape[1]
            assert torch.equal(fused[:, c:], s[level])  # map features untouched
            normed = fused[:, :c].flatten(2)
            raw = g[level].flatten(2)
            expected = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
            assert torch.allclose(normed, expected, atol=1e-4)
            assert not torch.allclose(fused[:, :c], g[level])


def test_ablation_switch_removes_instance_norm():
    model = ColorizationUNet(ColorizerConfig(width=0.125, instance_norm=False))
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in ColorizationUNet(TINY).modules()) == 5
    gray, sem = _inputs()
    g, s = model.encoder(gray), model.encoder(sem)
    assert torch.equal(model.fuse(g[0], s[0], 0), torch.cat([g[0], s[0]], 1))


def test_lab_scaling():
    lab = torch.tensor([[[[0.0]], [[110.0]], [[-55.0]]], [[[100.0]], [[0.0]], [[0.0]]]])
    gray, ab = lab_to_inputs(lab)
    assert gray.shape == (2, 3, 1, 1) and gray[0].eq(-1).all() and gray[1].eq(1).all()
    assert ab[0, :, 0, 0].tolist() == pytest.approx([1.0, -0.5])


def test_tiny_overfit_reduces_loss():
    torch.manual_seed(0)
    model = ColorizationUNet(TINY)
    gray, sem = _inputs(1, 32, 32)
    target = ((sem[:, :2] > 0.5).float() - 0.5) * 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.loss(model(gray, sem), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
