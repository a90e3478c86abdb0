"""SA-AdjustNet: the equations of the paper, checked numerically on small tensors."""

from dataclasses import replace

import pytest
import torch

from core.models.resnet import ResNet, ResNetConfig, resnet50
from core.models.sa_adjustnet import (
    VARIANTS,
    BilinearHead,
    ReNet,
    SAAdjustConfig,
    SAAdjustNet,
    SemanticMapHead,
    adjust_lab,
    huber,
    total_loss,
)

TINY = replace(VARIANTS["cpu-small"], backbone=ResNetConfig(widths=(8, 12, 16), stem_width=8), renet_hidden=6,
               renet_out=8, context_dim=16, rank=12, presets=4, context_size=48, parse_classes=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bilinear_head_is_eq2():
    torch.manual_seed(0)
    head = BilinearHead(color_dim=5, context_dim=7, rank=4)
    torch.nn.init.normal_(head.P.weight)
    torch.nn.init.normal_(head.P.bias)
    f_clr, f_cxt = torch.randn(3, 5), torch.randn(3, 7)
    U, b = head.U.weight.T, head.U.bias
    V, c = head.V.weight.T, head.V.bias
    P, d = head.P.weight.T, head.P.bias
    expected = torch.tanh((torch.tanh(f_clr @ U + b) * torch.tanh(f_cxt @ V + c)) @ P + d)
    assert torch.allclose(head(f_clr, f_cxt), expected, atol=1e-6)
    # multiplicative interaction: the colour response depends on the context, not only added to it
    other = head(f_clr, f_cxt.flip(0))
    assert not torch.allclose(other - head(f_clr, f_cxt), torch.zeros_like(other), atol=1e-4)


def test_renet_sweeps_cover_four_directions():
    torch.manual_seed(0)
    renet = ReNet(channels=3, hidden=5, out=4).eval()
    x = torch.randn(1, 3, 7, 9)
    y0, x0 = 3, 4
    bumped = x.clone()
    bumped[0, :, y0, x0] += 3.0
    out_a, horiz_a, vert_a = renet(x, return_sweeps=True)
    out_b, horiz_b, vert_b = renet(bumped, return_sweeps=True)
    changed = lambda a, b: (a - b).abs().amax(1)[0] > 1e-6  # noqa: E731  (h×w)
    h = 5
    left_to_right = changed(horiz_a[:, :h], horiz_b[:, :h])
    right_to_left = changed(horiz_a[:, h:], horiz_b[:, h:])
    top_to_bottom = changed(vert_a[:, :h], vert_b[:, :h])
    bottom_to_top = changed(vert_a[:, h:], vert_b[:, h:])
    # the row sweeps only see their own row, each only downstream of the change
    assert left_to_right[y0, x0:].all() and not left_to_right[y0, :x0].any()
    assert right_to_left[y0, : x0 + 1].all() and not right_to_left[y0, x0 + 1:].any()
    assert not left_to_right[:y0].any() and not left_to_right[y0 + 1:].any()
    # the column sweeps carry it up and down
    assert top_to_bottom[y0:, :].all() and not top_to_bottom[:y0].any()
    assert bottom_to_top[: y0 + 1, :].all() and not bottom_to_top[y0 + 1:].any()
    # after all four sweeps the change reaches left, right, above and below, i.e. everywhere
    full = changed(out_a, out_b)
    assert full[y0, 0] and full[y0, -1] and full[0, x0] and full[-1, x0] and full.all()


def test_class_reweighting_follows_eqs_5_and_6():
    head = SemanticMapHead(color_dim=3, context_dim=4, rank=6, presets=3, momentum=0.8)
    head.frequency.copy_(torch.tensor([0.5, 0.3, 0.2]))
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    head.update_frequency(p)
    expected_q = 0.8 * torch.tensor([0.5, 0.3, 0.2]) + 0.2 * p.mean(0)  # Eq. 5
    assert torch.allclose(head.frequency, expected_q)
    weighted = p / expected_q
    assert torch.allclose(head.reweight(p), weighted / weighted.sum(-1, keepdim=True))  # Eq. 6
    # a rarely used preset gains probability, a frequent one loses it
    assert head.reweight(p)[0, 2] > p[0, 2] and head.reweight(p)[0, 0] < p[0, 0]
    assert torch.allclose(head.reweight(p).sum(-1), torch.ones(2))


def test_semantic_map_is_exact_expectation_over_presets():
    torch.manual_seed(1)
    head = SemanticMapHead(color_dim=5, context_dim=4, rank=6, presets=3, momentum=0.8)
    torch.nn.init.normal_(head.P.weight)
    f_clr = torch.randn(2, 5)
    p = torch.softmax(torch.randn(2, 3), -1)
    per_preset = [head(f_clr, torch.nn.functional.one_hot(torch.tensor([k, k]), 3).float()) for k in range(3)]
    expected = sum(p[:, k:k + 1] * per_preset[k] for k in range(3))  # Eq. 7
    assert torch.allclose(head(f_clr, p), expected, atol=1e-6)
    # each one-hot output is Eq. 2 with context code v_k
    k = 1
    g = torch.tanh(head.P(torch.tanh(head.U(f_clr)) * torch.tanh(head.preset_codes[k] + head.c)))
    assert torch.allclose(per_preset[k], g, atol=1e-6)


def test_huber_loss_eq8():
    pred = torch.tensor([0.0, 0.02, 0.1, -0.3])
    target = torch.zeros(4)
    d = 0.04
    expected = torch.tensor([0.0, 0.5 * 0.02**2, d * (0.1 - d / 2), d * (0.3 - d / 2)]).mean()
    assert torch.isclose(huber(pred, target, d), expected)


def _model(seed: int = 0) -> SAAdjustNet:
    torch.manual_seed(seed)
    model = SAAdjustNet(TINY)
    for head in (model.direct, model.semantic):
        torch.nn.init.normal_(head.P.weight, std=0.5)
    return model.eval()


def test_training_step_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SAAdjustNet(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lab = torch.randn(2, 3, 48, 48) * 0.3
    grid = torch.rand(2, 64, 2) * 2 - 1
    pixels = torch.randn(2, 64, 3) * 0.3
    change = 0.2 * torch.tanh(pixels.flip(-1))
    labels = torch.randint(-1, 5, (2, 64))
    losses = []
    for _ in range(40):
        out = model(lab, grid, pixels, update_frequency=True)
        loss, parts = total_loss(out, change, labels, TINY)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["direct"] + parts["map"])
    assert set(parts) == {"direct", "map", "parse"}
    assert losses[-1] < 0.5 * losses[0]


def test_user_map_changes_output_only_where_the_map_changed():
    model = _model()
    lab = torch.rand(37, 53, 3) * torch.tensor([100.0, 60.0, 60.0]) - torch.tensor([0.0, 30.0, 30.0])
    base, predicted = adjust_lab(model, lab, return_map=True, chunk_pixels=500)
    user = torch.zeros(37, 53, TINY.presets)
    user[..., 2] = 1.0
    coverage = torch.zeros(37, 53)
    coverage[10:20, 5:30] = 1.0
    mine, used = adjust_lab(model, lab, user_map=user, user_coverage=coverage, return_map=True, chunk_pixels=500)
    outside = coverage == 0
    assert torch.equal(mine[outside], base[outside])
    assert torch.equal(used[outside], predicted[outside])
    assert torch.allclose(used[~outside], user[~outside])
    assert (mine[~outside] - base[~outside]).abs().amax(-1).gt(1e-3).float().mean() > 0.9


def test_full_resolution_inference_does_not_depend_on_chunking():
    model = _model(3)
    lab = torch.rand(29, 41, 3) * torch.tensor([100.0, 40.0, 40.0])
    for head in ("map", "direct"):
        a = adjust_lab(model, lab, head=head, chunk_pixels=41)
        b = adjust_lab(model, lab, head=head, chunk_pixels=100000)
        assert torch.allclose(a, b, atol=1e-4)
        assert a.shape == lab.shape


def test_resnet50_is_selectable():
    net = resnet50().eval()
    assert net.stage_channels == (256, 512, 1024, 2048)
    first, stages = net(torch.randn(1, 3, 64, 64))
    assert first.shape == (1, 64, 32, 32)
    assert [s.shape[-1] for s in stages] == [16, 8, 4, 2]
    small = ResNet(ResNetConfig())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters()) / 50


