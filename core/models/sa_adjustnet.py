"""SA-AdjustNet: Nam & Kim, *Deep Semantics-Aware Photo Adjustment* (2017).

Per pixel x the network regresses a CIELab change from two features:

* colour feature f_clr(x): the pixel's Lab concatenated with the L2-normalized first-layer
  convolution response (low-level, local);
* context feature f_cxt(x): a hypercolumn of the first three residual stages, each L2-normalized,
  plus a ReNet module (four directional GRU sweeps, batch norm, 1×1 conv) for image-wide context,
  concatenated and squeezed to 512 channels with a 1×1 convolution.

Two heads share these features:

* ``BilinearHead`` (Eq. 2): ŷ = tanh(Pᵀ(tanh(Uᵀf_clr + b) ∘ tanh(Vᵀf_cxt + c)) + d);
* ``SemanticMapHead`` (Eqs. 3–7): f_cxt is replaced by a per-pixel categorical distribution over K
  adjustment presets (the *semantic adjustment map*); the output is the exact expectation of Eq. 2 with
  a one-hot context over K, and class probabilities are re-weighted by moving-average soft
  frequencies (α = 0.8) so that all presets stay in use. A user's own map replaces the predicted one.

The output is added to the input Lab (residual). Lab is scaled to about [-1, 1] (L/100, a/110, b/110),
the unit the Huber δ = 0.04 of Eq. 8 is measured in. Context features live at a reduced resolution and
are sampled bilinearly at pixel positions, so training draws 2 048 random pixels per image and inference
runs the per-pixel colour model at full resolution in chunks.

The shipped models train both heads on one shared backbone (one training per style on a 2-core CPU);
the paper trained its variants separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from core.models.resnet import RESNET50, ResNet, ResNetConfig

LAB_SCALE = (100.0, 110.0, 110.0)


@dataclass(frozen=True)
class SAAdjustConfig:
    backbone: ResNetConfig = RESNET50  # paper: ImageNet ResNet-50 (we train from scratch)
    hypercolumn_stages: int = 3  # "the first three residual stages"
    renet_hidden: int = 128  # GRU state per direction
    renet_out: int = 256  # ReNet's 1×1 conv output
    context_dim: int = 512  # the 1×1 squeeze of the concatenated hypercolumn
    rank: int = 256  # low-rank bilinear dimension (U, V: → rank; P: rank → 3)
    presets: int = 10  # K adjustment presets of the semantic map
    frequency_momentum: float = 0.8  # α of the moving-average soft frequencies (Eq. 5)
    huber_delta: float = 0.04  # Eq. 8, in scaled Lab units
    parse_weight: float = 0.01  # λ of the scene-parsing task (Eq. 9)
    parse_classes: int = 34
    sample_pixels: int = 2048  # sparse training: random pixels per image
    context_size: int = 224  # side of the square the backbone sees at inference and in training
    learning_rate: float = 1e-4  # Adam

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SAAdjustConfig:
        data = dict(data)
        backbone = data.pop("backbone", None)
        config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if backbone is not None:
            backbone = {k: tuple(v) if isinstance(v, list) else v for k, v in backbone.items()}
            config = replace(config, backbone=ResNetConfig(**backbone))
        return config


# Named variants: the paper's width, and the one the shipped weights were trained with on a 2-core CPU.
VARIANTS: dict[str, SAAdjustConfig] = {
    "paper": SAAdjustConfig(),
    "cpu-small": SAAdjustConfig(
        backbone=ResNetConfig(), renet_hidden=48, renet_out=96, context_dim=128, rank=64, presets=8,
        context_size=160, learning_rate=1e-3,
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


class SemanticMapHead(nn.Module):
    """Eqs. 3–7, the semantic adjustment map.

    Eq. 3  p(k | x) = softmax_k(W f_cxt(x) + e)                 (per-pixel categorical over K presets)
    Eq. 4  g_k(x)   = tanh(Pᵀ(tanh(Uᵀf_clr + b) ∘ tanh(v_k + c)) + d)   (Eq. 2 with one-hot context k)
    Eq. 5  q_k     ← α q_k + (1 − α) mean_x p(k | x)            (soft frequency, moving average, α = 0.8)
    Eq. 6  p̃(k | x) = (p(k | x) / q_k) / Σ_j p(j | x) / q_j      (re-weighting against preset collapse)
    Eq. 7  ŷ(x)    = Σ_k p̃(k | x) g_k(x)                         (exact expectation over K)
    """

    def __init__(self, color_dim: int, context_dim: int, rank: int, presets: int, momentum: float,
                 out: int = 3):
        super().__init__()
        self.classify = nn.Linear(context_dim, presets)
        self.U = nn.Linear(color_dim, rank)
        self.preset_codes = nn.Parameter(torch.randn(presets, rank) * 0.5)  # Vᵀ e_k for one-hot e_k
        self.c = nn.Parameter(torch.zeros(rank))
        self.P = nn.Linear(rank, out)
        nn.init.normal_(self.P.weight, std=1e-3)
        nn.init.zeros_(self.P.bias)
        self.momentum = momentum
        self.register_buffer("frequency", torch.full((presets,), 1.0 / presets))

    def probabilities(self, f_cxt: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classify(f_cxt), dim=-1)  # Eq. 3

    def update_frequency(self, p: torch.Tensor) -> None:
        with torch.no_grad():  # Eq. 5
            batch = p.reshape(-1, p.shape[-1]).mean(0)
            self.frequency.mul_(self.momentum).add_((1 - self.momentum) * batch)

    def reweight(self, p: torch.Tensor) -> torch.Tensor:
        weighted = p / self.frequency.clamp_min(1e-6)  # Eq. 6
        return weighted / weighted.sum(-1, keepdim=True)

    def presets_out(self, f_clr: torch.Tensor) -> torch.Tensor:
        """… × color_dim → … × K × 3: every preset's Lab change (Eq. 4)."""
        h = torch.tanh(self.U(f_clr)).unsqueeze(-2)
        return torch.tanh(self.P(h * torch.tanh(self.preset_codes + self.c)))

    def forward(self, f_clr: torch.Tensor, p_map: torch.Tensor) -> torch.Tensor:
        return (p_map.unsqueeze(-1) * self.presets_out(f_clr)).sum(-2)  # Eq. 7


