"""The colorizer on the frozen pretrained encoder: interface shared with the paper's U-Net, the map
changes the colours, the annealed mean over ab bins, the training targets, the split by source group."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.colorization import pipeline
from core.colorization.palette import map_input
from core.data import colorization as photos
from core.data.segmentation import split_of
from core.models.colorization_unet import (
    AB_SCALE,
    CHROMA_SCALES,
    ColorizationUNet,
    ColorizerConfig,
    ab_grid,
    decode_bins,
)
from core.models.efficientnet_lite import WEIGHT_ID as BACKBONE_ID
from core.models.efficientnet_lite import EfficientNetLite0, load_pretrained
from core.models.segmenter import PretrainedSegmenter, SegmenterConfig
from core.protocol import ErrorCode, SemanticError
from core.training.colorizer import BinCoding, build_cache, export, soft_targets
from core.training.segmenter import save_ensemble
from core.weights import Manifest, load_tensors, register_weights, save_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _model(head="bins", bins=4, seed=0) -> ColorizationUNet:
    torch.manual_seed(seed)
    config = ColorizerConfig(backbone="efficientnet-lite0", map_classes=6, head=head,
                             ab_bins=bins if head == "bins" else 0)
    model = ColorizationUNet(config)
    if head == "bins":
        model.ab_centers.copy_(torch.tensor([[-60.0, 0.0], [60.0, 0.0], [0.0, 60.0], [0.0, -60.0]]))
    return model.eval()


def _gray(h=64, w=96, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, h, w, generator=g) * 2 - 1).expand(1, 3, h, w).contiguous()


def test_interface_shape_range_and_frozen_backbone():
    model = _model()
    gray = _gray()
    with torch.no_grad():
        ab = model(gray, torch.zeros_like(gray))
    assert ab.shape == (1, 2, 64, 96) and ab.abs().max() <= 1
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training  # ImageNet BatchNorm statistics stay
    assert "backbone._fc.weight" not in model.state_dict()  # the classifier end is not shipped


def test_palette_rendering_reads_back_as_class_ids():
    model = _model()
    ids = np.array([[0, 1, 2], [3, 4, 5]])
    semantic = torch.from_numpy(map_input(ids, 6)).permute(2, 0, 1)[None]
    onehot = model.map_onehot(semantic)
    assert torch.equal(onehot.argmax(1)[0], torch.from_numpy(ids))


def test_a_changed_map_changes_the_colours_where_changed():
    model = _model(seed=1)
    with torch.no_grad():  # a trained-looking map embedding: classes far apart
        model.map_embed.weight.normal_(0, 3.0)
    gray = _gray()
    ids = np.zeros((64, 96), np.int64)
    ids[:, :48] = 2
    before = torch.from_numpy(map_input(ids, 6)).permute(2, 0, 1)[None]
    ids[:, :48] = 4
    after = torch.from_numpy(map_input(ids, 6)).permute(2, 0, 1)[None]
    with torch.no_grad():
        a, b = model(gray, before), model(gray, after)
    assert (a - b).abs()[..., :40].mean() * AB_SCALE > 0.1
    assert (a - b).abs()[..., :40].mean() > (a - b).abs()[..., 80:].mean()


def test_annealed_mean_lies_between_the_bins_and_sharpens_with_temperature():
    model = _model()
    logits = torch.tensor([2.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
    ab = model.to_ab(logits)[0, :, 0, 0] * AB_SCALE
    assert -60 < ab[0] < 0  # pulled toward the likeliest bin, (-60, 0)
    mean = torch.softmax(logits, 1)[0, :, 0, 0] @ model.ab_centers
    assert ab[0] < mean[0]  # T = 0.38 < 1: more saturated than the plain mean


def test_soft_targets_are_bin_fractions_per_output_cell():
    grid = ab_grid()
    centers = torch.tensor([[0.0, 0.0], [50.0, 20.0]])
    coding = BinCoding(centers, torch.cdist(grid, centers).argmin(1), torch.ones(2))
    ab = torch.zeros(1, 2, 8, 8)
    ab[0, 0, :4, :2], ab[0, 1, :4, :2] = 52.0, 18.0  # a quarter of the first 4×4 cell is (50, 20)
    target = soft_targets(ab, coding, 2, 4)
    assert target.shape == (1, 2, 2, 2)
    assert torch.allclose(target.sum(1), torch.ones(1, 2, 2))
    assert target[0, 1, 0, 0].item() == pytest.approx(0.5) and target[0, 1, 1, 1] == 0


def test_split_keeps_a_davis_sequence_together_and_is_disjoint():
    if not (DATASETS / "davis").is_dir():
        pytest.skip("../shared/datasets not present")
    splits = {s: photos.list_colour_photos(DATASETS, s, ("davis", "kodak24")) for s in
              ("train", "select", "heldout")}
    sequence_split = {}
    for split, listed in splits.items():
        for photo in listed:
            if photo.source == "davis":
                sequence = photos.group_of("davis", photo.image)
                assert sequence_split.setdefault(sequence, split) == split
    names = [p.image for listed in splits.values() for p in listed]
    assert len(names) == len(set(names)) == 183 + 24


def test_people_ground_truth_map_is_the_mask_with_prediction_elsewhere():
    if not (DATASETS / "people" / "ccp").is_dir():
        pytest.skip("../shared/datasets not present")
    photo = photos.list_colour_photos(DATASETS, "heldout", ("ccp",))[0]
    rgb = photos.read_photo(photo)
    mask = photos.person_mask(photo)
    predicted = np.full(rgb.shape[:2], 28, np.uint8)  # 'sky' everywhere …
    predicted[:5] = 18  # … and a stray 'person' band outside the mask
    truth = photos.ground_truth_map(photo, predicted, 18)
    assert np.array_equal(truth == 18, mask)
    assert set(np.unique(truth[~mask])) <= {0, 28}
    skin = photos.skin_mask(photo)
    assert skin is not None and (skin & ~mask).sum() == 0


def _brute_force_decoding(logits, centers, log_weights, temperature, correction, bonus):
    """The chroma-bonus decoding written out: every candidate point s·m, its expected distance to the bins."""
    p = torch.softmax(logits - log_weights[:, None, None], 1)[0]  # Q×h×w
    annealed = torch.einsum("qhw,qc->chw", torch.softmax((logits[0] - correction * log_weights[:, None, None])
                                                         / temperature, 0), centers)
    out = torch.empty_like(annealed)
    for y in range(annealed.shape[1]):
        for x in range(annealed.shape[2]):
            m = annealed[:, y, x]
            risks = [float((p[:, y, x] * torch.cdist((s * m)[None], centers)[0]).sum() - bonus * s * m.norm())
                     for s in CHROMA_SCALES.tolist()]
            out[:, y, x] = CHROMA_SCALES[int(np.argmin(risks))] * m
    return out


@pytest.mark.parametrize("bonus", [0.0, 0.3])
def test_chroma_bonus_decoding_is_the_expected_distance_minimum_on_the_ray(bonus):
    g = torch.Generator().manual_seed(3)
    centers = torch.tensor([[0.0, 0.0], [-60.0, 0.0], [60.0, 0.0], [0.0, 60.0], [0.0, -60.0], [30.0, 40.0]])
    log_weights = torch.randn(6, generator=g) * 0.3
    logits = torch.randn(1, 6, 3, 4, generator=g) * 2
    fast = decode_bins(logits, centers, log_weights, 0.6, 0.35, bonus)[0]
    assert torch.allclose(fast, _brute_force_decoding(logits, centers, log_weights, 0.6, 0.35, bonus), atol=1e-4)


def test_chroma_bonus_keeps_split_beliefs_near_gray_and_confident_ones_coloured():
    centers = torch.tensor([[0.0, 0.0], [-60.0, 0.0], [60.0, 0.0], [0.0, 60.0], [0.0, -60.0]])
    log_weights = torch.zeros(5)
    # pixel 0: all on (0, 60), as skin or sky; pixel 1: a little gray, the rest split over four hues (clothes)
    p = torch.tensor([[0.001, 0.001, 0.001, 0.996, 0.001], [0.1, 0.24, 0.23, 0.22, 0.21]])
    logits = p.log().T.reshape(1, 5, 1, 2)
    annealed = decode_bins(logits, centers, log_weights, 0.6, 0.0, None)[0, :, 0]
    chroma = {bonus: decode_bins(logits, centers, log_weights, 0.6, 0.0, bonus)[0, :, 0].norm(dim=0)
              for bonus in (0.0, 0.2, 0.5)}
    assert chroma[0.0][0] == pytest.approx(annealed[:, 0].norm().item(), rel=0.05)  # confident: full colour
    assert chroma[0.0][1] == 0  # split: gray is the expected-ΔE optimum
    assert chroma[0.0][1] < chroma[0.5][1] <= 1.6 * annealed[:, 1].norm()  # a bonus buys colour back …
    assert torch.all(chroma[0.0] <= chroma[0.2]) and torch.all(chroma[0.2] <= chroma[0.5])  # … monotonically


def _register_backbone(directory: Path) -> None:
    torch.manual_seed(1)  # random weights: these tests check the plumbing, not ImageNet features
    state = {k: v for k, v in EfficientNetLite0().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = directory / f"{BACKBONE_ID}.safetensors"
    save_tensors(path, state)
    register_weights(path, BACKBONE_ID, "efficientnet_lite0", {}, directory=directory)


def test_exported_colorizer_holds_no_backbone_and_loads_the_shared_one(tmp_path):
    _register_backbone(tmp_path)
    model = _model(seed=2)
    model.backbone = load_pretrained(Manifest.load(tmp_path))
    del model.backbone._conv_head, model.backbone._bn1, model.backbone._fc
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())  # what the fp16 file gives back
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": dict(model.config.to_dict(), chroma_bonus=0.2),
                "classes": [f"c{i}" for i in range(6)], "input_size": 64, "metrics": {}, "step": 1,
                "args": {}}, run / "best.pt")
    path = export(run, "colorizer-test", directory=tmp_path)
    assert not any(key.startswith("backbone.") for key in load_tensors(path))
    manifest = Manifest.load(tmp_path)
    colorizer = pipeline.load_colorizer(torch.device("cpu"), "colorizer-test", manifest=manifest)
    assert colorizer.model.config.chroma_bonus == 0.2 and not colorizer.model.backbone.training
    model = ColorizationUNet(replace(model.config, chroma_bonus=0.2))
    model.load_state_dict(torch.load(run / "best.pt", weights_only=False)["model"])
    gray = _gray()
    semantic = torch.from_numpy(map_input(np.full((64, 96), 3), 6)).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert torch.allclose(colorizer.model(gray, semantic), model.eval()(gray, semantic), atol=1e-5)
    # a head file that lacks a tensor is named, with what to do
    state = load_tensors(path)
    state.pop("out.weight")
    save_tensors(path, state)
    register_weights(path, "colorizer-test", "colorizer", manifest.entry("colorizer-test").config,
                     directory=tmp_path)
    with pytest.raises(SemanticError) as error:
        pipeline.load_colorizer(torch.device("cpu"), "colorizer-test", manifest=Manifest.load(tmp_path))
    assert error.value.code == ErrorCode.weights_corrupt and str(path) in error.value.message
    assert "installer" in error.value.message


def test_decoding_sweeps_pick_the_closest_setting_that_stays_colourful_enough():
    from core.training.colorizer import closest_colourful_enough

    rows = [
        {"name": "gray-ish", "delta_e": 8.0, "people_colorfulness_ratio": 0.3},
        {"name": "vivid", "delta_e": 9.5, "people_colorfulness_ratio": 0.8},
        {"name": "balanced", "delta_e": 8.7, "people_colorfulness_ratio": 0.66},
    ]
    assert closest_colourful_enough(rows, "delta_e", 0.65)["name"] == "balanced"
    assert closest_colourful_enough(rows, "delta_e", 0.9)["name"] == "vivid"  # none enough: most colourful


def test_the_training_cache_takes_its_map_from_the_shipped_segmenter_as_colorization_does(tmp_path):
    """An ensemble segmenter (the shipped kind) gives the cached predicted maps, the same as the pipeline's
    map of each view's L (the colorizer learns from what it will be given)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    _register_backbone(weights)
    classes = ["unlabeled", "sky", "person", "tree", "road", "sea"]
    config = SegmenterConfig(num_classes=len(classes), width=8, dropout=0.0)
    torch.manual_seed(3)
    decoders = [PretrainedSegmenter(replace(config, tuned_after=after)).decoder.state_dict()
                for after in ("stride8", "")]
    save_ensemble(decoders, [replace(config, tuned_after="stride8", test_scales=(1.0, 1.5)), config], [64, 96],
                  classes, pipeline.PRETRAINED_SEGMENTER_WEIGHTS, weights)
    segmenter = pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(weights))
    data = tmp_path / "data"
    for images, labels, _ in photos.SOURCES.values():
        for folder in (images, labels):
            if folder:
                (data / folder).mkdir(parents=True, exist_ok=True)
    names = [f"k{i:03d}" for i in range(200) if split_of(f"k{i:03d}.x") == "select"][:2]
    rng = np.random.default_rng(0)
    for name in names:
        photo = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
        Image.fromarray(photo).save(data / "photos/kodak24" / f"{name}.png")
    probe = ColorizationUNet(ColorizerConfig(backbone="efficientnet-lite0", map_classes=len(classes))).eval()
    probe.backbone.load_state_dict(load_pretrained(Manifest.load(weights)).state_dict(), strict=False)
    cache = build_cache(str(data), "select", 64, tmp_path / "cache", probe, segmenter, classes.index("person"))
    assert len(cache.predicted) == len(names)
    for index, name in enumerate(names):
        rgb = np.asarray(Image.open(data / "photos/kodak24" / f"{name}.png"))
        view, _ = photos.square_view(rgb, [np.zeros(rgb.shape[:2], np.uint8)], 64, False)
        lightness = pipeline.image_lightness(view)[0]
        expected, _ = pipeline.segment(lightness, segmenter)
        assert np.mean(cache.predicted[index] == expected) > 0.99  # L from torch vs NumPy: rounding only
        assert 1 <= cache.predicted[index].min() and cache.predicted[index].max() < len(classes)
