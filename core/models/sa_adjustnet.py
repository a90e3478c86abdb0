"""SA-AdjustNet: Nam & Kim, *Deep Semantics-Aware Photo Adjustment* (2017).

Per pixel x the network regresses a CIELab change from two features:

* colour feature f_clr(x): the pixel's Lab concatenated with the L2-normalized first-layer
  convolution response of the backbone (low-level, local);
* context feature f_cxt(x): a hypercolumn of three backbone stages, each L2-normalized, plus a ReNet
  module (four directional GRU sweeps, batch norm, 1×1 conv) for image-wide context, concatenated and
  squeezed with a 1×1 convolution.

Backbones (``SAAdjustConfig.backbone``): ``"resnet"`` — the paper's ImageNet ResNet-50 (its first three
residual stages, 256/512/1024 channels; ``ResNetConfig`` in ``resnet``), selectable but not trained here;
``"lite0"`` — the project's shared ImageNet EfficientNet-Lite0, frozen, tapped at strides 4, 8 and 16
(24/40/112 channels) with its stride-2 block as the first-layer feature. The frozen backbone's weights
stay in their own file (``weights/efficientnet-lite0-imagenet``) and are not copied into SA-AdjustNet's.

Two heads share these features:

* ``BilinearHead`` (Eq. 2): ŷ = tanh(Pᵀ(tanh(Uᵀf_clr + b) ∘ tanh(Vᵀf_cxt + c)) + d);
* ``SemanticMapHead`` (Eqs. 3–7): a per-pixel categorical p(k | x) over K presets (the *semantic
  adjustment map*) replaces f_cxt by a one-hot vector; each preset k gives g_k(x), Eq. 2 with context
  e_k. Training minimizes the expected loss Σₖ wₖ pₖ ℓ(gₖ, y) (Eqs. 4 and 7), whose loss terms are
  weighted by wₖ = α aₖ + (1 − α) (Eq. 5, α = 0.8), aₖ the moving average (momentum 0.9, Eq. 6) of the
  batches' normalized soft frequencies, so a rarely chosen preset's term weighs little and small classes
  can be discovered. Inference takes the argmax: the map is discrete, no re-weighting is involved, and a
  user's own map replaces it (Sec. 4.4).

The output is added to the input Lab (residual). Lab is scaled to about [-1, 1] (L/100, a/110, b/110),
the unit the Huber δ = 0.04 of Eq. 8 is measured in. Context features live at a reduced resolution and
are sampled bilinearly at pixel positions, so training draws 2 048 random pixels per image and inference
runs the per-pixel colour model at full resolution in chunks.

The shipped models train both heads on one shared context module (one training per style on a 2-core
CPU); the paper trained its variants separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch
from core.models.efficientnet_lite import EfficientNetLite0
from core.models.resnet import RESNET50, ResNet, ResNetConfig

LAB_SCALE = (100.0, 110.0, 110.0)
LITE0_FIRST, LITE0_TAPS = "stride2", ("stride4", "stride8", "stride16")
LITE0_FIRST_CHANNELS, LITE0_STAGE_CHANNELS = 16, (24, 40, 112)


@dataclass(frozen=True)
class SAAdjustConfig:
    backbone: str = "resnet"  # "resnet" (the paper: ImageNet ResNet-50, `resnet`) or "lite0" (frozen)
    resnet: ResNetConfig = RESNET50
    hypercolumn_stages: int = 3  # "the first three residual blocks"
    renet_hidden: int = 512  # GRU state per direction
    renet_out: int = 1024  # "spatial RNN features that have 1024 channels"
    context_dim: int = 512  # the 1×1 squeeze of the concatenated hypercolumn
    rank: int = 256  # low-rank bilinear dimension (U, V: → rank; P: rank → 3)
    presets: int = 2  # K of the semantic map; the paper: 2 / 4 / 2 for Pop-Out / Local Xpro / Watercolor
    weight_alpha: float = 0.8  # α of the loss-term weights wₖ = α aₖ + (1 − α) (Eq. 5)
    frequency_momentum: float = 0.9  # momentum of the moving-average soft frequencies aₖ (Eq. 6)
    huber_delta: float = 0.04  # Eq. 8, in scaled Lab units
    parse_weight: float = 0.01  # λ of the scene-parsing task (Eq. 9)
    parse_classes: int = 150  # SceneParse150
    sample_pixels: int = 2048  # sparse training: random pixels per image
    context_size: int = 512  # side of the square the backbone sees at inference and in training
    learning_rate: float = 1e-4  # Adam
    backbone_lr_scale: float = 0.5  # "the ResNet-50 layers are finetuned with 0.5x lower learning rate"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SAAdjustConfig:
        data = dict(data)
        resnet = data.pop("resnet", None)
        config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if resnet is not None:
            resnet = {k: tuple(v) if isinstance(v, list) else v for k, v in resnet.items()}
            config = replace(config, resnet=ResNetConfig(**resnet))
        return config


# Named variants: the paper's network, and the one the shipped weights were trained with on a 2-core CPU.
VARIANTS: dict[str, SAAdjustConfig] = {
    "paper": SAAdjustConfig(),
    "lite0": SAAdjustConfig(
        backbone="lite0", renet_hidden=64, renet_out=128, context_dim=128, rank=64, parse_classes=34,
        parse_weight=2e-4, context_size=224, learning_rate=1e-3, backbone_lr_scale=0.0,
    ),
}


# --- Lab scaling ---------------------------------------------------------------------------------


def scale_lab(lab: torch.Tensor, dim: int = -1) -> torch.Tensor:
    shape = [1] * lab.dim()
    shape[dim] = 3
    return lab / lab.new_tensor(LAB_SCALE).view(shape)


def unscale_lab(lab: torch.Tensor, dim: int = -1) -> torch.Tensor:
    shape = [1] * lab.dim()
    shape[dim] = 3
    return lab * lab.new_tensor(LAB_SCALE).view(shape)


# --- context module ------------------------------------------------------------------------------


class ReNet(nn.Module):
    """Visin et al.'s ReNet layer: a bidirectional GRU along rows (left→right, right→left), batch norm,
    then a bidirectional GRU along columns (top→bottom, bottom→top) of that result, batch norm, 1×1 conv.
    After both sweeps every output position has seen the whole feature map."""

    def __init__(self, channels: int, hidden: int, out: int):
        super().__init__()
        self.rows = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.bn_rows = nn.BatchNorm2d(2 * hidden)
        self.cols = nn.GRU(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.bn_cols = nn.BatchNorm2d(2 * hidden)
        self.project = nn.Conv2d(2 * hidden, out, 1)

    @staticmethod
    def _sweep(gru: nn.GRU, x: torch.Tensor, along_width: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        if along_width:
            seq = x.permute(0, 2, 3, 1).reshape(n * h, w, c)
            return gru(seq)[0].reshape(n, h, w, -1).permute(0, 3, 1, 2)
        seq = x.permute(0, 3, 2, 1).reshape(n * w, h, c)
        return gru(seq)[0].reshape(n, w, h, -1).permute(0, 3, 2, 1)

    def forward(self, x: torch.Tensor, return_sweeps: bool = False):
        """N×C×h×w → N×out×h×w; with ``return_sweeps`` also the two bidirectional sweeps (N×2H×h×w each:
        the first H channels run forward — left→right / top→bottom — the last H backward)."""
        horizontal = self.bn_rows(self._sweep(self.rows, x, along_width=True))
        vertical = self.bn_cols(self._sweep(self.cols, horizontal, along_width=False))
        out = self.project(vertical)
        return (out, horizontal, vertical) if return_sweeps else out


class L2Scale(nn.Module):
    """L2 normalization across channels with a learned per-channel scale (ParseNet), so features of
    different stages and magnitudes enter the hypercolumn on an equal footing."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(channels) ** 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, eps=1e-6) * self.scale.view(1, -1, 1, 1)


