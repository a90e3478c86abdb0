"""GridNet semantic segmentation of a gray photo, as used by Ho et al., *Semantic-Driven Colorization*.

GridNet (Fourure et al., BMVC 2017) is a grid of feature maps: rows are resolutions, columns are
processing stages. Along a row, residual units keep the resolution (3×3 convs, stride 1, padding 1);
in the first half of the columns stride-2 convolutions carry features one row down, in the second
half stride-2 transposed convolutions carry them back up. Where two streams meet they are summed.
Ho et al. use 5 rows × 6 columns with row depths [16, 32, 64, 128, 256] on the gray image and a
cross-entropy loss; the class count comes from the dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GridNetConfig:
    num_classes: int = 34  # SIFT Flow: 33 classes + unlabeled (id 0); set from classes.txt
    in_channels: int = 1  # the gray image's L
    depths: tuple[int, ...] = (16, 32, 64, 128, 256)  # one per row (Ho et al.)
    columns: int = 6  # half down-sampling, half up-sampling
    width: float = 1.0  # multiplier on depths; 1.0 is the paper's network
    total_dropout: float = 0.5  # Fourure et al.'s "total dropout" (whole lateral streams dropped in training)

    @property
    def row_depths(self) -> tuple[int, ...]:
        return tuple(max(4, int(round(d * self.width))) for d in self.depths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GridNetConfig:
        data = dict(data)
        data["depths"] = tuple(data.get("depths", cls.depths))
        return cls(**data)


def _pre(channels: int) -> nn.Sequential:
    # pre-activation ordering (BN → ReLU → conv), as in GridNet's residual units
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=False))


class Lateral(nn.Module):
    """Residual unit along a row: x + conv(conv(x)), both 3×3, stride 1."""

    def __init__(self, channels: int, drop: float):
        super().__init__()
        self.drop = drop
        self.body = nn.Sequential(
            _pre(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            _pre(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.body(x)
        if self.training and self.drop > 0:
            # per-sample drop of the whole stream; surviving streams rescaled so eval needs no change
            keep = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop).to(x.dtype)
            residual = residual * keep / (1 - self.drop)
        return x + residual


class Down(nn.Module):
    """Row r → r+1: stride-2 3×3 conv doubling depth, then a 3×3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            _pre(cin), nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
            _pre(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    """Row r+1 → r: stride-2 3×3 transposed conv halving depth, then a 3×3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pre1 = _pre(cin)
        self.deconv = nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False)
        self.body = nn.Sequential(_pre(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.deconv(self.pre1(x))
        if y.shape[-2:] != size:  # odd sizes: the upper row may be one pixel smaller than 2× the lower
            y = y[..., :size[0], :size[1]]
        return self.body(y)


class GridNet(nn.Module):
    def __init__(self, config: GridNetConfig = GridNetConfig()):
        super().__init__()
        self.config = config
        depths, cols = config.row_depths, config.columns
        rows, half = len(depths), config.columns // 2
        self.stem = nn.Conv2d(config.in_channels, depths[0], 3, 1, 1)
        # lateral[r][c] connects column c → c+1 in row r
        self.lateral = nn.ModuleList(
            nn.ModuleList(Lateral(depths[r], config.total_dropout) for _ in range(cols - 1)) for r in range(rows)
        )
        # down[c][r] connects row r → r+1 in column c (first half); up[c][r] row r+1 → r (second half)
        self.down = nn.ModuleList(
            nn.ModuleList(Down(depths[r], depths[r + 1]) for r in range(rows - 1)) for _ in range(half)
        )
        self.up = nn.ModuleList(
            nn.ModuleList(Up(depths[r + 1], depths[r]) for r in range(rows - 1)) for _ in range(cols - half)
        )
        self.head = nn.Sequential(_pre(depths[0]), nn.Conv2d(depths[0], config.num_classes, 3, 1, 1))

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        """gray: N×1×H×W in [-1, 1] → class logits N×K×H×W."""
        rows, half = len(self.config.row_depths), self.config.columns // 2
        # first column: the stem feeds row 0, stride-2 convs feed the rows below
        x = [self.stem(gray)]
        for r in range(rows - 1):
            x.append(self.down[0][r](x[r]))
        # remaining down-sampling columns: lateral + from the row above, summed
        for c in range(1, half):
            new = [self.lateral[0][c - 1](x[0])]
            for r in range(1, rows):
                new.append(self.lateral[r][c - 1](x[r]) + self.down[c][r - 1](new[r - 1]))
            x = new
        # up-sampling columns: lateral + from the row below, computed bottom-up
        for c in range(half, self.config.columns):
            new = [None] * rows
            new[rows - 1] = self.lateral[rows - 1][c - 1](x[rows - 1])
            for r in range(rows - 2, -1, -1):
                up = self.up[c - half][r](new[r + 1], tuple(x[r].shape[-2:]))
                new[r] = self.lateral[r][c - 1](x[r]) + up
            x = new
        return self.head(x[0])

    @staticmethod
    def pad_multiple() -> int:
        return 16  # four stride-2 steps