# --- network -------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Feature maps of one image batch at the backbone's resolution."""

    first: torch.Tensor  # N×C1×h/2×w/2, L2-normalized first-layer conv features
    context: torch.Tensor  # N×context_dim×h'×w': the squeezed hypercolumn before its ReLU
    sizes: list[tuple[int, int]] = field(default_factory=list)


class SAAdjustNet(nn.Module):
    def __init__(self, config: SAAdjustConfig = SAAdjustConfig()):
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone)
        stage_channels = self.backbone.stage_channels[: config.hypercolumn_stages]
        self.norms = nn.ModuleList(L2Scale(c) for c in stage_channels)
        self.renet = ReNet(stage_channels[-1], config.renet_hidden, config.renet_out)
        self.renet_norm = L2Scale(config.renet_out)
        self.first_norm = L2Scale(config.backbone.stem_width)
        hyper_dim = sum(stage_channels) + config.renet_out
        self.squeeze = nn.Linear(hyper_dim, config.context_dim)  # the 1×1 conv
        color_dim = 3 + config.backbone.stem_width
        self.direct = BilinearHead(color_dim, config.context_dim, config.rank)
        self.semantic = SemanticMapHead(color_dim, config.context_dim, config.rank, config.presets,
                                        config.frequency_momentum)
        self.parse = nn.Linear(config.context_dim, config.parse_classes)  # multi-task head (Eq. 9)

    def encode(self, lab_scaled: torch.Tensor) -> Encoded:
        """N×3×h×w scaled Lab (the backbone's view, context_size²) → feature maps."""
        first, stages = self.backbone(lab_scaled)
        stages = stages[: self.config.hypercolumn_stages]
        renet = self.renet_norm(self.renet(stages[-1]))
        # Stages 2, 3 and the ReNet output are upsampled to stage 1's grid once, so each sampled pixel needs
        # one grid_sample; bilinear upsampling then bilinear sampling stays a smooth interpolation.
        size = stages[0].shape[-2:]
        maps = [norm(s) for norm, s in zip(self.norms, stages, strict=True)] + [renet]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear",
                                                                align_corners=False) for m in maps]
        # The 1×1 squeeze is linear and bilinear weights sum to one, so squeezing here and sampling later
        # equals sampling the hypercolumn and squeezing per pixel, at a fraction of the cost.
        squeezed = F.conv2d(torch.cat(maps, 1), self.squeeze.weight[:, :, None, None], self.squeeze.bias)
        return Encoded(first=self.first_norm(first), context=squeezed)

    def pixel_features(self, enc: Encoded, grid: torch.Tensor, lab_pixels: torch.Tensor):
        """grid: N×P×2 in [-1, 1] (x, y; pixel centres, align_corners=False); lab_pixels: N×P×3 scaled.
        Returns f_clr (N×P×(3+C1)) and f_cxt (N×P×context_dim)."""
        g = grid.unsqueeze(1)
        first = F.grid_sample(enc.first, g, mode="bilinear", padding_mode="border", align_corners=False)
        hyper = F.grid_sample(enc.context, g, mode="bilinear", padding_mode="border", align_corners=False)
        f_clr = torch.cat([lab_pixels, first[:, :, 0].transpose(1, 2)], -1)
        f_cxt = torch.relu(hyper[:, :, 0].transpose(1, 2))
        return f_clr, f_cxt

    def forward(self, lab_small: torch.Tensor, grid: torch.Tensor, lab_pixels: torch.Tensor,
                update_frequency: bool = False) -> dict[str, torch.Tensor]:
        """Training/evaluation on sampled pixels. Returns Lab changes (scaled, N×P×3) of both heads, the
        re-weighted map p̃ (N×P×K) and scene-parsing logits (N×P×classes)."""
        f_clr, f_cxt = self.pixel_features(self.encode(lab_small), grid, lab_pixels)
        p = self.semantic.probabilities(f_cxt)
        if update_frequency:
            self.semantic.update_frequency(p)
        p_tilde = self.semantic.reweight(p)
        return {
            "direct": self.direct(f_clr, f_cxt),
            "map": self.semantic(f_clr, p_tilde),
            "probabilities": p_tilde,
            "parse": self.parse(f_cxt),
        }


