"""Deep Image Harmonization (Tsai, Shen, Lin, Sunkavalli, Lu, Yang; CVPR 2017).

The paper's network (Sec. 3.2, 3.3, Fig. 3), in the form of its released model
(``deploy_skip_all_512.prototxt`` of the authors' repository), which fixes what the text leaves open:

* input: the composite and its foreground mask, 4 channels, R×R (paper: 512×512);
* encoder: 4×4 convolutions with stride 2 and no pooling, each followed by batch normalization
  (+ scale) and ELU: 64, 64, 128, 128, 256, 256, 512 channels, 512×512 down to 4×4;
* bottleneck: a fully connected layer (``fc7``: 512·4·4 → 1024, linear) whose output is a 1024×1×1
  map, brought back to 4×4 by the first deconvolution;
* harmonization decoder: 4×4 deconvolutions with stride 2, each with batch normalization and ELU,
  mirroring the encoder's widths; a skip link from every encoder layer to the decoder layer of the
  same resolution, **added element-wise** after the decoder layer's ELU (the released model's
  ``Eltwise SUM``); a last deconvolution to RGB with no normalization or activation;
* scene-parsing decoder (Sec. 3.3): the same shape on the same encoder and fc code, with the same
  skip links, ending in per-pixel class scores at R×R;
* semantics into harmonization (Sec. 3.3): the parsing decoder's feature map at each resolution is
  concatenated to the harmonization decoder's map of that resolution before the next deconvolution,
  "except for the last layer which focuses on image reconstruction": we read that clause as the
  harmonization decoder's output layer, so the RGB layer sees only the harmonization features and
  the parsing decoder's finest map feeds the class scores alone (the with-semantics prototxt was
  not released, so this is our reading);
* loss (Eq. 3): L = λ1·L_rec + λ2·L_cro, L_rec the L2 reconstruction loss over the whole image
  (Eq. 1), L_cro the pixel-wise cross-entropy of scene parsing (Eq. 2).

Two measured deviations, off in the ``paper`` variants and on in ``small`` (see weights/dih-paper-small.md):
``residual`` predicts a correction added to the composite inside the mask (the background passes
through untouched, as the paper's users get anyway), and ``fg_normalized`` divides L_rec by the
foreground area instead of the image area, so a small object's error is not drowned by the
unchanged background (iDIH's MaskWeightedMSE). The paper reports a foreground-weighted loss gave
"similar" results; on a CPU budget the whole-image loss mostly teaches the identity (pilot without
parsing, 600 steps: validation fMSE 2189 with both deviations, 2489 without, input 2529).

``layout="v1"`` is this project's first implementation (concatenated skip links, the fc code
reshaped to a 4×4 map, an optional statistics head): it is not the paper's network and is kept
only so that the ``dih-small`` v1 weights load until they are retired.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = 255
LAYOUTS = ("released", "v1")
# Eq. 3's λ2 = 100 weighs the cross-entropy against Eq. 1's ½·Σ of squared errors on 0–255 pixels.
# Here L_rec is a mean over pixels of squared [0, 1] errors (no ½) and L_cro a mean over pixels, so
# the same balance is λ2 = 100 / (½·255²).
PAPER_LAMBDA_CRO = 100.0 / (0.5 * 255.0 ** 2)


@dataclass(frozen=True)
class DIHConfig:
    resolution: int = 512  # the paper's input size; the encoder ends at resolution / 2**len(channels)
    channels: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 512)
    fc_dim: int = 1024  # fc7 of the released model
    semantic: bool = True  # the scene-parsing decoder (False: the paper's "without semantics" ablation)
    parsing_classes: int = 33  # SIFT Flow's classes here (the paper: ADE20K's top 25)
    # Parsing scores at resolution / parsing_scale (paper: 1). At 2 the last parsing layer is a 1×1
    # convolution at half resolution, upsampled bilinearly (used by the v1 weights only).
    parsing_scale: int = 1
    lambda_rec: float = 1.0  # Eq. 3, λ1
    lambda_cro: float = PAPER_LAMBDA_CRO  # Eq. 3, λ2, in this code's loss units (see PAPER_LAMBDA_CRO)
    residual: bool = False
    fg_normalized: bool = False
    global_head: bool = False  # v1 only: a per-image affine colour map from fg/bg statistics
    min_fg_fraction: float = 0.01  # floor of the fg-normalized loss's denominator (fraction of pixels)
    layout: str = "released"

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
        # Configs written before ``layout`` existed (the dih-small v1 weights) all describe v1.
        known.setdefault("layout", "v1")
        return cls(**known)


PAPER = DIHConfig()
# The paper's structure at a quarter of the input side and half the widths, so that it trains on a
# 2-core CPU and ships well under 25 MB in fp16: 128² in, the encoder's first five widths halved
# (two layers fewer, so the fc still sees a 4×4 map), fc 512. It only has to predict the colour
# change, which the full-resolution path (core/harmonization/deep.py) re-applies to the photo.
SMALL = DIHConfig(resolution=128, channels=(32, 32, 64, 64, 128), fc_dim=512, residual=True,
                  fg_normalized=True, lambda_cro=1.0)
VARIANTS: dict[str, DIHConfig] = {
    "paper": PAPER,
    "paper-nosem": replace(PAPER, semantic=False),
    "small": SMALL,
    "small-nosem": replace(SMALL, semantic=False),
}


def down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ELU())


def up(cin: int, cout: int, last: bool = False, kernel: int = 4, stride: int = 2,
       padding: int = 1) -> nn.Module:
    if last:
        return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=padding)
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(cout), nn.ELU())


class DeepHarmonization(nn.Module):
    def __init__(self, config: DIHConfig = SMALL):
        super().__init__()
        s = config.bottleneck_size
        if s < 1 or config.resolution != s * 2 ** len(config.channels):
            raise ValueError(f"resolution {config.resolution} is not a multiple of 2**{len(config.channels)}")
        if config.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {config.layout!r}")
        if config.parsing_scale not in (1, 2):
            raise ValueError("parsing_scale must be 1 or 2")
        if config.global_head and (config.layout != "v1" or not config.residual):
            raise ValueError("global_head exists only in the v1 layout, with residual=True")
        self.config = config
        self.parsing_frozen = False
        chans = config.channels
        self.encoder = nn.ModuleList(
            down(cin, cout) for cin, cout in zip((4,) + chans[:-1], chans, strict=True))
        self.global_head = self.code_head = None
        if config.layout == "released":
            self._build_released()
        else:
            self._build_v1()
        # Skip links make the identity easy to represent; start the correction at zero (residual only).
        if config.residual:
            nn.init.zeros_(self.harmonization[-1].weight)
            nn.init.zeros_(self.harmonization[-1].bias)

    def _build_released(self) -> None:
        config, chans = self.config, self.config.channels
        s = config.bottleneck_size
        self.fc = nn.Sequential(nn.Linear(chans[-1] * s * s, config.fc_dim))  # fc7: linear, no BN/ELU

        def decoder(extra: tuple[int, ...], out: int, out_last: bool) -> nn.ModuleList:
            # Layer 0: the fc code (fc_dim×1×1) → the bottleneck's s×s map (the released deconv6 has
            # kernel 4, stride 2, no padding: 1×1 → 4×4; a kernel of s does the same for any s).
            layers = [up(config.fc_dim, chans[-1], kernel=s, stride=1, padding=0)]
            for i in range(len(chans) - 1, 0, -1):  # map at encoder level i → level i - 1
                layers.append(up(chans[i] + extra[i], chans[i - 1]))
            if out_last and config.parsing_scale == 2:
                layers.append(nn.Conv2d(chans[0] + extra[0], out, 1))
            else:
                layers.append(up(chans[0] + extra[0], out, last=True))
            return nn.ModuleList(layers)

        no_extra = (0,) * len(chans)
        self.parsing = decoder(no_extra, config.parsing_classes, True) if config.semantic else None
        # Parsing features join every harmonization deconvolution but the RGB output layer.
        self.harmonization = decoder((0,) + chans[1:] if config.semantic else no_extra, 3, False)

    def _build_v1(self) -> None:
        config, chans = self.config, self.config.channels
        s, depth = config.bottleneck_size, len(chans)
        if config.fc_dim % (s * s):
            raise ValueError(f"fc_dim {config.fc_dim} must be divisible by {s}×{s}")
        self.fc = nn.Sequential(nn.Linear(chans[-1] * s * s, config.fc_dim), nn.ELU())
        code = config.fc_dim // (s * s)
        out_chans = (3,) + chans[:-1]  # out_chans[k-1] = channels produced by layer k
        if config.semantic:
            self.parsing = nn.ModuleList(
                up(code if k == depth else out_chans[k] + chans[k - 1],
                   config.parsing_classes if k == 1 else out_chans[k - 1], last=k == 1)
                for k in range(depth, 0, -1))
            if config.parsing_scale == 2:
                self.parsing[-1] = nn.Conv2d(out_chans[1] + chans[0], config.parsing_classes, 1)
        else:
            self.parsing = None
        self.harmonization = nn.ModuleList(
            up((code if k == depth else out_chans[k] + chans[k - 1])
               + (out_chans[k] if config.semantic and k < depth else 0),
               out_chans[k - 1], last=k == 1)
            for k in range(depth, 0, -1))
        if config.global_head:
            self.global_head = StatisticsHead()
            self.code_head = nn.Linear(config.fc_dim, 12)
            nn.init.zeros_(self.code_head.weight)
            nn.init.zeros_(self.code_head.bias)

    def forward(self, composite: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """composite N×3×R×R in [0, 1], mask N×1×R×R in [0, 1] → {"image": N×3×R×R, "parsing": N×K×R×R}.

        ``image`` is the harmonized image itself (with ``residual`` the correction is already applied
        inside the mask): callers must not composite it with the mask again.
        """
        x = torch.cat([composite * 2 - 1, mask * 2 - 1], dim=1)
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        flat_code = self.fc(x.flatten(1))
        if self.config.layout == "released":
            h, logits = self._decode_released(flat_code, skips)
        else:
            h, logits = self._decode_v1(flat_code, skips)
        if logits is not None and self.config.parsing_scale != 1:
            logits = F.interpolate(logits, scale_factor=self.config.parsing_scale, mode="bilinear",
                                   align_corners=False)
        if self.global_head is not None:
            params = self.global_head(region_statistics(composite, mask)) + self.code_head(flat_code)
            h = h + apply_affine(params, composite) - composite
        if self.config.residual:
            image = composite + mask * h
        elif self.config.layout == "released":
            image = h * 0.5 + 0.5  # the released model's output is linear in the input's pixel space
        else:
            image = torch.tanh(h) * 0.5 + 0.5
        return {"image": image, "parsing": logits}

    def _decode_released(self, flat_code: torch.Tensor,
                         skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        code = flat_code[:, :, None, None]
        parsing_maps, logits = [], None
        if self.parsing is not None:
            p = code
            for i, layer in enumerate(self.parsing[:-1]):
                p = layer(p) + skips[-1 - i]
                parsing_maps.append(p)
            logits = self.parsing[-1](p)
        h = code
        for i, layer in enumerate(self.harmonization[:-1]):
            if i > 0 and parsing_maps:
                h = torch.cat([h, parsing_maps[i - 1]], dim=1)
            h = layer(h) + skips[-1 - i]
        return self.harmonization[-1](h), logits

    def _decode_v1(self, flat_code: torch.Tensor,
                   skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.config.bottleneck_size
        code = flat_code.view(flat_code.shape[0], -1, s, s)
        parsing_maps, logits = [], None
        if self.parsing is not None:
            p = code
            for i, layer in enumerate(self.parsing):
                p = layer(p if i == 0 else torch.cat([p, skips[-1 - i]], dim=1))
                parsing_maps.append(p)
            logits = parsing_maps.pop()  # the last parsing layer's scores are not fed across
        h = code
        for i, layer in enumerate(self.harmonization):
            parts = [h] if i == 0 else [h, skips[-1 - i]]
            if i > 0 and parsing_maps:
                parts.append(parsing_maps[i - 1])
            h = layer(torch.cat(parts, dim=1))
        return h, logits

    def freeze_parsing(self) -> None:
        """Stage two of the paper's schedule: the parsing decoder is fixed while the rest is tuned.

        Its weights stop learning and its batch normalization uses its running statistics, now and
        after every later ``train()`` call, so the features fed to the harmonization decoder stay those
        that stage one learned."""
        if self.parsing is None:
            return
        for p in self.parsing.parameters():
            p.requires_grad_(False)
        self.parsing_frozen = True
        self.parsing.eval()

    def train(self, mode: bool = True) -> DeepHarmonization:
        super().train(mode)
        if self.parsing is not None and self.parsing_frozen:
            self.parsing.eval()
        return self


class StatisticsHead(nn.Module):
    """v1 only: per-image affine colour map (3×3 matrix − I, offset) from fg/bg colour statistics."""

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
