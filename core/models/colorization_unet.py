"""Semantic-driven colorization network of Ho et al. (two-stream U-Net), and a pretrained-encoder variant.

**The paper's network** (``backbone=""``). The gray image and its semantic map pass through ONE encoder
(shared weights). At every level the gray stream's features are instance-normalized (their per-image
statistics carry the photo's brightness and contrast, which the map does not have), then concatenated
with the map stream's features; those concatenations are the skips, and the deepest one is the decoder's
input. Fig. 4: a layer is two 3×3 convolutions, each followed by LeakyReLU(0.01); in the encoder the
first convolution has stride 2 (except in the first layer), in the decoder the first is a 3×3 transposed
convolution with stride 2. Encoder depths [32, 64, 128, 256, 512]; the decoder works on
[1024, 512, 256, 128, 64] channels (1024 = 512 gray + 512 map at the bottleneck; each decoder layer brings
the previous one up, concatenates the skip and narrows to the listed depth). ``sampling="pooled"`` is the
layout of the first weights (2×2 max-pool, 2×2 transposed convolution), kept so they still load.
The loss is Eq. 1, Huber with δ = 1 **in CIELab ab units** (the reference implementation's scale); on ab
scaled to [-1, 1] the same δ would never leave the quadratic branch, an L2 loss that pulls colours gray.
Instance norm makes the statistics depend on the bottleneck's size, so training crops equal the size the
pipeline runs the model at (``input_size`` in the manifest = the training crop).

**Pretrained variant** (``backbone="efficientnet-lite0"``, beyond the paper). The gray photo's features
come from the frozen ImageNet EfficientNet-Lite0 (strides 4…32); the map enters as class fractions
(one-hot, area-pooled to every level, embedded by a 1×1 convolution) beside the features at each decoder
level, so a repainted map still changes the colours. The output is at stride 4, upsampled bilinearly.
With ``head="bins"`` it scores ab bins (10-unit grid, the bins the training photos use) and returns the
annealed mean (softmax at temperature ``temperature``) — Zhang et al. 2016's recipe against gray averages;
with ``head="regression"`` it regresses ab (Huber, δ in ab units).

Interface of both: gray = L/50 − 1 repeated to 3 channels, map = its palette rendering in [0, 1]
(core.colorization.palette.map_input; zeros = all unlabeled = no map) → ab/110 at the input's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.colorization.palette import class_colors
from core.imaging.color import lab_to_rgb_torch
from core.models.efficientnet_lite import EfficientNetLite0, tap_widths

L_SCALE, AB_SCALE = 50.0, 110.0  # L/50 - 1 and ab/110 map CIELab into [-1, 1]
LITE_TAPS = ("stride4", "stride8", "stride16", "stride32")
LITE_WIDTHS = tap_widths("lite0", LITE_TAPS)
BIN_STEP = 10.0  # ab units between bin centres (Zhang et al. 2016)
CHROMA_SCALES = torch.linspace(0, 1.6, 17)  # candidate s of the chroma_bonus decoding (0 = gray)


@dataclass(frozen=True)
class ColorizerConfig:
    in_channels: int = 3  # per stream: gray = L×3, map = palette RGB
    encoder: tuple[int, ...] = (32, 64, 128, 256, 512)
    decoder: tuple[int, ...] = (1024, 512, 256, 128, 64)
    width: float = 1.0  # multiplier on all depths; 1.0 is the paper's network (~28 MB in fp16)
    instance_norm: bool = True  # the paper's Fig. 5 ablation switches this off
    negative_slope: float = 0.01  # LeakyReLU
    huber_delta: float = 1.0  # in ab units (CIELab), Eq. 1
    sampling: str = "strided"  # Fig. 4; "pooled" = the first weights' max-pool layout
    backbone: str = ""  # "" = the paper's encoder; "efficientnet-lite0" = the frozen pretrained one
    map_classes: int = 34  # classes the pretrained variant tells apart in the map (palette ids)
    map_embedding: int = 32
    head: str = "regression"  # pretrained variant: "regression" or "bins"
    ab_bins: int = 0  # number of ab bins ("bins" head); their centres are a buffer in the weights
    temperature: float = 0.38  # annealed mean of the "bins" head
    # "bins" head: share of the training's class rebalancing taken back at inference (logits − α·log w):
    # 0 keeps the rebalanced (vivid, rare-colour-heavy) distribution, 1 the photos' own frequencies
    prior_correction: float = 0.0
    # "bins" head: how much chroma the output gets along the annealed mean's hue. None = the annealed mean
    # itself. A number λ = the chroma s·|m| on the ray s·m (s ∈ [0, CHROMA_SCALE_MAX]) minimising
    # E_p|s·m − c| − λ·s·|m| under the photos' own distribution p (rebalancing fully taken back): λ = 0 is
    # the expected-ΔE-optimal point on the ray, gray included, so colour goes where the model's belief
    # agrees on a hue and stays out where it is split (clothes); λ > 0 buys chroma at λ expected ΔE a unit
    chroma_bonus: float | None = None

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


def double_conv(cin: int, cout: int, slope: float, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(slope),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.LeakyReLU(slope),
    )


class SharedEncoder(nn.Module):
    """One encoder applied to both streams; returns the features of every level."""

    def __init__(self, cin: int, depths: tuple[int, ...], slope: float, strided: bool = True):
        super().__init__()
        self.strided = strided
        self.blocks = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.blocks.append(double_conv(cin, depth, slope, 2 if strided and i else 1))
            cin = depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i and not self.strided:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


def _cbr(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return x if x.shape[-2:] == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                               align_corners=False)


class ColorizationUNet(nn.Module):
    def __init__(self, config: ColorizerConfig = ColorizerConfig()):
        super().__init__()
        self.config = config
        if config.sampling not in ("strided", "pooled"):
            raise ValueError(f"unknown sampling '{config.sampling}'")
        if config.backbone:
            self._build_pretrained(config)
        else:
            self._build_paper(config)

    # ---- the paper's two-stream U-Net ----
    def _build_paper(self, config: ColorizerConfig) -> None:
        enc, dec = config.scaled(config.encoder), config.scaled(config.decoder)
        if len(enc) != len(dec):
            raise ValueError("encoder and decoder need one depth per level")
        slope, strided = config.negative_slope, config.sampling == "strided"
        self.encoder = SharedEncoder(config.in_channels, enc, slope, strided)
        # no affine parameters: the normalization only removes the gray image's own statistics
        self.norms = nn.ModuleList(
            nn.InstanceNorm2d(d, affine=False) if config.instance_norm else nn.Identity() for d in enc
        )
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        previous = dec[0]  # the bottleneck concatenation: gray + map at the deepest level
        for level in range(len(enc) - 2, -1, -1):
            out = dec[len(enc) - 1 - level]
            up = enc[level]  # brought up to the skip stream's depth
            if strided:  # Fig. 4's DL: a 3×3 transposed convolution (stride 2) and its LeakyReLU
                self.ups.append(nn.Sequential(nn.ConvTranspose2d(previous, up, 3, 2, 1, output_padding=1),
                                              nn.LeakyReLU(slope)))
            else:
                self.ups.append(nn.ConvTranspose2d(previous, up, 2, 2))
            self.blocks.append(double_conv(up + 2 * enc[level], out, slope))
            previous = out
        self.head = nn.Conv2d(previous, 2, 1)

    def fuse(self, gray_features: torch.Tensor, map_features: torch.Tensor, level: int) -> torch.Tensor:
        return torch.cat([self.norms[level](gray_features), map_features], dim=1)

    def _forward_paper(self, gray: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        g = self.encoder(gray)
        s = self.encoder(semantic)  # same module, same weights
        levels = len(g)
        x = self.fuse(g[-1], s[-1], levels - 1)
        for i, level in enumerate(range(levels - 2, -1, -1)):
            x = self.ups[i](x)
            x = self.blocks[i](torch.cat([x, self.fuse(g[level], s[level], level)], dim=1))
        return torch.tanh(self.head(x))

    # ---- the pretrained-encoder variant ----
    def _build_pretrained(self, config: ColorizerConfig) -> None:
        if config.backbone != "efficientnet-lite0":
            raise ValueError(f"unknown backbone '{config.backbone}'")
        if config.head not in ("regression", "bins") or (config.head == "bins" and config.ab_bins < 2):
            raise ValueError("head must be 'regression' or 'bins' with ab_bins ≥ 2")
        backbone = EfficientNetLite0()
        # only the stages up to stride 32 are used: the classifier end is not part of this model
        del backbone._conv_head, backbone._bn1, backbone._fc
        # eval from the start, not only after .train(): a fresh module is in training mode, and features
        # computed then use each batch's BatchNorm statistics and overwrite ImageNet's running ones (the
        # first colorizer-lite0 cache was built that way: 8 658 views of drift, training features ≠ inference)
        self.backbone = backbone.requires_grad_(False).eval()
        e = config.map_embedding
        self.map_embed = nn.Conv2d(config.map_classes, e, 1)
        self.context = nn.Sequential(nn.Linear(LITE_WIDTHS["stride32"], 160), nn.ReLU(inplace=True))
        self.top = _cbr(LITE_WIDTHS["stride32"] + e, 160, 1)
        self.up16 = _cbr(160 + LITE_WIDTHS["stride16"] + e, 128, 3)
        self.up8 = nn.Sequential(_cbr(128 + LITE_WIDTHS["stride8"] + e, 96, 3), _cbr(96, 96, 3))
        self.up4 = nn.Sequential(_cbr(96 + LITE_WIDTHS["stride4"] + e + 1, 48, 3), _cbr(48, 48, 3))
        outputs = config.ab_bins if config.head == "bins" else 2
        self.out = nn.Conv2d(48, outputs, 1)
        self.register_buffer("palette", torch.from_numpy(
            class_colors(config.map_classes).astype(np.float32) / 255), persistent=False)
        if config.head == "bins":
            self.register_buffer("ab_centers", torch.zeros(config.ab_bins, 2))
            self.register_buffer("ab_log_weights", torch.zeros(config.ab_bins))  # log rebalancing weights

    def train(self, mode: bool = True) -> ColorizationUNet:
        super().train(mode)
        if self.config.backbone:
            self.backbone.eval()  # frozen: ImageNet's BatchNorm statistics stay
        return self

    def map_onehot(self, semantic: torch.Tensor) -> torch.Tensor:
        """Palette rendering N×3×H×W in [0, 1] → class one-hot N×K×H×W (nearest palette colour)."""
        distance = ((semantic[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)
        return F.one_hot(distance.argmin(1), self.config.map_classes).permute(0, 3, 1, 2).float()

    @torch.no_grad()
    def backbone_features(self, gray: torch.Tensor) -> dict[str, torch.Tensor]:
        """gray N×C×H×W (L/50 − 1 in channel 0) → the frozen encoder's features of the gray photo."""
        lightness = (gray[:, :1] + 1) * L_SCALE
        rgb = lab_to_rgb_torch(torch.cat([lightness, torch.zeros_like(lightness).expand(-1, 2, -1, -1)], 1))
        return self.backbone.features(rgb.clamp(0, 1), LITE_TAPS)

    def decode(self, features: dict[str, torch.Tensor], lightness: torch.Tensor,
               onehot4: torch.Tensor) -> torch.Tensor:
        """Features, L/50 − 1 at stride 4 (N×1), map class fractions at stride 4 (N×K) → logits or
        ab/110 at stride 4. Training calls this on cached features."""
        s4, s8, s16, s32 = (features[t] for t in LITE_TAPS)
        embedded = self.map_embed(onehot4)

        def with_map(x):
            return torch.cat([x, F.adaptive_avg_pool2d(embedded, x.shape[-2:])], 1)

        x = self.top(with_map(s32)) + self.context(s32.mean(dim=(2, 3)))[..., None, None]
        x = self.up16(torch.cat([_resize(x, s16.shape[-2:]), with_map(s16)], 1))
        x = self.up8(torch.cat([_resize(x, s8.shape[-2:]), with_map(s8)], 1))
        x = self.up4(torch.cat([_resize(x, s4.shape[-2:]), with_map(s4), lightness], 1))
        return self.out(x)

    def to_ab(self, output: torch.Tensor) -> torch.Tensor:
        """decode()'s output → ab/110 (the bins decoded as the config says, or the regressed value)."""
        if self.config.head == "bins":
            c = self.config
            return decode_bins(output, self.ab_centers, self.ab_log_weights, c.temperature, c.prior_correction,
                               c.chroma_bonus) / AB_SCALE
        return output

    def scores(self, gray: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """Pretrained variant: forward()'s inputs → decode()'s output at stride 4 (bin scores or ab/110)."""
        features = self.backbone_features(gray)
        size4 = features["stride4"].shape[-2:]
        onehot4 = F.adaptive_avg_pool2d(self.map_onehot(semantic), size4)
        lightness4 = F.adaptive_avg_pool2d(gray[:, :1], size4)
        return self.decode(features, lightness4, onehot4)

    def _forward_pretrained(self, gray: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return _resize(self.to_ab(self.scores(gray, semantic)), gray.shape[-2:]).clamp(-1, 1)

    def forward(self, gray: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        """gray: N×3×H×W (L scaled to [-1, 1], repeated), semantic: N×3×H×W palette in [0, 1]
        (zeros = no map); H, W multiples of 16 → ab N×2×H×W in [-1, 1] (ab/110)."""
        if self.config.backbone:
            return self._forward_pretrained(gray, semantic)
        return self._forward_paper(gray, semantic)

    def loss(self, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        """Eq. 1 on ab/110 inputs, measured in ab units (δ = ``huber_delta`` ab units)."""
        return F.huber_loss(ab_pred * AB_SCALE, ab_true * AB_SCALE, delta=self.config.huber_delta)

    def pad_multiple(self) -> int:
        return 32 if self.config.backbone else 16  # the coarsest level's stride


def ab_grid() -> torch.Tensor:
    """All candidate bin centres: ab on a 10-unit grid over [-110, 110]² (23² = 529)."""
    axis = torch.arange(-110.0, 110.0 + 1, BIN_STEP)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


def lab_to_inputs(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N×3×H×W float CIELab → (gray stream input N×3×H×W, ab target N×2×H×W), both in [-1, 1]."""
    gray = (lab[:, :1] / L_SCALE - 1).expand(-1, 3, -1, -1)
    return gray.contiguous(), lab[:, 1:] / AB_SCALE


def decode_bins(logits: torch.Tensor, centers: torch.Tensor, log_weights: torch.Tensor, temperature: float,
                prior_correction: float, chroma_bonus: float | None) -> torch.Tensor:
    """N×Q×h×w bin scores → N×2×h×w ab: the annealed mean (softmax of (scores − α·log w)/T), or with
    ``chroma_bonus`` its hue at the chroma ColorizerConfig.chroma_bonus describes."""
    shifted = logits - prior_correction * log_weights[:, None, None]
    annealed = torch.einsum("nqhw,qc->nchw", torch.softmax(shifted / temperature, dim=1), centers)
    if chroma_bonus is None:
        return annealed
    # the photos' own distribution: the training's rebalancing weights taken back in full
    p = torch.softmax(logits - log_weights[:, None, None], dim=1)
    # |s·m − c|² = s²|m|² − 2s m·c + |c|², so every s costs one pass over the bins
    mc = torch.einsum("nchw,qc->nqhw", annealed, centers)
    mm = (annealed * annealed).sum(1)
    cc = (centers * centers).sum(1)[:, None, None]
    best = best_scale = None
    for scale in CHROMA_SCALES.tolist():
        distance = (scale * scale * mm[:, None] - 2 * scale * mc + cc).clamp_min(0).sqrt()
        risk = (p * distance).sum(1) - chroma_bonus * scale * mm.sqrt()
        if best is None:
            best, best_scale = risk, torch.full_like(risk, scale)
        else:
            better = risk < best
            best, best_scale = torch.where(better, risk, best), torch.where(better, scale, best_scale)
    return annealed * best_scale[:, None]