# --- regression heads ----------------------------------------------------------------------------


class BilinearHead(nn.Module):
    """Eq. 2: ŷ = tanh(Pᵀ(tanh(Uᵀf_clr + b) ∘ tanh(Vᵀf_cxt + c)) + d)."""

    def __init__(self, color_dim: int, context_dim: int, rank: int, out: int = 3):
        super().__init__()
        self.U = nn.Linear(color_dim, rank)  # bias = b
        self.V = nn.Linear(context_dim, rank)  # bias = c
        self.P = nn.Linear(rank, out)  # bias = d
        nn.init.normal_(self.P.weight, std=1e-3)  # start near the identity mapping (ŷ ≈ 0)
        nn.init.zeros_(self.P.bias)

    def forward(self, f_clr: torch.Tensor, f_cxt: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.P(torch.tanh(self.U(f_clr)) * torch.tanh(self.V(f_cxt))))


def huber_per_pixel(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 8 per element, averaged over the last (Lab) axis."""
    return F.huber_loss(pred, target, delta=delta, reduction="none").mean(-1)


class SemanticMapHead(nn.Module):
    """Eqs. 3–7, the semantic adjustment map.

    Eq. 3  p(k | x) = softmax_k(W f_cxt(x) + e)               (per-pixel categorical over K presets)
           g_k(x)   = tanh(Pᵀ(tanh(Uᵀf_clr + b) ∘ tanh(v_k + c)) + d)   (Eq. 2 with context e_k: v_k = Vᵀe_k)
    Eq. 4  L        = Σ_k p(k | x) ℓ(g_k(x), y)                (the exact expectation over K)
    Eq. 5  w_k      = α a_k + (1 − α)                          (α = 0.8)
    Eq. 6  a_k     ← m a_k + (1 − m) f_k,  f_k = mean_x p(k | x) / Σ_j mean_x p(j | x)   (m = 0.9)
    Eq. 7  L        = Σ_k w_k p(k | x) ℓ(g_k(x), y)
    At inference the map is the argmax one-hot of p (no weights): ŷ(x) = g_{argmax p}(x).
    """

    def __init__(self, color_dim: int, context_dim: int, rank: int, presets: int, alpha: float,
                 momentum: float, out: int = 3):
        super().__init__()
        self.classify = nn.Linear(context_dim, presets)
        self.U = nn.Linear(color_dim, rank)
        self.preset_codes = nn.Parameter(torch.randn(presets, rank) * 0.5)  # Vᵀ e_k for one-hot e_k
        self.c = nn.Parameter(torch.zeros(rank))
        self.P = nn.Linear(rank, out)
        nn.init.normal_(self.P.weight, std=1e-3)
        nn.init.zeros_(self.P.bias)
        self.alpha, self.momentum = alpha, momentum
        self.register_buffer("frequency", torch.full((presets,), 1.0 / presets))  # a_k

    @property
    def presets(self) -> int:
        return self.preset_codes.shape[0]

    def probabilities(self, f_cxt: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classify(f_cxt), dim=-1)  # Eq. 3

    def update_frequency(self, p: torch.Tensor) -> None:
        with torch.no_grad():  # Eq. 6
            batch = p.reshape(-1, p.shape[-1]).mean(0)
            batch = batch / batch.sum().clamp_min(1e-12)
            self.frequency.mul_(self.momentum).add_((1 - self.momentum) * batch)

    def loss_weights(self) -> torch.Tensor:
        return self.alpha * self.frequency + (1 - self.alpha)  # Eq. 5

    def presets_out(self, f_clr: torch.Tensor) -> torch.Tensor:
        """… × color_dim → … × K × 3: every preset's Lab change g_k."""
        h = torch.tanh(self.U(f_clr)).unsqueeze(-2)
        return torch.tanh(self.P(h * torch.tanh(self.preset_codes + self.c)))

    def expected_loss(self, p: torch.Tensor, per_preset: torch.Tensor, change: torch.Tensor,
                      delta: float) -> torch.Tensor:
        """Eq. 7 averaged over pixels: p …×K, per_preset …×K×3 (g_k), change …×3 (the target)."""
        terms = huber_per_pixel(per_preset, change.unsqueeze(-2).expand_as(per_preset), delta)
        return (self.loss_weights() * p * terms).sum(-1).mean()

    @staticmethod
    def discrete(p: torch.Tensor) -> torch.Tensor:
        """The inference map: one-hot of the most probable preset."""
        return F.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)

    def forward(self, f_clr: torch.Tensor, p_map: torch.Tensor) -> torch.Tensor:
        """Σ_k p_k g_k: with a one-hot map exactly that preset's g_k."""
        return (p_map.unsqueeze(-1) * self.presets_out(f_clr)).sum(-2)


