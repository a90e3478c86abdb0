"""The "adjust" action and the `gimp-semantic adjust` command, run on a small real model written as a
weight file in a temporary weights folder (the same loading path as the shipped weights)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core.actions.base import JobContext, ModelCache
from core.actions.registry import find_action
from core.cli import main
from core.models.resnet import ResNetConfig
from core.models.sa_adjustnet import VARIANTS, GlobalColorMapping, SAAdjustNet, export_tensors
from core.protocol import ErrorCode, SemanticError
from core.weights import register_weights, save_tensors

TINY = replace(VARIANTS["lite0"], backbone="resnet", resnet=ResNetConfig(widths=(8, 12, 16), stem_width=8),
               renet_hidden=6, renet_out=8, context_dim=16, rank=12, presets=4, context_size=48, parse_classes=3)
EFFECTS = [{"words": "brighter"}, {"words": "darker, less saturated"}, {"words": "warmer"}, {"words": "cooler"}]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SAAdjustNet(TINY)
    for head in (model.direct, model.semantic):
        torch.nn.init.normal_(head.P.weight, std=0.5)
    path = tmp_path / "sa-adjustnet-pop-out.safetensors"
    save_tensors(path, export_tensors(model.state_dict(), GlobalColorMapping().state_dict()))
    register_weights(path, "sa-adjustnet-pop-out", "sa_adjustnet",
                     {"style": "pop-out", **TINY.to_dict(), "preset_effects": EFFECTS}, directory=tmp_path)
    monkeypatch.setenv("SEMANTIC_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


def run(arrays, **params):
    ctx = JobContext(torch.device("cpu"), ModelCache())
    return find_action("adjust").run(arrays, {"style": "pop-out", **params}, ctx)


def image(h=40, w=56, channels=4, dtype=np.uint8):
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 65535
    return (rng.random((h, w, channels)) * top).astype(dtype)


def test_keeps_size_type_and_alpha(weights):
    rgba = image()
    out = run({"image": rgba})["image"]
    assert out.shape == rgba.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 3], rgba[..., 3])
    assert np.abs(out[..., :3].astype(int) - rgba[..., :3]).mean() > 1
    wide = run({"image": image(channels=3, dtype=np.uint16)})["image"]
    assert wide.dtype == np.uint16 and wide.shape[2] == 3
    gray = run({"image": image(channels=2)})["image"]
    assert gray.shape[2] == 2


def test_returns_the_discrete_map_as_one_array_per_preset_with_names(weights):
    out = run({"image": image()}, return_map=True)
    maps = np.concatenate([out[f"preset_{k}"] for k in range(TINY.presets)], -1).astype(int)
    assert maps.shape == (40, 56, TINY.presets)
    assert set(np.unique(maps)) <= {0, 255} and np.array_equal(maps.sum(-1), np.full((40, 56), 255))
    assert np.array_equal(out["preset_index"][..., 0], maps.argmax(-1))
    assert json.loads(out["preset_names"].tobytes().decode()) == [e["words"] for e in EFFECTS]


def test_exported_map_given_back_reproduces_the_automatic_result_bit_for_bit(weights):
    rgba = image()
    out = run({"image": rgba}, return_map=True)
    channels = {f"preset_{k}": out[f"preset_{k}"] for k in range(TINY.presets)}
    assert np.array_equal(run({"image": rgba, **channels})["image"], out["image"])


def test_default_head_is_eq2_alone_and_the_map_model_where_a_map_is_involved(weights):
    rgba = image()
    plain = run({"image": rgba})["image"]
    assert np.array_equal(plain, run({"image": rgba}, head="direct")["image"])
    with_map = run({"image": rgba}, return_map=True)["image"]
    assert np.array_equal(with_map, run({"image": rgba}, head="map")["image"])
    assert not np.array_equal(plain, with_map)  # the two heads differ, so the choice above is observable


def test_personal_map_changes_only_the_painted_pixels(weights):
    rgba = image()
    auto = run({"image": rgba}, return_map=True)
    painted = np.zeros((40, 56, 1), np.uint8)
    painted[5:20, 10:30] = 255
    k = (int(auto["preset_index"][10, 20, 0]) + 1) % TINY.presets  # a preset other than the predicted one
    mine = run({"image": rgba, f"preset_{k}": painted})["image"]
    inside = painted[..., 0] > 0
    assert np.array_equal(mine[~inside], auto["image"][~inside])
    other = inside & (auto["preset_index"][..., 0] != k)
    assert other.sum() > 20
    assert (np.abs(mine[other].astype(int) - auto["image"][other]).max(-1) > 0).mean() > 0.5
    # the same map sent as one H×W×k array gives the same result
    stacked = np.zeros((40, 56, 4), np.uint8)
    stacked[..., k] = painted[..., 0]
    assert np.array_equal(run({"image": rgba, "preset_weights": stacked})["image"], mine)
    # painted everywhere with preset k = what the auto result shows where preset k was predicted
    everywhere = run({"image": rgba, f"preset_{k}": np.full((40, 56, 1), 255, np.uint8)})["image"]
    same = auto["preset_index"][..., 0] == k
    assert np.array_equal(everywhere[same], auto["image"][same])


def test_bad_inputs_are_explained(weights):
    rgba = image()
    cases = [
        ({"image": rgba, "preset_0": np.zeros((10, 10, 1), np.uint8)}, {}, "image's size"),
        ({"image": rgba, "preset_9": np.zeros((40, 56, 1), np.uint8)}, {}, "presets 0"),
        ({"image": rgba, "preset_1": np.zeros((40, 56, 1), np.uint8)}, {"head": "direct"}, "head 'map'"),
        ({"image": rgba}, {"style": "sepia"}, "style"),
    ]
    for arrays, params, text in cases:
        with pytest.raises(SemanticError, match=text) as info:
            run(arrays, **params)
        assert info.value.code is ErrorCode.bad_input


def test_missing_weights_say_so(weights):
    with pytest.raises(SemanticError) as info:
        run({"image": image()}, style="xpro")
    assert info.value.code is ErrorCode.weights_missing


def test_cli_adjust_with_and_without_a_map(weights, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(image(channels=3)).save(src)
    assert main(["adjust", str(src), "-o", str(tmp_path / "auto.png"), "--style", "pop-out",
                 "--export-map", str(tmp_path / "map.png"), "--quiet"]) == 0
    assert "preset 1: darker, less saturated" in capsys.readouterr().err
    predicted = np.asarray(Image.open(tmp_path / "map.png"))
    assert predicted.shape == (40, 56) and predicted.max() < TINY.presets
    auto = np.asarray(Image.open(tmp_path / "auto.png")).astype(int)
    # the exported index map given back unchanged: the same image, bit for bit
    assert main(["adjust", str(src), "-o", str(tmp_path / "again.png"), "--adjustment-map",
                 str(tmp_path / "map.png"), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")).astype(int), auto)
    mine = np.full((40, 56), 255, np.uint8)
    mine[:10] = 2
    Image.fromarray(mine).save(tmp_path / "mine.png")
    assert main(["adjust", str(src), "-o", str(tmp_path / "mine-out.png"), "--adjustment-map",
                 str(tmp_path / "mine.png"), "--quiet"]) == 0
    out = np.asarray(Image.open(tmp_path / "mine-out.png")).astype(int)
    assert np.array_equal(out[10:], auto[10:]) and not np.array_equal(out[:10], auto[:10])
    # a mask: preset 2 inside, preset 0 outside = the index map with 2 on top and 0 below
    mask = np.zeros((40, 56), np.uint8)
    mask[:10] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    both = np.where(mask == 255, 2, 0).astype(np.uint8)
    Image.fromarray(both).save(tmp_path / "both.png")
    for name, extra in (("masked.png", ["--mask", str(tmp_path / "mask.png"), "--inside-preset", "2",
                                        "--outside-preset", "0"]),
                        ("indexed.png", ["--adjustment-map", str(tmp_path / "both.png")])):
        assert main(["adjust", str(src), "-o", str(tmp_path / name), *extra, "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "masked.png")),
                          np.asarray(Image.open(tmp_path / "indexed.png")))
    Image.fromarray(np.full((40, 56), 7, np.uint8)).save(tmp_path / "bad.png")
    assert main(["adjust", str(src), "-o", str(tmp_path / "x.png"), "--adjustment-map",
                 str(tmp_path / "bad.png"), "--quiet"]) == 2
