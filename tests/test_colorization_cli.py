"""`gimp-semantic segment` and `gimp-semantic colorize` end to end in-process, with small random networks
registered in a temporary weights folder (the shipped weights are tested in test_colorization_pipeline):
both segmenters, maps read back from ids or colors, lossy map formats refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.colorization.palette import class_colors
from core.colorization.pipeline import COLORIZER_WEIGHTS, GRIDNET_WEIGHTS
from core.models.colorization_unet import ColorizationUNet, ColorizerConfig
from core.models.gridnet import GridNet, GridNetConfig
from core.weights import register_weights, save_tensors
from tests.test_segmenter import register_tiny_segmenter

CLASSES = ["unlabeled", "sky", "tree", "sea"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def weights(tmp_path, monkeypatch):
    directory = tmp_path / "weights"
    directory.mkdir()
    torch.manual_seed(0)
    for weight_id, model, config in (
        (GRIDNET_WEIGHTS, GridNet, GridNetConfig(num_classes=len(CLASSES), width=0.25)),
        (COLORIZER_WEIGHTS, ColorizationUNet, ColorizerConfig(width=0.125)),
    ):
        path = directory / f"{weight_id}.safetensors"
        save_tensors(path, model(config).state_dict())
        register_weights(path, weight_id, weight_id.split("-")[0],
                         dict(config.to_dict(), classes=CLASSES, input_size=32), directory=directory)
    register_tiny_segmenter(directory, classes=CLASSES, input_size=32)
    monkeypatch.setenv("SEMANTIC_WEIGHTS_DIR", str(directory))
    return directory


def _gray_file(path, h=50, w=70):
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray((100 + 80 * np.sin(x / 9.0) * np.cos(y / 7.0)).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("segmenter", [[], ["--segmenter", "pretrained"], ["--segmenter", "gridnet"]])
def test_segment_writes_ids_or_colors(weights, tmp_path, segmenter):
    image = _gray_file(tmp_path / "gray.png")
    assert main(["segment", str(image), "-o", str(tmp_path / "ids.png"), "--quiet", *segmenter]) == 0
    assert main(["segment", str(image), "-o", str(tmp_path / "colors.png"), "--colored", "--quiet",
                 *segmenter]) == 0
    ids = Image.open(tmp_path / "ids.png")
    assert ids.mode == "L" and ids.size == (70, 50)
    ids = np.asarray(ids)
    assert ids.min() >= 1 and ids.max() < len(CLASSES)
    colors = np.asarray(Image.open(tmp_path / "colors.png").convert("RGB"))
    assert np.array_equal(colors, class_colors(len(CLASSES))[ids])


def test_the_two_segmenters_are_different_networks(weights, tmp_path):
    image = _gray_file(tmp_path / "gray.png")
    maps = {}
    for name in ("pretrained", "gridnet"):
        assert main(["segment", str(image), "-o", str(tmp_path / f"{name}.png"), "--segmenter", name,
                     "--quiet"]) == 0
        maps[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert not np.array_equal(maps["pretrained"], maps["gridnet"])
    assert main(["colorize", str(image), "-o", str(tmp_path / "out.png"), "--segmenter", "gridnet",
                 "--save-map", str(tmp_path / "used.png"), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "used.png")), maps["gridnet"])


@pytest.mark.parametrize("name", ["map.jpg", "map.JPEG", "map.webp"])
def test_maps_are_never_written_lossy(weights, tmp_path, capsys, name):
    image = _gray_file(tmp_path / "gray.png")
    assert main(["segment", str(image), "-o", str(tmp_path / name), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "lossy" in err and "PNG" in err and str(tmp_path / name) in err
    assert main(["colorize", str(image), "-o", str(tmp_path / "out.png"), "--save-map", str(tmp_path / name),
                 "--quiet"]) == 2
    assert "lossy" in capsys.readouterr().err
    assert not (tmp_path / name).exists() and not (tmp_path / "out.png").exists()  # refused before any work
    # the colorized photo itself may be a JPEG; only maps carry ids
    assert main(["colorize", str(image), "-o", str(tmp_path / "out.jpg"), "--quiet"]) == 0


def test_colorize_with_id_map_equals_colorize_with_color_map(weights, tmp_path):
    image = _gray_file(tmp_path / "gray.png")
    ids = np.ones((50, 70), np.uint8)
    ids[25:] = 3
    Image.fromarray(ids).save(tmp_path / "ids.png")
    Image.fromarray(class_colors(len(CLASSES))[ids]).save(tmp_path / "colors.png")
    for name in ("ids", "colors"):
        assert main(["colorize", str(image), "-o", str(tmp_path / f"out_{name}.png"), "--semantic-map",
                     str(tmp_path / f"{name}.png"), "--save-map", str(tmp_path / f"used_{name}.png"),
                     "--quiet"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"out_{n}.png")) for n in ("ids", "colors"))
    assert a.shape == (50, 70, 3) and np.array_equal(a, b)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "used_ids.png")), ids)


def test_colorize_reports_bad_maps(weights, tmp_path, capsys):
    image = _gray_file(tmp_path / "gray.png")
    Image.fromarray(np.full((50, 70, 3), (10, 200, 30), np.uint8)).save(tmp_path / "bad.png")
    assert main(["colorize", str(image), "-o", str(tmp_path / "o.png"), "--semantic-map",
                 str(tmp_path / "bad.png"), "--quiet"]) == 2
    assert "x 0–69, y 0–49" in capsys.readouterr().err
    assert main(["colorize", str(image), "-o", str(tmp_path / "o.png"), "--semantic-map",
                 str(tmp_path / "bad.png"), "--snap", "--quiet"]) == 0
    Image.fromarray(np.ones((10, 10), np.uint8)).save(tmp_path / "small.png")
    assert main(["colorize", str(image), "-o", str(tmp_path / "o.png"), "--semantic-map",
                 str(tmp_path / "small.png"), "--quiet"]) == 2
    assert "same size" in capsys.readouterr().err
