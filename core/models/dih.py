"""Deep Image Harmonization (Tsai, Shen, Lin, Sunkavalli, Lu, Yang; CVPR 2017).

An encoder–decoder over the composite and its foreground mask (4 input channels):

* encoder: 4×4 convolutions with stride 2, each followed by batch normalization and ELU
  (the released model: 64, 64, 128, 128, 256, 256, 512 channels from 512×512 down to 4×4),
  then a fully connected layer (1024 = 64×4×4, reshaped back into a 4×4 map);
* harmonization decoder: 4×4 stride-2 deconvolutions with a skip link from every encoder layer
  of the same resolution (concatenation), the last one producing RGB;
* scene-parsing decoder (Sec. 3.3): the same shape on the same encoder and bottleneck, ending in
  per-pixel class scores; its feature maps are concatenated into the harmonization decoder at
  every layer but the last, so semantics steer the colour change;
* loss (Eq. 3): L = λ1·L_rec + λ2·L_cro, L_rec the Euclidean reconstruction loss and L_cro the
  pixel-wise cross-entropy of scene parsing.

Measured additions (off in the ``paper`` variants): ``residual`` predicts a correction that is
added to the composite inside the mask (background passes through untouched, as iDIH's image
fusion), ``fg_normalized`` divides the reconstruction loss by the foreground area instead of
the image area (iDIH's MaskWeightedMSE) so small objects count as much as large ones, and
``global_head`` adds a per-image affine colour map predicted from the foreground's and background's
colour statistics (a small MLP, pre-trained alone in seconds) plus a linear term of the fc code (the
scene's semantics); the decoder's per-pixel correction refines it. On a CPU budget the plain network
plateaus at a mean correction, while this head gives the fg/bg comparison that harmonization
hinges on a direct path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = 255


@dataclass(frozen=True)
class DIHConfig:
    resolution: int = 512  # the paper's input size; the encoder ends at resolution / 2**len(channels)
    channels: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 512)
    fc_dim: int = 1024  # the fully connected bottleneck, reshaped to (fc_dim / s², s, s)
    semantic: bool = True  # the scene-parsing decoder (False: the paper's "without semantics" ablation)
    parsing_classes: int = 33  # SIFT Flow's classes here (the released model used 25 + background)
    # Parsing scores at resolution / parsing_scale (paper: 1). At 2 the last parsing layer is a 1×1
    # convolution at half resolution, upsampled bilinearly: it halves the CPU cost of the joint model,
    # and the scores are never fed to the harmonization decoder anyway.
    parsing_scale: int = 1
    lambda_rec: float = 1.0  # Eq. 3, λ1
    # Eq. 3, λ2. The paper balances the two terms for Caffe's 0–255 Euclidean loss; with pixels in
    # [0, 1] this weight keeps the cross-entropy near a tenth of the reconstruction loss at the start.
    lambda_cro: float = 0.01
    residual: bool = False
    fg_normalized: bool = False
    global_head: bool = False
    min_fg_fraction: float = 0.01  # floor of the fg-normalized loss's denominator (fraction of pixels)

    @property
    def bottleneck_size(self) -> int:
        return self.resolution // 2 ** len(self.channels)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DIHConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        return cls(**known)


PAPER = DIHConfig()
# Narrow and 128² so that it trains on a 2-core CPU and ships under 25 MB in fp16; it only has to
# predict the colour change, which the full-resolution path (core/harmonization/deep.py) re-applies.
SMALL = DIHConfig(resolution=128, channels=(32, 32, 64, 64, 128), fc_dim=512, residual=True,
                  fg_normalized=True, parsing_scale=2, global_head=True)
VARIANTS: dict[str, DIHConfig] = {
    "paper": PAPER,
    "paper-nosem": replace(PAPER, semantic=False),
    "small": SMALL,
    "small-nosem": replace(SMALL, semantic=False),
}


def down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ELU())


def up(cin: int, cout: int, last: bool = False) -> nn.Module:
    if last:
        return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ELU())


class DeepHarmonization(nn.Module):
    def __init__(self, config: DIHConfig = SMALL):
        super().__init__()
        s = config.bottleneck_size
        if s < 1 or config.resolution != s * 2 ** len(config.channels):
            raise ValueError(f"resolution {config.resolution} is not a multiple of 2**{len(config.channels)}")
        if config.fc_dim % (s * s):
            raise ValueError(f"fc_dim {config.fc_dim} must be divisible by {s}×{s}")
        self.config = config
        chans = config.channels
        depth = len(chans)
        self.encoder = nn.ModuleList(
            down(cin, cout) for cin, cout in zip((4,) + chans[:-1], chans, strict=True))
        self.fc = nn.Sequential(nn.Linear(chans[-1] * s * s, config.fc_dim), nn.ELU())
        code = config.fc_dim // (s * s)
        # Decoder layer k (k = depth … 1) turns the map at resolution R/2**k into R/2**(k-1).
        out_chans = (3,) + chans[:-1]  # out_chans[k-1] = channels produced by layer k
        if config.semantic:
            self.parsing = nn.ModuleList(
                up(code if k == depth else out_chans[k] + chans[k - 1],
                   config.parsing_classes if k == 1 else out_chans[k - 1], last=k == 1)
                for k in range(depth, 0, -1))
            if config.parsing_scale == 2:
                self.parsing[-1] = nn.Conv2d(out_chans[1] + chans[0], config.parsing_classes, 1)
            elif config.parsing_scale != 1:
                raise ValueError("parsing_scale must be 1 or 2")
        else:
            self.parsing = None
        self.harmonization = nn.ModuleList(
            up((code if k == depth else out_chans[k] + chans[k - 1])
               + (out_chans[k] if config.semantic and k < depth else 0),
               out_chans[k - 1], last=k == 1)
            for k in range(depth, 0, -1))
        # Skip links make the identity easy to represent; start the correction at zero (residual only).
        if config.residual:
            nn.init.zeros_(self.harmonization[-1].weight)
            nn.init.zeros_(self.harmonization[-1].bias)
        if config.global_head:
            if not config.residual:
                raise ValueError("global_head needs residual=True")
            self.global_head = StatisticsHead()
            self.code_head = nn.Linear(config.fc_dim, 12)
            nn.init.zeros_(self.code_head.weight)
            nn.init.zeros_(self.code_head.bias)
        else:
            self.global_head = self.code_head = None

    def forward(self, composite: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """composite N×3×R×R in [0, 1], mask N×1×R×R in [0, 1] → {"image": N×3×R×R, "parsing": N×K×R×R}."""
        x = torch.cat([composite * 2 - 1, mask * 2 - 1], dim=1)
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        s = self.config.bottleneck_size
        flat_code = self.fc(x.flatten(1))
        code = flat_code.view(x.shape[0], -1, s, s)

        parsing_maps, logits = [], None
        if self.parsing is not None:
            p = code
            for i, layer in enumerate(self.parsing):
                p = layer(p if i == 0 else torch.cat([p, skips[-1 - i]], dim=1))
                parsing_maps.append(p)
            logits = parsing_maps.pop()  # the last parsing layer's scores are not fed across
            if self.config.parsing_scale != 1:
                logits = F.interpolate(logits, scale_factor=self.config.parsing_scale, mode="bilinear",
                                       align_corners=False)

        h = code
        for i, layer in enumerate(self.harmonization):
            parts = [h] if i == 0 else [h, skips[-1 - i]]
            if i > 0 and parsing_maps:
                parts.append(parsing_maps[i - 1])
            h = layer(torch.cat(parts, dim=1))
        if self.global_head is not None:
            params = self.global_head(region_statistics(composite, mask)) + self.code_head(flat_code)
            h = h + apply_affine(params, composite) - composite
        if self.config.residual:
            image = composite + mask * h
        else:
            image = torch.tanh(h) * 0.5 + 0.5
        return {"image": image, "parsing": logits}

    def freeze_parsing(self) -> None:
        """Stage two of the paper's schedule: the parsing decoder stays fixed while harmonization is tuned."""
        if self.parsing is not None:
            for p in self.parsing.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepHarmonization:
        super().train(mode)
        if self.parsing is not None and not any(p.requires_grad for p in self.parsing.parameters()):
            self.parsing.eval()  # frozen batch-norm statistics too
        return self


