"""DeepProp network and Algorithm 1: shapes, parameter counts, the fast VFE path, learning a toy image,
incremental update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.models.deepprop import DeepProp, DeepPropConfig, parameter_counts
from core.propagation.estimate import PatchSource, estimate_pixels
from core.propagation.learn import Adam, learn, sample_training_set

FAST = DeepPropConfig()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_follow_the_paper():
    model = DeepProp(4)
    patch, coords = torch.rand(5, 3, 9, 9), torch.rand(5, 2)
    assert model.vfe(patch).shape == (5, 256)  # VFE → 256-d f_v
    assert model.features(patch, coords).shape == (5, 256)  # FC → 256
    assert model.features(patch, None).shape == (5, 256)  # pre-training network, no SFE
    probs = model.probabilities(patch, coords)
    assert probs.shape == (5, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert DeepPropConfig().vfe_spatial == 1


def test_parameter_counts():
    counts = parameter_counts(DeepProp(3))
    assert counts["vfe"] == (3 * 9 * 128 + 128) + (128 * 9 * 256 + 256)
    assert counts["sfe"] == 2 * 256 + 256
    assert counts["fc"] == 256 * 256 + 256 + 256 * 256  # W_cv, shared bias, W_cs
    assert counts["le"] == 256 * 3 + 3
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    gray = parameter_counts(DeepProp(2, DeepPropConfig(in_channels=1)))
    assert gray["vfe"] == (9 * 128 + 128) + (128 * 9 * 256 + 256)


@pytest.mark.parametrize("channels", [1, 3])
def test_fast_vfe_equals_layer_by_layer_reference(channels):
    torch.manual_seed(0)
    model = DeepProp(2, DeepPropConfig(in_channels=channels))
    patch = torch.rand(17, channels, 9, 9, requires_grad=True)
    fast, ref = model.vfe(patch), model.vfe.forward_reference(patch)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), model.vfe.conv1.weight)[0]
    g_ref = torch.autograd.grad(ref.square().sum(), model.vfe.conv1.weight)[0]
    torch.testing.assert_close(g_fast, g_ref, atol=1e-4, rtol=1e-4)


def test_initialization_is_he_normal_with_zero_bias():
    torch.manual_seed(1)
    model = DeepProp(2)
    w = model.vfe.conv2.weight
    fan_in = w[0].numel()
    assert abs(w.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
    assert model.vfe.conv2.bias.abs().max() == 0 and model.le.bias.abs().max() == 0


def two_region_image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[:h, :w]
    region = (xx + 0.3 * yy) > w * 0.55
    # Textures rather than flat colors: stripes vs noise, overlapping brightness ranges.
    img[~region] = 0.45 + 0.25 * np.sin(xx[~region, None] * 1.3) * np.array([1.0, 0.6, 0.2])
    img[region] = 0.45 + 0.15 * rng.standard_normal((region.sum(), 1)) * np.array([0.2, 0.5, 1.0])
    return np.clip(img, 0, 1), region


def two_region_strokes(region: np.ndarray) -> np.ndarray:
    labels = np.full(region.shape, -1, np.int32)
    labels[5:9, 4:20] = 0
    labels[30:34, 6:18] = 0
    labels[6:10, 40:54] = 1
    labels[28:32, 42:54] = 1
    assert (region[labels == 1]).all() and (~region[labels == 0]).all()
    return labels


def test_training_on_two_regions_reaches_95_percent():
    img, region = two_region_image()
    labels = two_region_strokes(region)
    source = PatchSource.from_image(img)
    model, log = learn(None, source, labels, FAST, seed=0)
    assert log.pretrain_errors and log.train_errors
    # conv2's weight keeps the layout its matmul reads without a copy, through Adam and any restore.
    assert model.vfe.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    probs = estimate_pixels(model, source)
    accuracy = ((probs.argmax(2) == 1) == region).mean()
    assert accuracy >= 0.95, accuracy


def test_training_samples_ten_percent_of_stroke_pixels():
    labels = np.full((100, 100), -1, np.int32)
    labels[:50] = 0
    labels[50:] = 1
    ys, xs, cls = sample_training_set(labels, 0.1, np.random.default_rng(0))
    assert 800 < len(ys) < 1200
    assert set(np.unique(cls)) == {0, 1}
    assert (labels[ys, xs] == cls).all()


def test_incremental_update_keeps_parameters_and_le_rows():
    img, region = two_region_image()
    labels = np.full(region.shape, -1, np.int32)
    labels[5:9, 4:20] = 0
    labels[6:10, 40:54] = 1
    source = PatchSource.from_image(img)
    model, _ = learn(None, source, labels, FAST, seed=0)
    conv_before = model.vfe.conv1.weight.detach().clone()
    le_before = model.le.weight.detach().clone()
    model.resize_classes([1, None, 0])  # swap the two classes, add a third
    torch.testing.assert_close(model.le.weight[0], le_before[1])
    torch.testing.assert_close(model.le.weight[2], le_before[0])
    assert model.num_classes == 3
    assert torch.equal(model.vfe.conv1.weight, conv_before)  # VFE untouched by resizing
    model.resize_classes([0, 2])  # remove one
    torch.testing.assert_close(model.le.weight[1], le_before[0])
    new_labels = np.where(labels == 0, 1, np.where(labels == 1, 0, -1)).astype(np.int32)
    refined, log = learn(model, source, new_labels, FAST, seed=1)
    assert refined is model and not log.pretrain_errors  # refined in place, no pre-training


def test_adam_matches_the_reference_optimizer():
    torch.manual_seed(0)
    ours, reference = DeepProp(3), DeepProp(3)
    reference.load_state_dict(ours.state_dict())
    params = list(ours.parameters())
    adam = Adam(params, lr=3e-3)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=3e-3)
    patch, coords, target = torch.rand(16, 3, 9, 9), torch.rand(16, 2), torch.randint(0, 3, (16,))
    for _ in range(5):
        adam.zero_grad(params)
        F.cross_entropy(ours(patch, coords), target).backward()
        adam.step(params)
        torch_adam.zero_grad()
        F.cross_entropy(reference(patch, coords), target).backward()
        torch_adam.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_adam_counts_steps_per_parameter():
    # The SFE joins after pre-training: its first update must be a first Adam step (size ≈ lr per
    # weight), not one bias-corrected as if it had been training all along.
    first, second = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    adam = Adam([first, second], lr=0.1)
    for _ in range(20):
        first.grad = torch.ones(4)
        adam.step([first])
    second.grad = torch.ones(4)
    adam.step([second])
    torch.testing.assert_close(second.detach(), torch.full((4,), -0.1))
    assert adam.steps[first] == 20 and adam.steps[second] == 1


def test_sfe_joins_without_undoing_pre_training():
    image, region = two_region_image()
    _, log = learn(None, PatchSource.from_image(image), two_region_strokes(region), FAST, seed=0)
    # Moments kept across the stages: the first full-network epoch starts near where pre-training ended.
    assert log.train_errors[0] < 1.5 * log.pretrain_errors[-1] + 0.05


def stroke_training_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """The stroke pixels of the two-region image as Algorithm 1 trains on them: patch columns and labels."""
    image, region = two_region_image()
    source = PatchSource.from_image(image)
    labels = two_region_strokes(region)
    ys, xs = (torch.from_numpy(v) for v in np.nonzero(labels >= 0))
    columns = DeepProp(2).vfe.columns(source.patches(ys, xs)).contiguous()
    return columns, torch.from_numpy(labels[ys.numpy(), xs.numpy()].astype(np.int64))


def test_a_rise_stops_training_after_the_warm_up_and_restores_the_parameters():
    from core.propagation.learn import epoch_error, train_stage

    columns, targets = stroke_training_samples()

    def run(warmup: int) -> tuple[str, list[float], DeepProp]:
        # A step size far too large makes E jump around, so rises happen within a few epochs.
        cfg = DeepPropConfig(learning_rate=0.3, epsilon=0.0, max_epochs=30, stop_rule="rise")
        torch.manual_seed(0)
        model = DeepProp(2, cfg)
        errors: list[float] = []
        optimizer = Adam(list(model.parameters()), cfg.learning_rate)
        generator = torch.Generator().manual_seed(0)
        reason = train_stage(
            model, optimizer, columns, None, targets, cfg, generator, errors, warmup_epochs=warmup
        )
        return reason, errors, model

    reason, errors, model = run(0)
    assert reason == "error rose" and errors[-1] - errors[-2] > 0.01
    assert all(b - a <= 0.01 for a, b in zip(errors[:-1], errors[1:-1]))  # it stopped at the first rise
    restored = epoch_error(model, columns, None, targets, 512) / len(targets)
    assert restored == pytest.approx(errors[-2], rel=1e-4, abs=1e-6)  # the parameters from before it
    # The same trajectory with that epoch inside the warm-up goes on past the rise.
    stop = len(errors) - 1
    _, later, _ = run(stop + 1)
    assert later[: stop + 1] == pytest.approx(errors) and len(later) > stop + 1


def test_loss_is_eq12_binary_cross_entropy_per_class_summed():
    from core.propagation.learn import stroke_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(9, 3) * 4, torch.randint(0, 3, (9,))
    y, g = torch.softmax(logits, 1), F.one_hot(targets, 3).float()
    eq12 = -(g * y.log() + (1 - g) * (1 - y).log()).sum()
    torch.testing.assert_close(stroke_loss(logits, targets), eq12)
    # Two classes: twice the categorical cross-entropy, so ε|Ω'| is twice as strict as it was.
    two, t2 = torch.randn(5, 2), torch.randint(0, 2, (5,))
    torch.testing.assert_close(stroke_loss(two, t2), 2 * F.cross_entropy(two, t2, reduction="sum"))
    # Confident and right stays finite and near zero (no log(1 − y) of a rounded 1).
    assert 0 <= stroke_loss(torch.tensor([[60.0, -60.0]]), torch.tensor([0])).item() < 1e-6


def test_training_set_is_balanced_between_classes():
    labels = np.full((100, 100), -1, np.int32)
    labels[:90] = 0  # 9000 background stroke pixels
    labels[95:, :40] = 1  # 200 on a small object
    ys, xs, cls = sample_training_set(labels, 0.1, np.random.default_rng(0))
    counts = np.bincount(cls)
    assert counts[0] == counts[1] == 460  # 10% of 9200, half each; the object's pixels repeated
    assert (labels[ys, xs] == cls).all()
    assert len(np.unique(ys[cls == 1] * 100 + xs[cls == 1])) == 200  # every object pixel is in Ω'


@pytest.mark.parametrize(
    "rule, reason, epochs", [("literal", "error above preE", 1), ("plateau", "error settled", None)]
)
def test_stop_rules_of_algorithm_1(rule, reason, epochs):
    from core.propagation.learn import train_stage

    columns, targets = stroke_training_samples()
    cfg = DeepPropConfig(epsilon=0.0, stop_rule=rule, max_epochs=40)
    torch.manual_seed(0)
    model = DeepProp(2, cfg)
    errors: list[float] = []
    optimizer = Adam(list(model.parameters()), cfg.learning_rate)
    got = train_stage(model, optimizer, columns, None, targets, cfg, torch.Generator().manual_seed(0), errors)
    assert got == reason
    if epochs is not None:  # preE ← 0 read literally: E − 0 > γ|Ω'| after the first epoch
        assert len(errors) == epochs and errors[0] > cfg.gamma
    else:  # |E − preE| < γ|Ω'|: the last epoch changed the error by less than γ, the ones before more
        assert abs(errors[-1] - errors[-2]) < cfg.gamma
        assert all(abs(b - a) >= cfg.gamma for a, b in zip([0.0, *errors[:-2]], errors[:-1]))


def test_semantic_channels_join_the_fused_layer_and_are_required():
    cfg = DeepPropConfig(semantic_channels=8)
    model = DeepProp(3, cfg)
    patch, coords, semantic = torch.rand(5, 3, 9, 9), torch.rand(5, 2), torch.rand(5, 8)
    assert model.probabilities(patch, coords, semantic).shape == (5, 3)
    with pytest.raises(ValueError, match="semantic"):
        model.probabilities(patch, coords)
    # W_ce adds 8×256 weights to the FC; the paper's network has none.
    assert parameter_counts(model)["fc"] - parameter_counts(DeepProp(3))["fc"] == 8 * 256
    assert DeepProp(3).fc_e is None


def test_semantic_features_are_learned_in_pre_training_and_separate_same_colored_regions():
    # Two halves of the same flat color that only the (here synthetic) semantic channel tells apart:
    # the paper's inputs cannot separate them beyond position, the semantic network does.
    h, w = 32, 48
    img = np.full((h, w, 3), 0.5, np.float32)
    semantic = np.zeros((h, w, 8), np.float32)
    semantic[:, :, 0] = np.where((np.arange(w) % 16) < 8, 1.0, -1.0)[None, :]  # stripes, not halves
    labels = np.full((h, w), -1, np.int32)
    for x0 in (0, 32):  # strokes at both ends, so position alone cannot explain them
        labels[4:8, x0 : x0 + 8] = 0
        labels[24:28, x0 + 8 : x0 + 16] = 1
    truth = ((np.arange(w) % 16) >= 8)[None, :]

    def accuracy(cfg: DeepPropConfig, features: np.ndarray | None) -> float:
        source = PatchSource.from_image(img).with_semantic(features)
        model, log = learn(None, source, labels, cfg, seed=0)
        assert log.pretrain_errors  # pre-training ran (with the semantic branch when there is one)
        return float(((estimate_pixels(model, source).argmax(2) == 1) == truth).mean())

    with_semantic, paper = accuracy(DeepPropConfig(semantic_channels=8), semantic), accuracy(DeepPropConfig(), None)
    assert with_semantic > 0.85 and paper < with_semantic - 0.2


def test_an_update_can_draw_a_share_of_each_class_from_the_new_strokes():
    labels = np.full((100, 100), -1, np.int32)
    labels[10:30, 10:90] = 0  # 1600 old pixels
    labels[60:90, 10:90] = 1  # 2400 old pixels ...
    labels[95:97, 10:30] = 1  # ... and 40 new ones (a correction stroke)
    new = np.zeros((100, 100), bool)
    new[95:97, 10:30] = True
    ys, xs, cls = sample_training_set(labels, 0.1, np.random.default_rng(0), new_pixels=new, new_share=0.5)
    picked_new = new[ys, xs]
    assert (cls == 0).sum() == (cls == 1).sum()
    assert picked_new[cls == 1].mean() == pytest.approx(0.5, abs=0.01)  # in proportion: 40/2440 ≈ 2 %
    assert not picked_new[cls == 0].any()  # a class without new pixels is drawn as before
    ys, xs, cls = sample_training_set(labels, 0.1, np.random.default_rng(0), new_pixels=new, new_share=0.0)
    assert new[ys, xs][cls == 1].mean() < 0.1  # share 0: the paper's proportional draw
