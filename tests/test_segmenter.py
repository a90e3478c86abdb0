"""The pretrained-backbone segmenter: decoder shapes, the gray input, the loss (person / not-person), a
training step, weights written and read back through the pipeline, corrupt files named, the data splits."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.colorization import pipeline
from core.data.segmentation import NOT_PERSON, list_photos, photo_labels, split_of, square_views
from core.data.siftflow import is_validation
from core.imaging.color import rgb_to_lab_torch
from core.models.efficientnet_lite import WEIGHT_ID as BACKBONE_ID
from core.models.efficientnet_lite import EfficientNetLite0, load_pretrained
from core.models.gridnet import GridNet, GridNetConfig
from core.models.segmenter import FPNDecoder, PretrainedSegmenter, SegmenterConfig, SegmenterEnsemble, gray_to_rgb
from core.protocol import ErrorCode, SemanticError
from core.training import segmenter as training
from core.weights import Manifest, register_weights, save_tensors

CLASSES = ["unlabeled", "sky", "person", "tree", "road"]
PERSON = CLASSES.index("person")
TINY = SegmenterConfig(num_classes=len(CLASSES), width=8, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def register_backbone(directory) -> None:
    """A randomly initialized backbone registered under the shared backbone's id (the real one is 9 MB and
    these tests check plumbing, not ImageNet features)."""
    torch.manual_seed(1)
    state = {k: v for k, v in EfficientNetLite0().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = directory / f"{BACKBONE_ID}.safetensors"
    save_tensors(path, state)
    register_weights(path, BACKBONE_ID, "efficientnet_lite0", {}, directory=directory)


@torch.no_grad()
def _as_stored(module: torch.nn.Module) -> None:
    """Round ``module``'s floating values to what the fp16 weights file gives back."""
    for value in module.state_dict().values():
        if value.is_floating_point():
            value.copy_(value.half().float())


def register_tiny_segmenter(directory, weight_id: str = pipeline.PRETRAINED_SEGMENTER_WEIGHTS,
                            classes=CLASSES, input_size: int = 64, seed: int = 0) -> PretrainedSegmenter:
    """Backbone + a tiny decoder in ``directory``; returns the model with the weights as stored (fp16)."""
    if not (directory / f"{BACKBONE_ID}.safetensors").exists():
        register_backbone(directory)
    torch.manual_seed(seed)
    config = SegmenterConfig(num_classes=len(classes), width=8, dropout=0.0)
    model = PretrainedSegmenter(config)
    model.backbone = load_pretrained(Manifest.load(directory))
    _as_stored(model.decoder)
    training.save_decoder(model.decoder.state_dict(), config, list(classes), input_size, weight_id, directory)
    return model.eval()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    model = register_tiny_segmenter(directory)
    return directory, model


def test_decoder_predicts_at_stride_8_and_the_model_at_the_input_size():
    model = PretrainedSegmenter(TINY).eval()
    gray = torch.rand(2, 1, 72, 100) * 2 - 1  # not multiples of 32: "same" padding rounds up
    features = model.features(gray)
    assert features["stride8"].shape[-2:] == (9, 13) and features["stride32"].shape[-2:] == (3, 4)
    assert model.decoder(features).shape == (2, len(CLASSES), 9, 13)
    assert model(gray).shape == (2, len(CLASSES), 72, 100)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training and model.decoder.training  # ImageNet BN statistics stay


def test_test_time_views_average_the_mirrored_and_rescaled_scores():
    torch.manual_seed(0)
    plain = PretrainedSegmenter(TINY).eval()
    views = PretrainedSegmenter(replace(TINY, test_flip=True, test_scales=(1.0, 1.25))).eval()
    views.load_state_dict(plain.state_dict())
    assert SegmenterConfig.from_dict(views.config.to_dict()) == views.config  # survives the manifest's JSON
    gray = torch.rand(1, 1, 40, 56) * 2 - 1

    def scores(x):
        logits = plain.decoder(plain.features(x))
        return F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)

    with torch.no_grad():
        big = F.interpolate(gray, scale_factor=1.25, mode="bilinear", align_corners=False)
        mirrored = scores(gray.flip(-1)).flip(-1) + scores(big.flip(-1)).flip(-1)
        expected = (scores(gray) + scores(big) + mirrored) / 4
        assert torch.allclose(views(gray), expected, atol=1e-5)
        assert not torch.allclose(plain(gray), expected, atol=1e-3)