class StatisticsHead(nn.Module):
    """Per-image affine colour map (3×3 matrix − I, offset) from fg/bg colour statistics; starts as identity."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(12, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 12))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, statistics: torch.Tensor) -> torch.Tensor:
        return self.mlp(statistics)


def apply_affine(params: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """N×12 parameters (matrix − I row-major, offset) applied to N×3×H×W colours."""
    matrix = params[:, :9].view(-1, 3, 3) + torch.eye(3, device=params.device, dtype=params.dtype)
    return torch.einsum("nij,njhw->nihw", matrix, image) + params[:, 9:, None, None]


def region_statistics(composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean and standard deviation of each channel inside and outside the mask (N×12)."""
    out = []
    for weight in (mask, 1 - mask):
        total = weight.sum(dim=(2, 3)).clamp_min(1.0)
        mean = (composite * weight).sum(dim=(2, 3)) / total
        var = ((composite - mean[..., None, None]) ** 2 * weight).sum(dim=(2, 3)) / total
        out += [mean, var.clamp_min(1e-6).sqrt()]
    return torch.cat(out, dim=1)


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        config: DIHConfig) -> torch.Tensor:
    """L_rec: squared error summed over channels, per image averaged over the image (paper) or the
    foreground (fg_normalized), then averaged over the batch."""
    err = ((output - target) ** 2).sum(dim=1).flatten(1).sum(dim=1)
    pixels = target.shape[-1] * target.shape[-2]
    if config.fg_normalized:
        area = mask.flatten(1).sum(dim=1).clamp_min(config.min_fg_fraction * pixels)
    else:
        area = torch.full_like(err, float(pixels))
    return (err / area).mean()


def joint_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor,
               labels: torch.Tensor | None, config: DIHConfig,
               lambda_cro: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3: L = λ1·L_rec + λ2·L_cro (L_cro only on pixels with a known class)."""
    rec = reconstruction_loss(outputs["image"], target, mask, config)
    total = config.lambda_rec * rec
    cro = torch.zeros((), device=target.device)
    weight = config.lambda_cro if lambda_cro is None else lambda_cro
    if outputs.get("parsing") is not None and labels is not None and weight > 0:
        if (labels != IGNORE_LABEL).any():
            cro = F.cross_entropy(outputs["parsing"], labels.long(), ignore_index=IGNORE_LABEL)
            total = total + weight * cro
    return total, {"rec": float(rec.detach()), "cro": float(cro.detach())}


def build(config: DIHConfig | str) -> DeepHarmonization:
    return DeepHarmonization(VARIANTS[config] if isinstance(config, str) else config)