class GlobalColorMapping(nn.Module):
    """The context-free baseline: one global colour mapping Lab → ΔLab, the same for every pixel and image
    (a small MLP on the pixel's colour only), trained on the same pixels as SA-AdjustNet."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 3), nn.Tanh())

    def forward(self, lab_pixels: torch.Tensor) -> torch.Tensor:
        return self.net(lab_pixels)


# --- losses (Eqs. 8–9) ---------------------------------------------------------------------------


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 8: ½e² for |e| ≤ δ, δ(|e| − ½δ) beyond, averaged over pixels and channels."""
    return F.huber_loss(pred, target, delta=delta)


def total_loss(out: dict[str, torch.Tensor], change: torch.Tensor, labels: torch.Tensor | None,
               config: SAAdjustConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9: Huber on both heads' Lab change + λ · scene-parsing cross-entropy (labels < 0 ignored)."""
    direct = huber(out["direct"], change, config.huber_delta)
    semantic = huber(out["map"], change, config.huber_delta)
    loss = direct + semantic
    parts = {"direct": direct.item(), "map": semantic.item()}
    if labels is not None and config.parse_weight > 0 and bool((labels >= 0).any()):
        parse = F.cross_entropy(out["parse"].reshape(-1, out["parse"].shape[-1]), labels.reshape(-1),
                                ignore_index=-1)
        loss = loss + config.parse_weight * parse
        parts["parse"] = parse.item()
    return loss, parts


# --- weight files ----------------------------------------------------------------------------
# One file per style holds SA-AdjustNet and, under "baseline.", the global colour-mapping baseline.


def export_tensors(model_state: dict, baseline_state: dict) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in model_state.items() if not k.endswith("num_batches_tracked")}
    tensors.update({f"baseline.{k}": v for k, v in baseline_state.items()})
    return tensors