def test_gray_input_is_the_srgb_gray_of_that_lightness():
    lightness = torch.linspace(0, 100, 11).reshape(1, 1, 1, 11)
    rgb = gray_to_rgb(lightness / 50 - 1)
    assert rgb.shape == (1, 3, 1, 11)
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-6) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-6)
    assert rgb[0, 0, 0, 0] < 1e-4 and rgb[0, 0, 0, -1] > 0.999
    assert torch.allclose(rgb_to_lab_torch(rgb)[:, :1], lightness, atol=0.05)


def test_loss_ignores_unlabeled_and_pushes_person_down_where_known_absent():
    torch.manual_seed(0)
    logits = torch.randn(1, len(CLASSES), 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[0, 0] = 1
    labels[0, 1] = NOT_PERSON
    weights = torch.ones(len(CLASSES))
    loss = training.segmentation_loss(logits, labels, weights, PERSON, 1.0)
    changed = logits.clone()
    changed[..., 2:, :] += torch.randn(1, len(CLASSES), 2, 4) * 5  # rows 2-3 are unlabeled
    assert torch.allclose(training.segmentation_loss(changed, labels, weights, PERSON, 1.0), loss)
    # by hand: cross-entropy over classes 1..K-1 on row 0, -log(1 - p(person)) on row 1
    probs = logits[0, 1:].softmax(0)
    ce = -probs[0, 0].log()  # class 1 is index 0 among the scored classes
    not_person = -(1 - probs[PERSON - 1, 1]).log()
    assert torch.allclose(loss, (ce.sum() + not_person.sum()) / 8, atol=1e-5)
    without = training.segmentation_loss(logits, labels, weights, PERSON, 0.0)
    assert without == pytest.approx(float(ce.mean()), abs=1e-5)


def test_training_steps_reduce_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    decoder = FPNDecoder(SegmenterConfig(num_classes=len(CLASSES), width=16, dropout=0.0))
    features = {"stride8": torch.randn(4, 40, 8, 8), "stride16": torch.randn(4, 112, 4, 4),
                "stride32": torch.randn(4, 320, 2, 2)}
    coarse = torch.randint(1, len(CLASSES), (4, 1, 8, 8)).float()  # 2×2 blocks: learnable at stride 2
    labels = F.interpolate(coarse, scale_factor=2, mode="nearest")[:, 0].to(torch.uint8)
    labels[:, :4] = NOT_PERSON
    labels[:, -2:] = 0
    weights = torch.ones(len(CLASSES))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = F.interpolate(decoder(features), size=(16, 16), mode="bilinear", align_corners=False)
        loss = training.segmentation_loss(logits, labels, weights, PERSON, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_exported_weights_load_through_the_pipeline_and_predict_the_same(weights_dir):
    directory, model = weights_dir
    manifest = Manifest.load(directory)
    entry = manifest.entry(pipeline.PRETRAINED_SEGMENTER_WEIGHTS)
    assert entry.model == "segmenter" and entry.config["classes"] == CLASSES
    # the decoder only: the backbone is not repeated in the file
    assert manifest.path(pipeline.PRETRAINED_SEGMENTER_WEIGHTS).stat().st_size < 100_000
    segmenter = pipeline.load_segmenter(torch.device("cpu"), manifest=manifest)
    assert segmenter.classes == tuple(CLASSES) and segmenter.input_size == 64
    gray = torch.rand(1, 1, 64, 96) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(segmenter.model(gray), model(gray), atol=1e-5)
    rng = np.random.default_rng(0)
    lightness = (50 + 30 * rng.random((90, 130))).astype(np.float32)
    ids, small = pipeline.segment(lightness, segmenter)
    assert ids.shape == (90, 130) and 1 <= ids.min() and ids.max() < len(CLASSES)
    assert small.shape[0] % 32 == 0 and small.shape[1] % 32 == 0


def test_corrupt_or_mismatched_decoder_files_are_named(weights_dir, tmp_path):
    source, _ = weights_dir
    directory = tmp_path / "weights"
    shutil.copytree(source, directory)
    path = directory / f"{pipeline.PRETRAINED_SEGMENTER_WEIGHTS}.safetensors"
    data = bytearray(path.read_bytes())
    data[-10:] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(SemanticError) as error:
        pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert error.value.code == ErrorCode.weights_corrupt and str(path) in error.value.message
    # a well-formed file of another decoder (other width) is named as not fitting
    other = PretrainedSegmenter(SegmenterConfig(num_classes=len(CLASSES), width=16))
    weight_id = pipeline.PRETRAINED_SEGMENTER_WEIGHTS
    training.save_decoder(other.decoder.state_dict(), TINY, CLASSES, 64, weight_id, directory)
    with pytest.raises(SemanticError) as error:
        pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert error.value.code == ErrorCode.weights_corrupt and str(path) in error.value.message


def _photo(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _dataset(root):
    """Names are chosen so that each source has a photo in every split."""
    names = {}
    for split in ("heldout", "select", "train"):
        names[split] = next(f"p{i:04d}" for i in range(1000) if split_of(f"p{i:04d}") == split)
    scene, ccp, coco = root / "siftflow/train", root / "people/ccp", root / "people/coco128-seg"
    for folder in (scene / "images", scene / "labels", ccp / "images", ccp / "masks", coco / "images",
                   coco / "masks"):
        folder.mkdir(parents=True)
    for name in names.values():
        _photo(scene / "images" / f"{name}.jpg", 32, 32)
        Image.fromarray(np.full((32, 32), 3, np.uint8)).save(scene / "labels" / f"{name}.png")
        _photo(ccp / "images" / f"{name}.jpg", 48, 32)
        mask = np.zeros((48, 32), np.uint8)
        mask[8:40, 10:22] = 255
        Image.fromarray(mask).save(ccp / "masks" / f"{name}.png")
        _photo(coco / "images" / f"{name}.jpg", 32, 40)
        Image.fromarray(np.where(np.arange(40) < 20, 255, 0).astype(np.uint8)[None].repeat(32, 0)).save(
            coco / "masks" / f"{name}.png")
    return names


def test_splits_and_labels_of_scenes_and_people(tmp_path):
    names = _dataset(tmp_path)
    for split, name in names.items():
        photos = list_photos(tmp_path, split)
        assert [(p.image.stem, p.source) for p in photos] == [
            (name, "siftflow/train"), (name, "people/ccp"), (name, "people/coco128-seg")]
        assert len(list_photos(tmp_path, split, people=False)) == 1
    # the held-out split is the bench's validation split of SIFT Flow
    assert all(is_validation(f"p{i:04d}") == (split_of(f"p{i:04d}") == "heldout") for i in range(300))
    scene, ccp, coco = list_photos(tmp_path, "train")
    assert np.unique(photo_labels(scene, PERSON)[1]).tolist() == [3]
    ccp_labels = photo_labels(ccp, PERSON)[1]
    assert ccp_labels[20, 15] == PERSON and ccp_labels[0, 0] == NOT_PERSON  # CCP: every person pixel labelled
    coco_labels = photo_labels(coco, PERSON)[1]
    assert coco_labels[5, 5] == PERSON and coco_labels[5, 30] == 0  # COCO: the rest carries no label
    with pytest.raises(SemanticError, match="split"):
        list_photos(tmp_path, "test")


def test_square_views_of_a_portrait_are_its_top_and_mirrored_bottom():
    rgb = np.zeros((60, 40, 3), np.uint8)
    rgb[:, :, 0] = np.arange(60)[:, None]  # row index in red
    rgb[:, :, 1] = np.arange(40)[None, :]  # column index in green
    labels = np.zeros((60, 40), np.uint8)
    labels[:10] = 1
    views = square_views(rgb, labels, 40, 20, both=True)
    (top, top_labels), (bottom, bottom_labels) = views
    assert top.shape == (40, 40, 3) and top_labels.shape == (20, 20)
    assert top[0, 0, 0] == 0 and top_labels[0, 0] == 1  # the head end
    assert bottom[-1, 0, 0] == 59 and bottom[0, 0, 1] == 39 and bottom_labels[0, 0] == 0  # mirrored
    assert len(square_views(rgb[:40], labels[:40], 40, 20, both=False)) == 1


def test_heldout_report_scores_each_segmenter_on_the_heldout_photos(weights_dir, tmp_path):
    directory, _ = weights_dir
    _dataset(tmp_path)
    segmenter = pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    report = training.heldout_report(tmp_path, {"tiny": segmenter})
    assert report["siftflow_images"] == 1 and report["people_images"] == 2
    scored = report["segmenters"]["tiny"]
    # every labelled pixel is 'tree': its IoU is the share of pixels predicted tree, the pixel accuracy;
    # any other class the random decoder predicts is scored too, at IoU 0
    per_class = scored["siftflow"]["per_class_iou"]
    assert "tree" in per_class and all(v == 0 for name, v in per_class.items() if name != "tree")
    assert per_class["tree"] == pytest.approx(scored["siftflow"]["pixel_accuracy"], abs=1e-4)
    assert scored["siftflow"]["classes_scored"] == len(per_class)
    assert 0.0 <= scored["people_person_iou"] <= 1.0


def test_segmentation_scores_are_fcns_over_classes_with_a_nonzero_union():
    # rows truth, columns prediction; class 0 'unlabeled' never scored, class 4 'road' absent everywhere
    matrix = np.array([[0, 0, 0, 0, 0],
                       [0, 6, 0, 2, 0],  # sky: 6 right, 2 called tree
                       [0, 0, 0, 0, 0],  # person: not in the truth, predicted once below
                       [0, 0, 1, 3, 0],  # tree: 3 right, 1 called person
                       [0, 0, 0, 0, 0]])
    result = training.segmentation_scores(matrix, CLASSES)
    assert result["per_class_iou"] == {"sky": 0.75, "person": 0.0, "tree": 0.5}  # 6/8, 0/1, 3/(4+2)
    assert result["mean_iou"] == pytest.approx((0.75 + 0.0 + 0.5) / 3)
    assert result["classes_scored"] == 3 and result["pixel_accuracy"] == pytest.approx(9 / 12)


def test_prior_adjustment_is_picked_on_select_and_folded_into_the_bias(tmp_path):
    torch.manual_seed(0)
    decoder = FPNDecoder(TINY)
    labels = torch.full((6, 16, 16), 1, dtype=torch.uint8)  # 'sky' dominates training
    labels[:, :2] = 3
    features = {"stride8": torch.randn(6, 40, 8, 8).half(), "stride16": torch.randn(6, 112, 4, 4).half(),
                "stride32": torch.randn(6, 320, 2, 2).half()}
    cache = training.FeatureCache(features, labels, torch.zeros(6, dtype=torch.bool))
    trained = {k: v.clone() for k, v in decoder.state_dict().items()}
    torch.save({"decoder": trained, "config": TINY.to_dict(), "class_weights": [1.0] * len(CLASSES),
                "metrics": {}}, tmp_path / "best.pt")
    training.adjust_for_prior(tmp_path, cache, cache, len(CLASSES), PERSON, (0.0, 1.0),
                              note=lambda text: None)
    state = torch.load(tmp_path / "best.pt", weights_only=False)
    tau = state["prior_adjustment"]["tau"]
    assert set(state["prior_adjustment"]["select"]) == {"0.0", "1.0"}
    assert state["metrics"] == state["prior_adjustment"]["select"][str(tau)]
    shift = trained["classifier.bias"] - state["decoder"]["classifier.bias"]
    # τ·log prior: sky is 7/8 of the pixels, tree 1/8, the unseen classes are not boosted
    expected = tau * torch.tensor([0.0, np.log(7 / 8), 0.0, np.log(1 / 8), 0.0])
    assert torch.allclose(shift, expected.float(), atol=1e-5)
    training.adjust_for_prior(tmp_path, cache, cache, len(CLASSES), PERSON, (2.0,), note=lambda text: None)
    again = torch.load(tmp_path / "best.pt", weights_only=False)
    assert torch.equal(again["decoder"]["classifier.bias"], state["decoder"]["classifier.bias"])  # once only


def test_lovasz_term_is_one_minus_iou_for_hard_predictions_and_has_gradients():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(1, len(CLASSES), (2, 12, 12)).astype(np.uint8))
    labels[0, :2] = 0  # unlabeled pixels
    labels[1, :3] = NOT_PERSON  # known not-person pixels carry no IoU term either
    predicted = labels.long().clone()
    flip = torch.from_numpy(rng.random((2, 12, 12)) < 0.3)
    predicted[flip] = torch.from_numpy(rng.integers(1, len(CLASSES), int(flip.sum())))
    predicted[(labels == 0) | (labels == NOT_PERSON)] = 1
    logits = 40.0 * F.one_hot(predicted, len(CLASSES)).permute(0, 3, 1, 2).float()
    known = (labels != 0) & (labels != NOT_PERSON)
    ious = []
    for c in labels[known].unique():
        truth, guess = (labels == c) & known, (predicted == c) & known
        ious.append(float((truth & guess).sum()) / float((truth | guess).sum()))
    loss = training.lovasz_softmax(logits, labels)
    assert abs(float(loss) - (1 - np.mean(ious))) < 1e-4
    soft = torch.randn(2, len(CLASSES), 12, 12, requires_grad=True)
    training.lovasz_softmax(soft, labels).backward()
    assert soft.grad is not None and float(soft.grad[:, 1:].abs().sum()) > 0
    assert float(training.lovasz_softmax(soft.detach(), torch.zeros_like(labels))) == 0.0


def test_tuned_late_blocks_start_as_the_frozen_model_train_alone_and_ship_in_the_weights(weights_dir, tmp_path):
    source, _ = weights_dir
    directory = tmp_path / "weights"
    shutil.copytree(source, directory)
    backbone = load_pretrained(Manifest.load(directory))
    gray = torch.rand(2, 1, 64, 96) * 2 - 1
    taps = backbone.features(gray_to_rgb(gray))
    later = backbone.features_from(taps["stride8"], "stride8", ("stride16", "stride32"))
    assert all(torch.equal(later[t], taps[t]) for t in ("stride16", "stride32"))
    frozen = PretrainedSegmenter(TINY)
    tuned = PretrainedSegmenter(replace(TINY, tuned_after="stride8"))
    frozen.backbone = tuned.backbone = backbone
    tuned.start_tuning_from_backbone()
    tuned.decoder.load_state_dict(frozen.decoder.state_dict(), strict=False)  # same FPN, own late blocks
    frozen.eval(), tuned.eval()
    assert list(tuned.features(gray)) == ["stride8"]  # the shared backbone stops at stride 8
    with torch.no_grad():
        assert torch.allclose(tuned(gray), frozen(gray), atol=1e-5)
    # one training step moves the segmenter's copy, never the shared backbone
    tuned.train()
    assert not tuned.decoder.late.training and tuned.decoder.lateral.training  # ImageNet BN statistics
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    late_before = [p.detach().clone() for p in tuned.decoder.late.parameters()]
    optimizer = torch.optim.SGD(tuned.decoder.parameters(), lr=0.1)
    tuned.decoder(tuned.features(gray)).square().mean().backward()
    optimizer.step()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(late_before, tuned.decoder.late.parameters()))
    # exported with the late blocks, read back through the pipeline: the same predictions (fp16 file)
    tuned.eval()
    _as_stored(tuned.decoder)
    weight_id = pipeline.PRETRAINED_SEGMENTER_WEIGHTS
    training.save_decoder(tuned.decoder.state_dict(), tuned.config, CLASSES, 64, weight_id, directory)
    segmenter = pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert segmenter.model.config.tuned_after == "stride8"
    with torch.no_grad():
        assert torch.allclose(segmenter.model(gray), tuned(gray), atol=1e-4)


def test_a_lite2_segmenter_caches_and_reads_its_wider_taps_in_its_own_cache(tmp_path):
    _dataset(tmp_path / "data")
    photos = list_photos(tmp_path / "data", "train")
    torch.manual_seed(0)
    lite2 = PretrainedSegmenter(replace(TINY, backbone="lite2")).eval()
    cache = training.cache_split(lite2, photos, tmp_path / "cache", "train", PERSON, 64, 32, True,
                                 log=lambda text: None)
    views = len(cache)
    assert views == 4  # the scene and its mirror image, one view of each people photo
    assert {tap: tuple(f.shape) for tap, f in cache.features.items()} == {
        "stride8": (views, 48, 8, 8), "stride16": (views, 120, 4, 4), "stride32": (views, 352, 2, 2)}
    rgb, labels = photo_labels(photos[0], PERSON)
    first_view = square_views(rgb, labels, 64, 32, both=True)[0][0]
    with torch.no_grad():
        assert _predict_shape(lite2.decoder, cache) == (views, len(CLASSES), 32, 32)
        # the cached taps (fp16) are what the segmenter computes from that view's gray at inference
        computed = lite2.features(training.gray_input(np.array(first_view[None])))
    assert all(torch.allclose(cache.features[tap][0].float(), computed[tap][0], rtol=1e-2, atol=1e-2)
               for tap in computed)
    tuned = PretrainedSegmenter(replace(TINY, backbone="lite2", tuned_after="stride8")).eval()
    assert len(tuned.decoder.late) == 14  # Lite2's 21 blocks, 7 of them up to the stride-8 tap
    with torch.no_grad():
        assert _predict_shape(tuned.decoder, cache) == (views, len(CLASSES), 32, 32)
    # a Lite0 run pointed at Lite2's cache is told so instead of failing on a shape deep in training
    with pytest.raises(SystemExit, match="another backbone"):
        training.cache_split(PretrainedSegmenter(TINY), photos, tmp_path / "cache", "train", PERSON, 64, 32,
                             True, log=lambda text: None)


def _predict_shape(decoder, cache) -> tuple[int, ...]:
    return tuple(training.predict(decoder, cache, slice(0, len(cache)), 32).shape)


def test_backbone_option_finds_a_converted_file_by_folder_or_path(tmp_path):
    from core.models.efficientnet_lite import EfficientNetLite

    directory = tmp_path / "lite2"
    directory.mkdir()
    path = directory / "efficientnet-lite2-imagenet.safetensors"
    torch.manual_seed(0)
    save_tensors(path, {k: v for k, v in EfficientNetLite("lite2").state_dict().items()
                        if not k.endswith("num_batches_tracked")})
    register_weights(path, "efficientnet-lite2-imagenet", "efficientnet_lite2", {"stages": "lite2"},
                     directory=directory)
    for spec in (str(directory), str(path)):
        manifest, weight_id = training.backbone_weights(spec)
        assert weight_id == "efficientnet-lite2-imagenet" and manifest.directory == directory
        assert load_pretrained(manifest, weight_id=weight_id).tap_widths(("stride8",)) == {"stride8": 48}
    assert training.backbone_weights("lite0")[1] == BACKBONE_ID
    with pytest.raises(SystemExit, match="--variant lite2"):
        training.backbone_weights(str(tmp_path / "nothing-here"))


def _run_state(folder, config: SegmenterConfig, side: int, seed: int, **args) -> PretrainedSegmenter:
    """A training run's best.pt (tiny decoder, fp16-exact values) in ``folder``; returns its model."""
    torch.manual_seed(seed)
    model = PretrainedSegmenter(config)
    _as_stored(model.decoder)
    folder.mkdir(parents=True)
    recorded = {**vars(training.parse_args([])), "out": str(folder), "side": side, **args}
    torch.save({"decoder": model.decoder.state_dict(), "config": config.to_dict(), "classes": CLASSES,
                "args": training._plain(recorded),
                "step": 7, "elapsed_s": 60.0, "metrics": {"mean_iou": 0.25, "people_person_iou": 0.5},
                "train_views": 3, "select_views": 1}, folder / "best.pt")
    return model.eval()


def test_an_exported_ensemble_averages_its_members_probabilities_through_the_pipeline(tmp_path, monkeypatch):
    directory = tmp_path / "weights"
    directory.mkdir()
    register_backbone(directory)
    gridnet = GridNetConfig(num_classes=len(CLASSES), width=0.125)
    save_tensors(directory / "gridnet-siftflow.safetensors", GridNet(gridnet).state_dict())
    register_weights(directory / "gridnet-siftflow.safetensors", pipeline.GRIDNET_WEIGHTS, "gridnet",
                     dict(gridnet.to_dict(), classes=CLASSES, input_size=32), directory=directory)
    monkeypatch.setenv("SEMANTIC_WEIGHTS_DIR", str(directory))
    _dataset(tmp_path / "data")
    # a fine-tuned decoder on 64² views and a frozen-backbone one on 96² views, started from the first
    tuned = _run_state(tmp_path / "tuned", replace(TINY, tuned_after="stride8"), 64, 0, tune_after="stride8")
    frozen = _run_state(tmp_path / "frozen", TINY, 96, 1, init=str(tmp_path / "tuned" / "best.pt"))
    training.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "tuned"), "--export",
                   pipeline.PRETRAINED_SEGMENTER_WEIGHTS, "--test-scales", "1.0", "1.5",
                   "--ensemble-with", f"{tmp_path / 'frozen'}:1.0"])
    manifest = Manifest.load(directory)
    entry = manifest.entry(pipeline.PRETRAINED_SEGMENTER_WEIGHTS)
    assert entry.model == "segmenter-ensemble" and entry.config["input_size"] == 64
    # each member reads the photo at its own training size, its scales relative to that size
    assert [(m["input_size"], m["test_scales"]) for m in entry.config["members"]] == [(64, [1.0, 1.5]),
                                                                                     (96, [1.0])]
    segmenter = pipeline.load_segmenter(torch.device("cpu"), manifest=manifest)
    tuned.backbone = frozen.backbone = load_pretrained(manifest)
    tuned.config = replace(tuned.config, test_scales=(1.0, 1.5))
    gray64, gray96 = torch.rand(1, 1, 64, 96) * 2 - 1, torch.rand(1, 1, 96, 160) * 2 - 1
    with torch.no_grad():
        frozen_scores = F.interpolate(frozen(gray96), size=(64, 96), mode="bilinear", align_corners=False)
        # 'unlabeled' (class 0) is never predicted: out of each member's softmax, the ensemble's lowest score
        expected = (tuned(gray64)[:, 1:].softmax(1) + frozen_scores[:, 1:].softmax(1)) / 2
        scores = segmenter.model([gray64, gray96])
        assert torch.allclose(scores[:, 1:].exp(), expected, atol=1e-5)
        assert (scores[:, 0] < scores[:, 1:].min(1).values).all()
    # the pipeline resizes the full-resolution photo to each member's size (not 64² upsampled to 96²)
    lightness = (50 + 30 * np.random.default_rng(0).random((70, 90))).astype(np.float32)
    seen, forward = [], segmenter.model.forward
    segmenter.model.forward = lambda grays: seen.append(grays) or forward(grays)
    ids, small = pipeline.segment(lightness, segmenter)
    expected = [pipeline._gray_tensor(pipeline._resize(lightness, pipeline.model_shape(70, 90, side, 32),
                                                       cv2.INTER_AREA), torch.device("cpu"), 1) for side in (64, 96)]
    assert len(seen) == 1 and seen[0][0].shape[-2:] == (64, 64) and seen[0][1].shape[-2:] == (96, 96)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], expected, strict=True))
    assert ids.shape == (70, 90) and 1 <= ids.min() and ids.max() < len(CLASSES)
    assert small.shape == (64, 64)
    with pytest.raises(ValueError):  # one photo per member
        segmenter.model.forward = forward
        segmenter.model(expected[:1])
    card = (directory / f"{pipeline.PRETRAINED_SEGMENTER_WEIGHTS}.md").read_text()
    assert "segmenter-ensemble" in card and "Member 2" in card and "select split" in card
    # the recipe: the tuned run (the frozen one's --init) is listed before the frozen run and the export
    recipe = card[card.index("## Recipe"):]
    assert recipe.index("--tune-after stride8") < recipe.index("--side 96") < recipe.index("--ensemble-with")
    assert recipe.count("--tune-after stride8") == 1


