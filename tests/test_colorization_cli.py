"""`gimp-semantic segment` and `gimp-semantic colorize` end to end in-process, with small random networks
registered in a temporary weights folder (the shipped weights are tested in test_colorization_pipeline)."""

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
    monkeypatch.setenv("SEMANTIC_WEIGHTS_DIR", str(directory))
    return directory


def _gray_file(path, h=50, w=70):
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray((100 + 80 * np.sin(x / 9.0) * np.cos(y / 7.0)).astype(np.uint8)).save(path)
    return path


def test_segment_writes_ids_or_colors(weights, tmp_path):
    image = _gray_file(tmp_path / "gray.png")
    assert main(["segment", str(image), "-o", str(tmp_path / "ids.png"), "--quiet"]) == 0
    assert main(["segment", str(image), "-o", str(tmp_path / "colors.png"), "--colored", "--quiet"]) == 0
    ids = Image.open(tmp_path / "ids.png")
    assert ids.mode == "L" and ids.size == (70, 50)
    ids = np.asarray(ids)
    assert ids.min() >= 1 and ids.max() < len(CLASSES)
    colors = np.asarray(Image.open(tmp_path / "colors.png").convert("RGB"))
    assert np.array_equal(colors, class_colors(len(CLASSES))[ids])


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