def split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    model = {k: v for k, v in tensors.items() if not k.startswith("baseline.")}
    baseline = {k[len("baseline."):]: v for k, v in tensors.items() if k.startswith("baseline.")}
    return model, baseline


def load_trained(state: dict[str, torch.Tensor], config: SAAdjustConfig):
    model_state, baseline_state = split_tensors(state)
    model = SAAdjustNet(config)
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
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


@torch.no_grad()
def adjust_lab(model: SAAdjustNet, lab: torch.Tensor, head: str = "map",
               user_map: torch.Tensor | None = None, user_coverage: torch.Tensor | None = None,
               chunk_pixels: int = 32768, return_map: bool = False,
               progress: Callable[[float], None] | None = None):
    """Adjust a full-resolution H×W×3 Lab image (unscaled). Context features come from the image resized
    to context_size², sampled per pixel; the colour model runs per pixel, a few rows at a time.

    ``user_map`` (H×W×K, rows summing to 1) and ``user_coverage`` (H×W in [0, 1]) replace the predicted map
    (Sec. 4.4): p = (1 − coverage) · p̃ + coverage · user_map, so pixels with coverage 0 are unchanged.
    Returns the adjusted Lab (H×W×3) and, with ``return_map``, p (H×W×K)."""
    if head not in ("map", "direct"):
        raise ValueError(f"unknown head {head!r}")
    model.eval()
    h, w, _ = lab.shape
    device = next(model.parameters()).device
    size = model.config.context_size
    scaled = scale_lab(lab.float())
    small = F.interpolate(scaled.permute(2, 0, 1)[None].to(device), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
    enc = model.encode(small)
    out = torch.empty_like(lab, dtype=torch.float32)
    probabilities = torch.empty(h, w, model.config.presets) if return_map else None
    step = max(1, chunk_pixels // w)
    for top in range(0, h, step):
        rows = slice(top, min(h, top + step))
        grid = pixel_grid(h, w, rows).reshape(1, -1, 2).to(device)
        pixels = scaled[rows].reshape(1, -1, 3).to(device)
        f_clr, f_cxt = model.pixel_features(enc, grid, pixels)
        if head == "direct":
            change = model.direct(f_clr, f_cxt)
            if return_map:
                probabilities[rows] = model.semantic.reweight(
                    model.semantic.probabilities(f_cxt)).reshape(-1, w, model.config.presets).cpu()
        else:
            p = model.semantic.reweight(model.semantic.probabilities(f_cxt))
            if user_map is not None:
                cov = user_coverage[rows].reshape(1, -1, 1).to(device)
                p = (1 - cov) * p + cov * user_map[rows].reshape(1, -1, model.config.presets).to(device)
            change = model.semantic(f_clr, p)
            if return_map:
                probabilities[rows] = p.reshape(-1, w, model.config.presets).cpu()
        out[rows] = unscale_lab((pixels + change).reshape(-1, w, 3)).cpu()
        if progress is not None:
            progress(rows.stop / h)
    return (out, probabilities) if return_map else out


@torch.no_grad()
def apply_global(mapping: GlobalColorMapping, lab: torch.Tensor, chunk_pixels: int = 1 << 18) -> torch.Tensor:
    flat = scale_lab(lab.float()).reshape(-1, 3)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], chunk_pixels):
        part = flat[start:start + chunk_pixels]
        out[start:start + chunk_pixels] = part + mapping(part)
    return unscale_lab(out).reshape(lab.shape)
