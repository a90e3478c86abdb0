"""GridNet (Ho et al.'s segmentation stage): grid structure, sampling convs, shapes, a tiny overfit,
class list and validation split from the dataset layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.data.siftflow import is_validation, list_pairs, read_classes
from core.models.gridnet import Down, GridNet, GridNetConfig, Lateral, Up
from core.protocol import SemanticError

TINY = GridNetConfig(num_classes=5, width=0.25, total_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_grid_structure():
    config = GridNetConfig()
    model = GridNet(config)
    assert config.row_depths == (16, 32, 64, 128, 256)
    assert len(model.lateral) == 5 and all(len(row) == 5 for row in model.lateral)  # 6 columns
    assert len(model.down) == 3 and len(model.up) == 3  # half the columns each way
    assert sum(isinstance(m, Lateral) for m in model.modules()) == 25
    assert sum(isinstance(m, Down) for m in model.modules()) == 12
    assert sum(isinstance(m, Up) for m in model.modules()) == 12
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            assert module.stride == (2, 2) and module.kernel_size == (3, 3)
        elif isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3)
            assert module.stride in ((1, 1), (2, 2)) and module.padding == (1, 1)
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 12  # only the down-sampling convolutions have stride 2
    for down in (m for m in model.modules() if isinstance(m, Down)):
        assert down.body[1].stride == (2, 2) and down.body[1].out_channels == 2 * down.body[1].in_channels


@pytest.mark.parametrize("size", [(32, 48), (40, 56), (37, 29)])
def test_logits_keep_input_size(size):
    model = GridNet(TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 5, *size)


def test_rows_are_all_used():
    model = GridNet(TINY).eval()
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    model(x).sum().backward()
    for r, row in enumerate(model.lateral):
        assert row[-1].body[1].weight.grad is not None, f"row {r} not reached"
    assert model.up[-1][-1].deconv.weight.grad.abs().sum() > 0  # the deepest row feeds the output


def test_tiny_overfit_reduces_loss():
    torch.manual_seed(0)
    model = GridNet(GridNetConfig(num_classes=5, width=0.125, total_dropout=0.0))
    x = torch.randn(2, 1, 16, 16)
    y = (x[:, 0] > 0).long() + 1 + (torch.arange(16) > 8).long().view(1, 1, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _dataset(tmp_path, names, classes="0 unlabeled\n1 sky\n2 tree\n"):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "classes.txt").write_text(classes)
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "images" / f"{name}.jpg")
        Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "train" / "labels" / f"{name}.png")
    return tmp_path / "train"


def test_class_list_and_deterministic_split(tmp_path):
    names = [f"img{i:03d}" for i in range(60)]
    split = _dataset(tmp_path, names)
    assert read_classes(tmp_path / "classes.txt").names == ("unlabeled", "sky", "tree")
    train, select, heldout = (
        {p[0].stem for p in list_pairs(split, part)} for part in ("train", "select", "heldout"))
    assert len(train) + len(select) + len(heldout) == 60 and select and heldout
    assert heldout == {n for n in names if is_validation(n)}  # the split the cards report
    assert not train & select and not train & heldout and not select & heldout


def test_bad_class_list_is_a_clear_error(tmp_path):
    (tmp_path / "classes.txt").write_text("0 unlabeled\n2 tree\n")
    with pytest.raises(SemanticError, match="without gaps"):
        read_classes(tmp_path / "classes.txt")
