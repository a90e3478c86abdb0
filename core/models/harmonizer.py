"""A learned global colour transform for harmonization, predicted from pretrained image features.

In the line of Harmonizer (Ke, Sun, Li, Yan, Lau; ECCV 2022): rather than regenerating the pixels of the
foreground (Deep Image Harmonization's encoder–decoder), a network looks at the composite and predicts the
arguments of a small white-box colour transform, which is then applied to the foreground at any
resolution. Our form, written for a 2-core CPU:

* description (``describe``): the frozen ImageNet EfficientNet-Lite0 (``core/models/efficientnet_lite.py``)
  runs on the composite; its stride-16 and stride-32 feature maps are averaged over three regions:
  the foreground (mask × alpha), the background, and a ring of background around the foreground (the
  light right next to the object); beside them, colour statistics of the same three regions (CIELab
  mean and deviation, luminance quantiles). ``use_backbone=False`` keeps only the statistics: the
  ablation without the pretrained prior.
* prediction (``TransformPredictor``): an MLP from the standardized description to the transform's arguments,
  initialized so that the transform starts as the identity.
* transform (``apply_transform``): out = curve_c( M·x + b ) on display RGB in [0, 1], M = I + ΔM a 3×3
  colour matrix (white balance, saturation, channel mixing), b an offset, curve_c a monotone piecewise
  linear tone curve per channel with ``curve_knots`` segments (exposure, contrast, shadows and
  highlights, split toning). It is global, so the full-resolution path applies it pixel by pixel
  (background bit-exact, soft masks) and its cost is that of a colour lookup.

Loss: mean squared error on the foreground, normalized by its area (iDIH's foreground-normalized MSE),
between the transformed composite blended with the mask and the untouched photo.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.imaging.color import rgb_to_lab_torch
from core.models.efficientnet_lite import EfficientNetLite0, tap_widths

REGIONS = ("foreground", "background", "ring")
LUMINANCE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STATISTICS_PER_REGION = 6 + len(LUMINANCE_QUANTILES)  # Lab mean, Lab deviation, L quantiles
STATISTICS_SIDE = 128
TAP_WIDTHS = tap_widths("lite0", ("stride8", "stride16", "stride32"))


@dataclass(frozen=True)
class HarmonizerConfig:
    resolution: int = 256  # the backbone sees about resolution² pixels (aspect kept at inference)
    taps: tuple[str, ...] = ("stride16", "stride32")
    use_backbone: bool = True
    hidden: int = 256
    curve_knots: int = 8
    ring_fraction: float = 0.08  # width of the ring around the foreground, as a fraction of the image side
    dropout: float = 0.1

    @property
    def description_size(self) -> int:
        features = sum(TAP_WIDTHS[t] for t in self.taps) if self.use_backbone else 0
        return len(REGIONS) * (features + STATISTICS_PER_REGION)

    @property
    def parameter_count(self) -> int:
        return 12 + 3 * self.curve_knots

    def to_dict(self) -> dict:
        data = asdict(self)
        data["taps"] = list(self.taps)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HarmonizerConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "taps" in known:
            known["taps"] = tuple(known["taps"])
        return cls(**known)


def region_weights(mask: torch.Tensor, alpha: torch.Tensor | None, ring_fraction: float) -> torch.Tensor:
    """N×3×H×W weights of the foreground, the background and the ring of background around the object."""
    visible = alpha if alpha is not None else torch.ones_like(mask)
    radius = max(1, round(ring_fraction * max(mask.shape[-2:])))
    # A square dilation as two 1-D passes (a 41×41 window in one pass costs seconds per batch on a CPU).
    grown = F.max_pool2d(mask, (1, 2 * radius + 1), stride=1, padding=(0, radius))
    grown = F.max_pool2d(grown, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    ring = (grown - mask).clamp_min(0)
    return torch.cat([mask, 1 - mask, ring], dim=1) * visible


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values N×C×H×W, weights N×R×H×W (same or any size: resized to the values') → N×R×C."""
    if weights.shape[-2:] != values.shape[-2:]:
        weights = F.adaptive_avg_pool2d(weights, values.shape[-2:])
    total = weights.sum(dim=(2, 3)).clamp_min(1e-6)
    return torch.einsum("nchw,nrhw->nrc", values, weights) / total[..., None]


