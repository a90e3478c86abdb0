"""SA-AdjustNet training option --finetune-stages: the last hypercolumn taps recomputed from the cache."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.models.sa_adjustnet import VARIANTS, SAAdjustNet
from core.training.sa_adjustnet import MAP_KEYS, backbone_stages, tap_blocks, trained_state

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = replace(VARIANTS["lite0"], renet_hidden=6, renet_out=8, context_dim=16, rank=8, context_size=64)


def _model_and_cache() -> tuple[SAAdjustNet, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    model = SAAdjustNet(CONFIG).eval()
    inputs = (np.random.default_rng(0).random((3, 64, 64, 3)) * 255).astype(np.uint8)
    rgb = torch.from_numpy(inputs).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        _, stages = model.backbone_maps(rgb)
    # float32 maps here (the real cache is fp16), so recomputation must match to float rounding
    return model, {"inputs": inputs, **{k: m.numpy() for k, m in zip(MAP_KEYS, stages, strict=True)}}


def test_tuned_blocks_are_those_between_the_cached_taps():
    # Lite0 stage ends: stride 4 after block 2, stride 8 after block 4, stride 16 after block 10
    assert tap_blocks(0) == range(0)
    assert tap_blocks(1) == range(5, 11)
    assert tap_blocks(2) == range(3, 11)
    with pytest.raises(ValueError, match="no map before it"):
        tap_blocks(3)


@pytest.mark.parametrize("tuned", [1, 2])
def test_recomputed_taps_equal_the_cached_ones_and_carry_gradients(tuned):
    model, cache = _model_and_cache()
    indices = np.array([2, 0])
    cached = backbone_stages(model, cache, indices)
    for i in tap_blocks(tuned):
        model.backbone._blocks[i].requires_grad_(True)
    live = backbone_stages(model, cache, indices, tuned)
    for c, m in zip(cached, live, strict=True):
        assert torch.allclose(c, m, atol=1e-4), float((c - m).abs().max())
    assert not live[0].requires_grad  # the first tap always comes from the cache
    assert [m.requires_grad for m in live[1:]] == [tuned == 2, True]
    model.context_map(live).square().mean().backward()
    first_tuned = tap_blocks(tuned)[0]
    assert model.backbone._blocks[first_tuned]._project_conv.weight.grad.abs().sum() > 0
    assert model.backbone._blocks[first_tuned - 1]._project_conv.weight.grad is None


def test_trained_state_keeps_only_the_tuned_backbone_blocks():
    model, _ = _model_and_cache()
    assert not any(k.startswith("backbone.") for k in trained_state(model, tap_blocks(0), 0))
    blocks = {int(k.split(".")[2]) for k in trained_state(model, tap_blocks(1), 1) if k.startswith("backbone.")}
    assert blocks == set(range(5, 11))
