"""Two-stream colorization U-Net of Ho et al., *Semantic-Driven Colorization*.

The gray image and its semantic map pass through ONE encoder (shared weights). At every level the
gray stream's features are instance-normalized (their per-image statistics carry the photo's
brightness and contrast, which the map does not have), then concatenated with the map stream's
features; those concatenations are the skips, and the deepest one is the decoder's input. Blocks
are two 3×3 convolutions with LeakyReLU(0.01); encoder depths [32, 64, 128, 256, 512]; the decoder
works on [1024, 512, 256, 128, 64] channels (1024 = 512 gray + 512 map at the bottleneck; at each
lower level a transposed conv brings the previous level up and the block narrows to the listed
depth after concatenating the skip). The output is ab in [-1, 1]; the loss is Huber with δ = 1 on
L, a, b scaled to [-1, 1].

The map enters as its palette rendering (3 channels in [-1, 1], see core.colorization.palette), and
the gray image as L repeated to 3 channels, so both streams fit the same first convolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

L_SCALE, AB_SCALE = 50.0, 110.0  # L/50 - 1 and ab/110 map CIELab into [-1, 1]


@dataclass(frozen=True)
class ColorizerConfig:
    in_channels: int = 3  # per stream: gray = L×3, map = palette RGB
    encoder: tuple[int, ...] = (32, 64, 128, 256, 512)
    decoder: tuple[int, ...] = (1024, 512, 256, 128, 64)
    width: float = 1.0  # multiplier on all depths; 1.0 is the paper's network (~28 MB in fp16)
    instance_norm: bool = True  # the paper's Fig. 5 ablation switches this off
    negative_slope: float = 0.01  # LeakyReLU
    huber_delta: float = 1.0

    def scaled(self, depths: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(4, int(round(d * self.width))) for d in depths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ColorizerConfig:
        data = dict(data)
        for key in ("encoder", "decoder"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def double_conv(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(slope),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.LeakyReLU(slope),
    )


class SharedEncoder(nn.Module):
    """One encoder applied to both streams; returns the features of every level."""

    def __init__(self, cin: int, depths: tuple[int, ...], slope: float):
        super().__init__()
        self.blocks = nn.ModuleList()
        for depth in depths:
            self.blocks.append(double_conv(cin, depth, slope))
            cin = depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class ColorizationUNet(nn.Module):
    def __init__(self, config: ColorizerConfig = ColorizerConfig()):
        super().__init__()
        self.config = config
        enc, dec = config.scaled(config.encoder), config.scaled(config.decoder)
        if len(enc) != len(dec):
            raise ValueError("encoder and decoder need one depth per level")
        slope = config.negative_slope
        self.encoder = SharedEncoder(config.in_channels, enc, slope)
        # no affine parameters: the normalization only removes the gray image's own statistics
        self.norms = nn.ModuleList(
            nn.InstanceNorm2d(d, affine=False) if config.instance_norm else nn.Identity() for d in enc
        )
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        previous = dec[0]  # the bottleneck concatenation: gray + map at the deepest level
        for level in range(len(enc) - 2, -1, -1):
            out = dec[len(enc) - 1 - level]
            up = enc[level]  # brought up to the skip stream's depth
            self.ups.append(nn.ConvTranspose2d(previous, up, 2, 2))
            self.blocks.append(double_conv(up + 2 * enc[level], out, slope))
            previous = out
        self.head = nn.Conv2d(previous, 2, 1)

    def fuse(self, gray_features: torch.Tensor, map_features: torch.Tensor, level: int) -> torch.Tensor:
        return torch.cat([self.norms[level](gray_features), map_features], dim=1)

    def forward(self, gray: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """gray: N×3×H×W (L scaled to [-1, 1], repeated), semantic: N×3×H×W palette in [-1, 1]
        (zeros = no map); H, W multiples of 16 → ab N×2×H×W in [-1, 1]."""
        g = self.encoder(gray)
        s = self.encoder(semantic)  # same module, same weights
        levels = len(g)
        x = self.fuse(g[-1], s[-1], levels - 1)
        for i, level in enumerate(range(levels - 2, -1, -1)):
            x = self.ups[i](x)
            x = self.blocks[i](torch.cat([x, self.fuse(g[level], s[level], level)], dim=1))
        return torch.tanh(self.head(x))

    def loss(self, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(ab_pred, ab_true, delta=self.config.huber_delta)

    @staticmethod
    def pad_multiple() -> int:
        return 16  # four 2× poolings


def lab_to_inputs(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N×3×H×W float CIELab → (gray stream input N×3×H×W, ab target N×2×H×W), both in [-1, 1]."""
    gray = (lab[:, :1] / L_SCALE - 1).expand(-1, 3, -1, -1)
    return gray.contiguous(), lab[:, 1:] / AB_SCALE