# --- network -------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Feature maps of one image batch at the backbone's resolution."""

    first: torch.Tensor  # N×C1×h/2×w/2, L2-normalized first-layer conv features
    context: torch.Tensor  # N×context_dim×h/4×w/4: the squeezed hypercolumn before its ReLU


class SAAdjustNet(nn.Module):
    def __init__(self, config: SAAdjustConfig = SAAdjustConfig()):
        super().__init__()
        self.config = config
        if config.backbone == "lite0":
            self.backbone = EfficientNetLite0()
            self.backbone.requires_grad_(False)
            first_channels, stage_channels = LITE0_FIRST_CHANNELS, LITE0_STAGE_CHANNELS
        elif config.backbone == "resnet":
            self.backbone = ResNet(config.resnet)
            first_channels = config.resnet.stem_width
            stage_channels = self.backbone.stage_channels[: config.hypercolumn_stages]
        else:
            raise ValueError(f"unknown backbone {config.backbone!r}")
        self.stage_channels = tuple(stage_channels)
        self.norms = nn.ModuleList(L2Scale(c) for c in stage_channels)
        self.renet = ReNet(stage_channels[-1], config.renet_hidden, config.renet_out)
        self.renet_norm = L2Scale(config.renet_out)
        self.first_norm = L2Scale(first_channels)
        hyper_dim = sum(stage_channels) + config.renet_out
        self.squeeze = nn.Linear(hyper_dim, config.context_dim)  # the 1×1 conv
        color_dim = 3 + first_channels
        self.direct = BilinearHead(color_dim, config.context_dim, config.rank)
        self.semantic = SemanticMapHead(color_dim, config.context_dim, config.rank, config.presets,
                                        config.weight_alpha, config.frequency_momentum)
        self.parse = nn.Linear(config.context_dim, config.parse_classes)  # multi-task head (Eq. 9)

    def train(self, mode: bool = True) -> SAAdjustNet:
        super().train(mode)
        if self.config.backbone == "lite0":
            self.backbone.eval()  # frozen: its batch norm keeps ImageNet's statistics, in training too
        return self

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The state to save: without a frozen backbone, whose weights live in their own file."""
        state = self.state_dict()
        if self.config.backbone == "lite0":
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state

    def backbone_maps(self, rgb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """N×3×S×S sRGB in [0, 1] → (first-layer map, the hypercolumn's stage maps)."""
        if self.config.backbone == "lite0":
            taps = self.backbone.features(rgb, (LITE0_FIRST, *LITE0_TAPS))
            return taps[LITE0_FIRST], [taps[t] for t in LITE0_TAPS]
        first, stages = self.backbone(scale_lab(rgb_to_lab_torch(rgb.clamp(0, 1)), dim=1))
        return first, list(stages[: self.config.hypercolumn_stages])

    def first_map(self, rgb: torch.Tensor) -> torch.Tensor:
        """Only the first-layer map (cheap with Lite0: stem and one block), for cached stage maps."""
        if self.config.backbone == "lite0":
            return self.backbone.features(rgb, (LITE0_FIRST,))[LITE0_FIRST]
        return self.backbone_maps(rgb)[0]

    def encode_maps(self, first: torch.Tensor, stages: list[torch.Tensor]) -> Encoded:
        return Encoded(first=self.first_norm(first), context=self.context_map(stages))

    def context_map(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """The squeezed hypercolumn (before its ReLU) on the first stage's grid."""
        renet = self.renet_norm(self.renet(stages[-1]))
        maps = [norm(s) for norm, s in zip(self.norms, stages, strict=True)] + [renet]
        # The 1×1 squeeze is linear and bilinear upsampling is too, so each map is squeezed at its own
        # resolution and the results summed on the first stage's grid: the same as squeezing the upsampled
        # concatenation, at a fraction of the cost.
        size = stages[0].shape[-2:]
        weights = self.squeeze.weight.split([m.shape[1] for m in maps], dim=1)
        context = None
        for m, w in zip(maps, weights, strict=True):
            part = F.conv2d(m, w[:, :, None, None])
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            context = part if context is None else context + part
        return context + self.squeeze.bias.view(1, -1, 1, 1)

    def encode(self, rgb: torch.Tensor) -> Encoded:
        """N×3×S×S sRGB in [0, 1] (the backbone's view, context_size²) → feature maps."""
        first, stages = self.backbone_maps(rgb)
        return self.encode_maps(first, stages)

    def pixel_features(self, enc: Encoded, grid: torch.Tensor, lab_pixels: torch.Tensor):
        """grid: N×P×2 in [-1, 1] (x, y; pixel centres, align_corners=False); lab_pixels: N×P×3 scaled.
        Returns f_clr (N×P×(3+C1)) and f_cxt (N×P×context_dim)."""
        g = grid.unsqueeze(1)
        first = F.grid_sample(enc.first, g, mode="bilinear", padding_mode="border", align_corners=False)
        hyper = F.grid_sample(enc.context, g, mode="bilinear", padding_mode="border", align_corners=False)
        f_clr = torch.cat([lab_pixels, first[:, :, 0].transpose(1, 2)], -1)
        f_cxt = torch.relu(hyper[:, :, 0].transpose(1, 2))
        return f_clr, f_cxt

    def heads(self, enc: Encoded, grid: torch.Tensor, lab_pixels: torch.Tensor,
              update_frequency: bool = False) -> dict[str, torch.Tensor]:
        """Both heads on sampled pixels: the Eq. 2 change (N×P×3), every preset's change g_k (N×P×K×3),
        p (N×P×K), the argmax-map change (N×P×3) and scene-parsing logits (N×P×classes)."""
        f_clr, f_cxt = self.pixel_features(enc, grid, lab_pixels)
        p = self.semantic.probabilities(f_cxt)
        if update_frequency:
            self.semantic.update_frequency(p)
        per_preset = self.semantic.presets_out(f_clr)
        chosen = (SemanticMapHead.discrete(p).unsqueeze(-1) * per_preset).sum(-2)
        return {"direct": self.direct(f_clr, f_cxt), "presets": per_preset, "probabilities": p,
                "map": chosen, "parse": self.parse(f_cxt)}

    def forward(self, rgb_small: torch.Tensor, grid: torch.Tensor, lab_pixels: torch.Tensor,
                update_frequency: bool = False) -> dict[str, torch.Tensor]:
        return self.heads(self.encode(rgb_small), grid, lab_pixels, update_frequency)

    def parse_logits(self, context: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Scene-parsing logits (N×P×classes) at grid positions of a ``context_map``."""
        hyper = F.grid_sample(context, grid.unsqueeze(1), mode="bilinear", padding_mode="border",
                              align_corners=False)
        return self.parse(torch.relu(hyper[:, :, 0].transpose(1, 2)))


class GlobalColorMapping(nn.Module):
    """The context-free baseline: one global colour mapping Lab → ΔLab, the same for every pixel and image
    (a small MLP on the pixel's colour only), trained on the same pixels as SA-AdjustNet."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 3), nn.Tanh())

    def forward(self, lab_pixels: torch.Tensor) -> torch.Tensor:
        return self.net(lab_pixels)


# --- losses (Eqs. 7–9) ---------------------------------------------------------------------------


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 8: ½e² for |e| ≤ δ, δ(|e| − ½δ) beyond, averaged over pixels and channels."""
    return F.huber_loss(pred, target, delta=delta)


def total_loss(model: SAAdjustNet, out: dict[str, torch.Tensor], change: torch.Tensor,
               parse: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9: Huber on the Eq. 2 head + the weighted expected Huber loss of the map head (Eq. 7)
    + λ · scene-parsing cross-entropy on ``parse`` = (logits …×classes, labels …; < 0 ignored)."""
    config = model.config
    direct = huber(out["direct"], change, config.huber_delta)
    semantic = model.semantic.expected_loss(out["probabilities"], out["presets"], change, config.huber_delta)
    loss = direct + semantic
    parts = {"direct": direct.item(), "map": semantic.item()}
    if parse is not None and config.parse_weight > 0 and bool((parse[1] >= 0).any()):
        logits, labels = parse
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-1)
        loss = loss + config.parse_weight * ce
        parts["parse"] = ce.item()
    return loss, parts


# --- weight files ----------------------------------------------------------------------------
# One file per style holds SA-AdjustNet (without a frozen backbone) and, under "baseline.", the global
# colour-mapping baseline.


def export_tensors(model_state: dict, baseline_state: dict) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in model_state.items() if not k.endswith("num_batches_tracked")}
    tensors.update({f"baseline.{k}": v for k, v in baseline_state.items()})
    return tensors


def split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    model = {k: v for k, v in tensors.items() if not k.startswith("baseline.")}
    baseline = {k[len("baseline."):]: v for k, v in tensors.items() if k.startswith("baseline.")}
    return model, baseline


def load_trained(state: dict[str, torch.Tensor], config: SAAdjustConfig,
                 backbone: nn.Module | None = None):
    """(SA-AdjustNet, baseline) from a weight file's tensors; a frozen Lite0 backbone comes from
    ``backbone`` (the shared pretrained one, ``efficientnet_lite.load_pretrained()``)."""
    model_state, baseline_state = split_tensors(state)
    model = SAAdjustNet(config)
    frozen = config.backbone == "lite0"
    if frozen:
        if backbone is None:
            raise ValueError("a Lite0 SA-AdjustNet needs the pretrained backbone")
        model.backbone = backbone
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")
               and not (frozen and k.startswith("backbone."))]
    if unexpected or missing:
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
    baseline = GlobalColorMapping()
    baseline.load_state_dict(baseline_state)
    return model.eval(), baseline.eval()


# --- full-resolution inference -------------------------------------------------------------------


def pixel_grid(h: int, w: int, rows: slice | None = None) -> torch.Tensor:
    """Normalized (x, y) of pixel centres (align_corners=False), H×W×2, for the given rows."""
    ys = torch.arange(h, dtype=torch.float32)[rows if rows is not None else slice(None)]
    xs = torch.arange(w, dtype=torch.float32)
    gy, gx = torch.meshgrid((ys + 0.5) * 2 / h - 1, (xs + 0.5) * 2 / w - 1, indexing="ij")
    return torch.stack([gx, gy], -1)


def context_view(lab: torch.Tensor, size: int) -> torch.Tensor:
    """H×W×3 Lab → the backbone's 1×3×size×size sRGB view (squashed, antialiased)."""
    rgb = lab_to_rgb_torch(lab.float(), dim=-1).clamp(0, 1).permute(2, 0, 1)[None]
    return F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def adjust_lab(model: SAAdjustNet, lab: torch.Tensor, head: str = "map",
               user_map: torch.Tensor | None = None, user_coverage: torch.Tensor | None = None,
               chunk_pixels: int = 32768, return_map: bool = False, return_probabilities: bool = False,
               progress: Callable[[float], None] | None = None):
    """Adjust a full-resolution H×W×3 Lab image (unscaled). Context features come from the image resized
    to context_size², sampled per pixel; the colour model runs per pixel, a few rows at a time.

    Head "map": the map is the argmax one-hot of p (discrete). ``user_map`` (H×W×K, rows summing to 1) and
    ``user_coverage`` (H×W in [0, 1]) replace it (Sec. 4.4): map = (1 − coverage) · argmax map + coverage ·
    user_map, so pixels with coverage 0 keep the automatic result and a one-hot user map equal to the
    predicted one gives the same output bit for bit. Returns the adjusted Lab (H×W×3); with ``return_map``
    also the map used (H×W×K); with ``return_probabilities`` also the soft p (H×W×K) before the argmax."""
    if head not in ("map", "direct"):
        raise ValueError(f"unknown head {head!r}")
    model.eval()
    h, w, _ = lab.shape
    device = next(model.parameters()).device
    presets = model.config.presets
    scaled = scale_lab(lab.float())
    enc = model.encode(context_view(lab, model.config.context_size).to(device))
    out = torch.empty(h, w, 3)
    used = torch.empty(h, w, presets) if return_map else None
    soft = torch.empty(h, w, presets) if return_probabilities else None
    step = max(1, chunk_pixels // w)
    for top in range(0, h, step):
        rows = slice(top, min(h, top + step))
        grid = pixel_grid(h, w, rows).reshape(1, -1, 2).to(device)
        pixels = scaled[rows].reshape(1, -1, 3).to(device)
        f_clr, f_cxt = model.pixel_features(enc, grid, pixels)
        p = model.semantic.probabilities(f_cxt)
        chosen = SemanticMapHead.discrete(p)
        if head == "direct":
            change = model.direct(f_clr, f_cxt)
        else:
            if user_map is not None:
                cov = user_coverage[rows].reshape(1, -1, 1).to(device)
                chosen = (1 - cov) * chosen + cov * user_map[rows].reshape(1, -1, presets).to(device)
            change = model.semantic(f_clr, chosen)
        if return_map:
            used[rows] = chosen.reshape(-1, w, presets).cpu()
        if return_probabilities:
            soft[rows] = p.reshape(-1, w, presets).cpu()
        out[rows] = unscale_lab((pixels + change).reshape(-1, w, 3)).cpu()
        if progress is not None:
            progress(rows.stop / h)
    extra = ([used] if return_map else []) + ([soft] if return_probabilities else [])
    return (out, *extra) if extra else out


@torch.no_grad()
def apply_global(mapping: GlobalColorMapping, lab: torch.Tensor, chunk_pixels: int = 1 << 18) -> torch.Tensor:
    flat = scale_lab(lab.float()).reshape(-1, 3)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], chunk_pixels):
        part = flat[start:start + chunk_pixels]
        out[start:start + chunk_pixels] = part + mapping(part)
    return unscale_lab(out).reshape(lab.shape)