def test_an_ensemble_file_that_does_not_fit_is_named(tmp_path):
    directory = tmp_path / "weights"
    directory.mkdir()
    register_backbone(directory)
    weight_id = pipeline.PRETRAINED_SEGMENTER_WEIGHTS
    narrow = PretrainedSegmenter(TINY).decoder.state_dict()
    training.save_ensemble([narrow, narrow], [TINY, replace(TINY, width=16)], [64, 96], CLASSES, weight_id,
                           directory)
    with pytest.raises(SemanticError) as error:
        pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert error.value.code == ErrorCode.weights_corrupt
    assert str(directory / f"{weight_id}.safetensors") in error.value.message


def test_ensemble_members_must_share_one_backbone():
    with pytest.raises(ValueError):
        SegmenterEnsemble([TINY, replace(TINY, backbone="lite2")], [64, 64])
    with pytest.raises(ValueError):
        SegmenterEnsemble([TINY, TINY], [64])


@pytest.mark.parametrize("backbones", [["lite9"], ["lite0", "lite2"]])
def test_a_manifest_naming_an_unknown_or_mixed_backbone_is_a_clear_error(tmp_path, backbones):
    directory = tmp_path / "weights"
    directory.mkdir()
    register_backbone(directory)
    configs = [replace(TINY, backbone=name) for name in backbones]
    states = [PretrainedSegmenter(TINY).decoder.state_dict()] * len(configs)
    weight_id = pipeline.PRETRAINED_SEGMENTER_WEIGHTS
    if len(configs) == 1:
        training.save_decoder(states[0], configs[0], CLASSES, 64, weight_id, directory)
    else:
        training.save_ensemble(states, configs, [64] * len(configs), CLASSES, weight_id, directory)
    with pytest.raises(SemanticError) as error:
        pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert error.value.code == ErrorCode.weights_corrupt
    assert all(name in error.value.message for name in backbones)