def test_paper_config_and_roundtrip():
    paper = SAAdjustConfig()
    assert (paper.huber_delta, paper.parse_weight, paper.frequency_momentum, paper.sample_pixels) == (
        0.04, 0.01, 0.8, 2048)
    assert paper.backbone.layers == (3, 4, 6, 3) and paper.context_dim == 512 and paper.learning_rate == 1e-4
    for config in VARIANTS.values():
        assert SAAdjustConfig.from_dict(config.to_dict()) == config


def test_unknown_head_is_refused():
    with pytest.raises(ValueError):
        adjust_lab(_model(), torch.zeros(8, 8, 3), head="nonsense")


def test_squeezing_before_sampling_equals_squeezing_each_sampled_pixel():
    model = _model(5)
    lab = torch.randn(1, 3, 48, 48) * 0.3
    first, stages = model.backbone(lab)
    stages = stages[: TINY.hypercolumn_stages]
    maps = [norm(s) for norm, s in zip(model.norms, stages, strict=True)]
    maps.append(model.renet_norm(model.renet(stages[-1])))
    size = stages[0].shape[-2:]
    hyper = torch.cat([torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
                       for m in maps], 1)
    grid = torch.rand(1, 50, 2) * 2.2 - 1.1  # some positions beyond the border, where padding repeats
    sampled = torch.nn.functional.grid_sample(hyper, grid[:, None], mode="bilinear", padding_mode="border",
                                              align_corners=False)[:, :, 0].transpose(1, 2)
    expected = torch.relu(model.squeeze(sampled))
    _, f_cxt = model.pixel_features(model.encode(lab), grid, torch.zeros(1, 50, 3))
    assert torch.allclose(f_cxt, expected, atol=1e-5)
