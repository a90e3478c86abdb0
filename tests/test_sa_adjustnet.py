"""SA-AdjustNet: the equations of the paper, checked numerically on small tensors."""

from dataclasses import replace

import pytest
import torch

from core.models.resnet import RESNET50, ResNet, ResNetConfig, resnet50
from core.models.sa_adjustnet import (
    VARIANTS,
    BilinearHead,
    GlobalColorMapping,
    ReNet,
    SAAdjustConfig,
    SAAdjustNet,
    SemanticMapHead,
    adjust_lab,
    effect_words,
    export_tensors,
    huber,
    huber_per_pixel,
    load_trained,
    total_loss,
)

TINY = replace(VARIANTS["lite0"], backbone="resnet", resnet=ResNetConfig(widths=(8, 12, 16), stem_width=8),
               renet_hidden=6, renet_out=8, context_dim=16, rank=12, presets=4, context_size=48, parse_classes=5)


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


def test_loss_term_weights_follow_eqs_5_to_7():
    head = SemanticMapHead(color_dim=3, context_dim=4, rank=6, presets=3, alpha=0.8, momentum=0.9)
    head.frequency.copy_(torch.tensor([0.5, 0.3, 0.2]))
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    head.update_frequency(p)
    expected_a = 0.9 * torch.tensor([0.5, 0.3, 0.2]) + 0.1 * p.mean(0) / p.mean(0).sum()  # Eq. 6
    assert torch.allclose(head.frequency, expected_a)
    w = 0.8 * expected_a + 0.2  # Eq. 5
    assert torch.allclose(head.loss_weights(), w)
    # the paper weights rare presets' loss terms *less* (not inverse frequency): w increases with a_k
    assert head.loss_weights()[2] < head.loss_weights()[1] < head.loss_weights()[0]
    # Eq. 7: Σ_k w_k p_k ℓ(g_k, y), ℓ the per-pixel Huber of Eq. 8, averaged over pixels
    torch.manual_seed(0)
    g = torch.randn(2, 3, 3) * 0.1
    y = torch.randn(2, 3) * 0.1
    loss = head.expected_loss(p, g, y, delta=0.04)
    terms = torch.stack([torch.stack([huber(g[i, k], y[i], 0.04) for k in range(3)]) for i in range(2)])
    assert torch.isclose(loss, (w * p * terms).sum(-1).mean())
    # an expected loss, not the loss of an expected output: a mixture of two presets pays both errors
    mixed = torch.tensor([[0.5, 0.5, 0.0]])
    g2 = torch.tensor([[[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    each = huber_per_pixel(g2[0, 0], torch.zeros(3), 0.04)
    assert torch.isclose(head.expected_loss(mixed, g2, torch.zeros(1, 3), delta=0.04), 0.5 * (w[0] + w[1]) * each)
    assert huber((mixed[..., None] * g2).sum(-2), torch.zeros(1, 3), 0.04) == 0  # the old rule's loss


def test_inference_map_is_discrete_and_ignores_the_frequencies():
    model = _model(2)
    lab = torch.rand(23, 31, 3) * torch.tensor([100.0, 60.0, 60.0]) - torch.tensor([0.0, 30.0, 30.0])
    out, used, soft = adjust_lab(model, lab, return_map=True, return_probabilities=True, chunk_pixels=300)
    assert set(used.unique().tolist()) <= {0.0, 1.0} and torch.equal(used.sum(-1), torch.ones(23, 31))
    assert torch.equal(used.argmax(-1), soft.argmax(-1))
    model.semantic.frequency.copy_(torch.tensor([0.97, 0.01, 0.01, 0.01]))  # no re-weighting at inference
    assert torch.equal(adjust_lab(model, lab, chunk_pixels=300), out)


def test_expected_loss_training_makes_the_map_pick_the_right_preset():
    """Two kinds of pixels wanting opposite changes: minimizing Eq. 7 drives p to one-hot per kind."""
    torch.manual_seed(0)
    head = SemanticMapHead(color_dim=3, context_dim=2, rank=8, presets=2, alpha=0.8, momentum=0.9)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    kind = torch.arange(256) % 2
    f_cxt = torch.nn.functional.one_hot(kind, 2).float()
    f_clr = torch.rand(256, 3) * 0.5
    target = torch.where(kind[:, None] == 0, 0.2, -0.2) * torch.ones(256, 3)
    for _ in range(150):
        p = head.probabilities(f_cxt)
        head.update_frequency(p)
        loss = head.expected_loss(p, head.presets_out(f_clr), target, delta=0.04)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = head.probabilities(f_cxt).detach()
    assert p.max(-1).values.min() > 0.9
    assert p.argmax(-1)[kind == 0].unique().numel() == 1 and p.argmax(-1)[kind == 1].unique().numel() == 1
    assert p.argmax(-1)[0] != p.argmax(-1)[1]
    out = head(f_clr, SemanticMapHead.discrete(p))
    assert huber_per_pixel(out, target, 0.04).mean() < 0.2 * huber_per_pixel(torch.zeros_like(target), target,
                                                                             0.04).mean()


def test_semantic_map_is_exact_expectation_over_presets():
    torch.manual_seed(1)
    head = SemanticMapHead(color_dim=5, context_dim=4, rank=6, presets=3, alpha=0.8, momentum=0.9)
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
    rgb = torch.rand(2, 3, 48, 48)
    grid = torch.rand(2, 64, 2) * 2 - 1
    pixels = torch.randn(2, 64, 3) * 0.3
    change = 0.2 * torch.tanh(pixels.flip(-1))
    labels = torch.randint(-1, 5, (2, 64))
    losses = []
    for _ in range(40):
        out = model(rgb, grid, pixels, update_frequency=True)
        parse = (model.parse_logits(model.encode(rgb).context, grid), labels)
        loss, parts = total_loss(model, out, change, parse)
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
    # the predicted map given back unchanged reproduces the automatic result bit for bit
    again = adjust_lab(model, lab, user_map=predicted, user_coverage=torch.ones(37, 53), chunk_pixels=500)
    assert torch.equal(again, base)
    user = torch.zeros(37, 53, TINY.presets)
    user[..., 2] = 1.0
    coverage = torch.zeros(37, 53)
    coverage[10:20, 5:30] = 1.0
    mine, used = adjust_lab(model, lab, user_map=user, user_coverage=coverage, return_map=True, chunk_pixels=500)
    outside = coverage == 0
    assert torch.equal(mine[outside], base[outside])
    assert torch.equal(used[outside], predicted[outside])
    assert torch.equal(used[~outside], user[~outside])
    changed = predicted[~outside].argmax(-1) != 2
    assert changed.any()
    assert (mine[~outside][changed] - base[~outside][changed]).abs().amax(-1).gt(1e-3).float().mean() > 0.9


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
    assert (paper.huber_delta, paper.parse_weight, paper.weight_alpha, paper.frequency_momentum,
            paper.sample_pixels, paper.backbone_lr_scale) == (0.04, 0.01, 0.8, 0.9, 2048, 0.5)
    assert paper.backbone == "resnet" and paper.resnet == RESNET50 and paper.presets == 2
    assert paper.context_dim == 512 and paper.learning_rate == 1e-4
    assert SAAdjustNet(replace(paper, context_size=64)).stage_channels == (256, 512, 1024)
    for config in VARIANTS.values():
        assert SAAdjustConfig.from_dict(config.to_dict()) == config


def test_lite0_variant_keeps_the_frozen_backbone_out_of_its_weights():
    config = replace(VARIANTS["lite0"], renet_hidden=6, renet_out=8, context_dim=16, rank=8, context_size=64)
    torch.manual_seed(0)
    model = SAAdjustNet(config).eval()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.train().backbone.training, "the frozen backbone's batch norm keeps ImageNet's statistics"
    model.eval()
    enc = model.encode(torch.rand(1, 3, 64, 64))
    assert enc.first.shape == (1, 16, 32, 32) and enc.context.shape == (1, 16, 16, 16)
    state = model.trained_state()
    assert state and not any(k.startswith("backbone.") for k in state)
    loaded, _ = load_trained(export_tensors(state, GlobalColorMapping().state_dict()), config,
                             backbone=model.backbone)
    lab = torch.rand(20, 24, 3) * torch.tensor([100.0, 40.0, 40.0])
    assert torch.equal(adjust_lab(loaded, lab), adjust_lab(model, lab))
    with pytest.raises(ValueError, match="backbone"):
        load_trained(export_tensors(state, GlobalColorMapping().state_dict()), config)


def test_preset_words_come_from_the_measured_effect():
    assert effect_words({"dL": 8.0, "chroma": 1.3, "contrast": 1.0, "da": 0.0, "db": 0.0}) == \
        "brighter, more saturated"
    assert effect_words({"dL": -0.5, "chroma": 0.5, "contrast": 0.8, "da": 0.0, "db": 3.0}) == \
        "less saturated, less contrast, warmer"
    assert effect_words({"dL": 0.2, "chroma": 1.01, "contrast": 1.0, "da": 0.1, "db": 0.0}) == "little change"


def test_unknown_head_is_refused():
    with pytest.raises(ValueError):
        adjust_lab(_model(), torch.zeros(8, 8, 3), head="nonsense")


def test_squeezing_before_sampling_equals_squeezing_each_sampled_pixel():
    model = _model(5)
    rgb = torch.rand(1, 3, 48, 48)
    _, stages = model.backbone_maps(rgb)
    maps = [norm(s) for norm, s in zip(model.norms, stages, strict=True)]
    maps.append(model.renet_norm(model.renet(stages[-1])))
    size = stages[0].shape[-2:]
    hyper = torch.cat([torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
                       for m in maps], 1)
    grid = torch.rand(1, 50, 2) * 2.2 - 1.1  # some positions beyond the border, where padding repeats
    sampled = torch.nn.functional.grid_sample(hyper, grid[:, None], mode="bilinear", padding_mode="border",
                                              align_corners=False)[:, :, 0].transpose(1, 2)
    expected = torch.relu(model.squeeze(sampled))
    _, f_cxt = model.pixel_features(model.encode(rgb), grid, torch.zeros(1, 50, 3))
    assert torch.allclose(f_cxt, expected, atol=1e-5)