@pytest.mark.parametrize("edit", ["no members", "members not dicts", "other class count"])
def test_a_malformed_ensemble_entry_is_a_clear_error(tmp_path, edit):
    directory = tmp_path / "weights"
    directory.mkdir()
    register_backbone(directory)
    weight_id = pipeline.PRETRAINED_SEGMENTER_WEIGHTS
    state = PretrainedSegmenter(TINY).decoder.state_dict()
    training.save_ensemble([state, state], [TINY, TINY], [64, 96], CLASSES, weight_id, directory)
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(e for e in manifest["weights"] if e["id"] == weight_id)
    if edit == "no members":
        del entry["config"]["members"]
    elif edit == "members not dicts":
        entry["config"]["members"] = ["lite0", "lite0"]
    else:
        entry["config"]["members"][1]["num_classes"] = len(CLASSES) + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(SemanticError) as error:
        pipeline.load_segmenter(torch.device("cpu"), manifest=Manifest.load(directory))
    assert error.value.code == ErrorCode.weights_corrupt and "Re-run the installer" in error.value.message


def test_a_cards_recipe_line_gives_every_training_option_a_run_changed():
    args = training._plain(vars(training.parse_args(
        ["--out", "runs/x", "--no-people", "--prior-adjustment", "0", "0.5", "--dropout", "0.2", "--eval-every", "50",
         "--export", "ignored", "--test-scales", "1.0", "1.5"])))
    line = training.training_command(args)
    parsed = vars(training.parse_args(line.split()[3:-1]))  # after "python -m module", before "[--resume]"
    for name in training.RECIPE_OPTIONS:
        assert str(parsed[name]) == str(args[name]), name
    assert "--export" not in line and "--test-scales" not in line and "--lovasz-side" not in line
