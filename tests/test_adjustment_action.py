"""The "adjust" action and the `gimp-semantic adjust` command, run on a small real model written as a
weight file in a temporary weights folder (the same loading path as the shipped weights)."""

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

TINY = replace(VARIANTS["cpu-small"], backbone=ResNetConfig(widths=(8, 12, 16), stem_width=8), renet_hidden=6,
               renet_out=8, context_dim=16, rank=12, presets=4, context_size=48, parse_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SAAdjustNet(TINY)
    for head in (model.direct, model.semantic):
        torch.nn.init.normal_(head.P.weight, std=0.5)
    path = tmp_path / "sa-adjustnet-pop-out.safetensors"
    save_tensors(path, export_tensors(model.state_dict(), GlobalColorMapping().state_dict()))
    register_weights(path, "sa-adjustnet-pop-out", "sa_adjustnet", {"style": "pop-out", **TINY.to_dict()},
                     directory=tmp_path)
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


def test_returns_the_map_as_one_array_per_preset(weights):
    out = run({"image": image()}, return_map=True)
    maps = np.concatenate([out[f"preset_{k}"] for k in range(TINY.presets)], -1).astype(int)
    assert maps.shape == (40, 56, TINY.presets)
    assert np.abs(maps.sum(-1) - 255).max() <= TINY.presets  # probabilities, rounded
    top2 = np.sort(maps, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] >= 2  # rounding to 8 bits can tie close probabilities
    assert clear.mean() > 0.5
    assert np.array_equal(out["preset_index"][..., 0][clear], maps.argmax(-1)[clear])


def test_personal_map_changes_only_the_painted_pixels(weights):
    rgba = image()
    auto = run({"image": rgba})["image"]
    painted = np.zeros((40, 56, 1), np.uint8)
    painted[5:20, 10:30] = 255
    mine = run({"image": rgba, "preset_3": painted})["image"]
    inside = painted[..., 0] > 0
    assert np.array_equal(mine[~inside], auto[~inside])
    assert (np.abs(mine[inside].astype(int) - auto[inside]).max(-1) > 0).mean() > 0.5
    # the same map sent as one H×W×k array gives the same result
    stacked = np.zeros((40, 56, 4), np.uint8)
    stacked[..., 3] = painted[..., 0]
    assert np.array_equal(run({"image": rgba, "preset_weights": stacked})["image"], mine)


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


def test_cli_adjust_with_and_without_a_map(weights, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(image(channels=3)).save(src)
    assert main(["adjust", str(src), "-o", str(tmp_path / "auto.png"), "--style", "pop-out",
                 "--export-map", str(tmp_path / "map.png"), "--quiet"]) == 0
    predicted = np.asarray(Image.open(tmp_path / "map.png"))
    assert predicted.shape == (40, 56) and predicted.max() < TINY.presets
    mine = np.full((40, 56), 255, np.uint8)
    mine[:10] = 2
    Image.fromarray(mine).save(tmp_path / "mine.png")
    assert main(["adjust", str(src), "-o", str(tmp_path / "mine-out.png"), "--adjustment-map",
                 str(tmp_path / "mine.png"), "--quiet"]) == 0
    auto = np.asarray(Image.open(tmp_path / "auto.png")).astype(int)
    out = np.asarray(Image.open(tmp_path / "mine-out.png")).astype(int)
    assert np.array_equal(out[10:], auto[10:]) and not np.array_equal(out[:10], auto[:10])
    Image.fromarray(np.full((40, 56), 7, np.uint8)).save(tmp_path / "bad.png")
    assert main(["adjust", str(src), "-o", str(tmp_path / "x.png"), "--adjustment-map",
                 str(tmp_path / "bad.png"), "--quiet"]) == 2