# --- what each preset does (names for the map's channels) ----------------------------------------


@torch.no_grad()
def preset_effects(model: SAAdjustNet, labs: list[torch.Tensor]) -> list[dict]:
    """Measure each preset applied to every pixel of the given H×W×3 Lab images (the whole image forced to
    that preset): mean ΔL, chroma gain, L contrast gain, mean Δa and Δb; and words naming the effect."""
    sums = [dict(dL=0.0, chroma=0.0, contrast=0.0, da=0.0, db=0.0) for _ in range(model.config.presets)]
    for lab in labs:
        h, w, _ = lab.shape
        c_in = torch.hypot(lab[..., 1], lab[..., 2]).mean().clamp_min(1e-3)
        s_in = lab[..., 0].std().clamp_min(1e-3)
        for k in range(model.config.presets):
            one_hot = torch.zeros(h, w, model.config.presets)
            one_hot[..., k] = 1
            out = adjust_lab(model, lab, user_map=one_hot, user_coverage=torch.ones(h, w))
            s = sums[k]
            s["dL"] += float((out[..., 0] - lab[..., 0]).mean())
            s["chroma"] += float(torch.hypot(out[..., 1], out[..., 2]).mean() / c_in)
            s["contrast"] += float(out[..., 0].std() / s_in)
            s["da"] += float((out[..., 1] - lab[..., 1]).mean())
            s["db"] += float((out[..., 2] - lab[..., 2]).mean())
    effects = []
    for s in sums:
        mean = {key: round(v / max(len(labs), 1), 3) for key, v in s.items()}
        effects.append({**mean, "words": effect_words(mean)})
    return effects


def effect_words(effect: dict) -> str:
    """A few words for a preset's measured effect, the strongest first (e.g. "brighter, more saturated")."""
    found = []
    if abs(effect["dL"]) >= 1.5:
        found.append((abs(effect["dL"]) / 5, "brighter" if effect["dL"] > 0 else "darker"))
    for key, up, down in (("chroma", "more saturated", "less saturated"),
                          ("contrast", "more contrast", "less contrast")):
        gain = effect[key]
        if abs(gain - 1) >= 0.08:
            found.append((abs(gain - 1) / 0.2, up if gain > 1 else down))
    for key, up, down in (("db", "warmer", "cooler"), ("da", "more magenta", "greener")):
        if abs(effect[key]) >= 2.0:
            found.append((abs(effect[key]) / 6, up if effect[key] > 0 else down))
    found.sort(key=lambda item: -item[0])
    return ", ".join(word for _, word in found[:3]) or "little change"