def colour_statistics(rgb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """N×R×S: per region, Lab mean and deviation (L/100, ab/100) and weighted luminance quantiles."""
    lab = rgb_to_lab_torch(rgb) / 100.0
    mean = weighted_mean(lab, weights)
    second = weighted_mean(lab * lab, weights)
    deviation = (second - mean * mean).clamp_min(1e-8).sqrt()
    n, r = weights.shape[:2]
    lightness = lab[:, 0].reshape(n, 1, -1).expand(n, r, -1)
    order = lightness.argsort(dim=-1)
    sorted_l = lightness.gather(-1, order)
    cumulative = weights.reshape(n, r, -1).gather(-1, order).cumsum(-1)
    cumulative = cumulative / cumulative[..., -1:].clamp_min(1e-6)
    quantiles = []
    for q in LUMINANCE_QUANTILES:
        index = (cumulative < q).sum(-1, keepdim=True).clamp_max(sorted_l.shape[-1] - 1)
        quantiles.append(sorted_l.gather(-1, index))
    return torch.cat([mean, deviation, *quantiles], dim=-1)


def apply_transform(params: torch.Tensor, rgb: torch.Tensor, knots: int) -> torch.Tensor:
    """out = curve(M·x + b): params N×P, rgb N×3×H×W (or N×3×K pixels) in [0, 1]."""
    n = params.shape[0]
    matrix = torch.eye(3, device=params.device, dtype=params.dtype) + params[:, :9].reshape(n, 3, 3)
    offset = params[:, 9:12]
    flat = rgb.reshape(n, 3, -1)
    mixed = torch.einsum("nij,njk->nik", matrix, flat) + offset[..., None]
    return apply_curves(params[:, 12:].reshape(n, 3, knots), mixed).reshape(rgb.shape).clamp(0, 1)


def curve_points(raw: torch.Tensor) -> torch.Tensor:
    """N×3×K raw values → N×3×(K+1) curve values at the knots 0, 1/K, …, 1 (monotone; raw 0 is identity)."""
    knots = raw.shape[-1]
    steps = torch.exp(raw.clamp(-4, 4)) / knots
    return torch.cat([torch.zeros_like(steps[..., :1]), steps.cumsum(-1)], dim=-1)


def apply_curves(raw: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear curves through ``curve_points``; beyond [0, 1] the end segments continue."""
    knots = raw.shape[-1]
    points = curve_points(raw)
    position = values * knots
    segment = position.floor().clamp(0, knots - 1)
    fraction = position - segment
    index = segment.long()
    low = points.gather(-1, index)
    high = points.gather(-1, index + 1)
    return low + fraction * (high - low)


class TransformPredictor(nn.Module):
    """Description → transform arguments: the trained part (the backbone ships separately, frozen)."""

    def __init__(self, config: HarmonizerConfig):
        super().__init__()
        size = config.description_size
        # Standardization of the description, measured on the training set (saved with the weights).
        self.register_buffer("description_mean", torch.zeros(size))
        self.register_buffer("description_std", torch.ones(size))
        self.mlp = nn.Sequential(
            nn.Linear(size, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.parameter_count))
        nn.init.zeros_(self.mlp[-1].weight)  # start from the identity transform
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, description: torch.Tensor) -> torch.Tensor:
        return self.mlp((description - self.description_mean) / self.description_std)


class WhiteBoxHarmonizer(nn.Module):
    def __init__(self, config: HarmonizerConfig = HarmonizerConfig()):
        super().__init__()
        self.config = config
        self.backbone = EfficientNetLite0() if config.use_backbone else None
        if self.backbone is not None:
            self.backbone.requires_grad_(False)
        self.predictor = TransformPredictor(config)

    def train(self, mode: bool = True) -> WhiteBoxHarmonizer:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: ImageNet's BatchNorm statistics stay
        return self

    def describe(self, rgb: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """N×D description of a composite: rgb N×3×H×W in [0, 1], mask (and alpha) N×1×H×W."""
        weights = region_weights(mask, alpha, self.config.ring_fraction)
        # Statistics need no more than ~128² samples; the sort behind the quantiles is the costly part.
        factor = max(1, max(rgb.shape[-2:]) // STATISTICS_SIDE)
        small = (F.avg_pool2d(rgb, factor), F.avg_pool2d(weights, factor)) if factor > 1 else (rgb, weights)
        parts = [colour_statistics(*small)]
        if self.backbone is not None:
            with torch.no_grad():
                features = self.backbone.features(rgb, self.config.taps)
            parts += [weighted_mean(features[t], weights) for t in self.config.taps]
        return torch.cat(parts, dim=-1).flatten(1)

    def forward(self, rgb: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The transform's arguments (N×P) for each composite."""
        return self.predictor(self.describe(rgb, mask, alpha))


def foreground_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   min_fraction: float = 0.01) -> torch.Tensor:
    """Squared error summed over the foreground, divided by its area (not the image's)."""
    area = mask.sum(dim=(1, 2, 3)).clamp_min(min_fraction * mask[0].numel()) * 3
    return (((output - target) ** 2) * mask).sum(dim=(1, 2, 3)).div(area).mean()
