"""Algorithm 1 of DeepProp: learning the network from one image's strokes, and its incremental
update when strokes are added or removed (Sec. 4, 4.1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from core.models.deepprop import DeepProp, DeepPropConfig
from core.propagation.estimate import PatchSource

Progress = Callable[[float, str], None]


@dataclass
class TrainingLog:
    pretrain_errors: list[float] = field(default_factory=list)  # per epoch, error / |Ω'|
    train_errors: list[float] = field(default_factory=list)
    samples: int = 0
    stop_reason: str = ""

    @property
    def epochs(self) -> int:
        return len(self.pretrain_errors) + len(self.train_errors)


def sample_training_set(
    labels: np.ndarray,
    ratio: float,
    generator: np.random.Generator,
    min_per_class: int = 16,
    new_pixels: np.ndarray | None = None,
    new_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ω': ``ratio`` of the stroke pixels (Algorithm 1, line 1), the same number from every class
    (at least ``min_per_class``). A class with fewer stroke pixels than its share has them repeated:
    drawn in proportion, a small object's ~16 samples sat beside hundreds of background ones, and
    the summed error of Eq. 12 was mostly the background's.

    ``new_pixels`` (H×W bool, an incremental update's strokes that the kept network was not trained
    on) with ``new_share`` > 0: that share of each class's samples comes from its new pixels, where
    it has any. A correction stroke is a small part of its class, so drawn in proportion it hardly
    moves the network that was wrong there."""
    ys, xs = np.nonzero(labels >= 0)
    cls = labels[ys, xs]
    classes = np.unique(cls)
    share = max(min_per_class, int(round(ratio * len(ys) / len(classes))))
    fresh = new_pixels[ys, xs] if new_pixels is not None and new_share > 0 else None
    picked = []
    for k in classes:
        members = np.flatnonzero(cls == k)
        if fresh is not None and fresh[members].any() and not fresh[members].all():
            novel = members[fresh[members]]
            count = int(round(new_share * share))
            picked.append(generator.choice(novel, count, replace=len(novel) < count))
            old = members[~fresh[members]]
            picked.append(generator.choice(old, share - count, replace=len(old) < share - count))
        elif len(members) >= share:
            picked.append(generator.choice(members, share, replace=False))
        else:
            extra = generator.choice(members, share - len(members), replace=True)
            picked.append(np.concatenate([members, extra]))
    keep = np.sort(np.concatenate(picked))
    return ys[keep], xs[keep], cls[keep]


class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) with its default β1 = 0.9, β2 = 0.999, ε = 1e-8.

    One instance lives through both stages of Algorithm 1, so the pre-trained parameters keep their
    moment estimates when the SFE joins; a fresh optimizer there restarts every parameter with a
    full-size first step and undoes much of the pre-training. Each parameter counts its own steps
    for the bias correction, so the SFE starts as if new. The update is PyTorch's fused Adam kernel
    (one pass over each parameter, the kernel behind ``torch.optim.Adam(fused=True)``) called
    directly: ``torch.optim`` imports TorchDynamo on first use, ~3 s of the user's first run.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = {p: torch.zeros_like(p) for p in params}
        self.v = {p: torch.zeros_like(p) for p in params}
        self.steps = {p: torch.zeros((), dtype=torch.float32, device=p.device) for p in params}

    def zero_grad(self, params: list[torch.Tensor]) -> None:
        for p in params:  # None: backward hands its gradient over instead of adding it to zeros
            p.grad = None

    @torch.no_grad()
    def step(self, params: list[torch.Tensor]) -> None:
        steps = [self.steps[p] for p in params]
        torch._foreach_add_(steps, 1.0)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [self.m[p] for p in params],
            [self.v[p] for p in params],
            [],
            steps,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


def stroke_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 12's L summed over the samples: a binary cross-entropy per class on the softmax output,
    −Σ_k [g_k ln y_k + (1 − g_k) ln(1 − y_k)], g the one-hot stroke label. ln(1 − y_k) is the log of
    the other classes' share, logsumexp over the other logits minus logsumexp over all (no 1 − y
    that rounds to 0 when y_k is nearly 1)."""
    total = torch.logsumexp(logits, 1, keepdim=True)
    n = logits.shape[1]
    others = (
        logits.unsqueeze(1)
        .expand(-1, n, n)
        .masked_fill(torch.eye(n, dtype=torch.bool, device=logits.device), -math.inf)
    )
    log_rest = torch.logsumexp(others, 2) - total  # ln(1 − y_k), N×n
    log_y = logits - total
    positive = log_y.gather(1, targets[:, None])
    return -(positive.sum() + log_rest.sum() - log_rest.gather(1, targets[:, None]).sum())


def train_stage(
    model: DeepProp,
    optimizer: Adam,
    columns: torch.Tensor,
    coords: torch.Tensor | None,
    targets: torch.Tensor,
    cfg: DeepPropConfig,
    generator: torch.Generator,
    errors: list[float],
    on_epoch: Callable[[int, float], None] | None = None,
    warmup_epochs: int = 0,
    semantic: torch.Tensor | None = None,
) -> str:
    """Adam on mini-batches until E < ε|Ω'| or E rises by more than γ|Ω'| (Algorithm 1; the rise
    test skipped in the first ``warmup_epochs``), a stop on a rise restoring the parameters from
    before it.

    ``columns``: Ω''s patches as conv1's im2col (``model.vfe.columns``), computed once per run.
    E is the summed cross-entropy over Ω' with the parameters at the end of the epoch (one
    gradient-free pass; with ``cfg.running_error`` the sum accumulated during the epoch instead).
    """
    spatial = ("sfe", "fc_s")
    params = [p for name, p in model.named_parameters() if coords is not None or not name.startswith(spatial)]
    n = len(targets)
    previous = 0.0 if cfg.stop_rule in ("literal", "plateau") else math.inf
    snapshot = None
    model.train()
    repeats = max(1, math.ceil(cfg.min_epoch_samples / n))
    for epoch in range(cfg.max_epochs):
        # A small Ω' is passed over several times per epoch so E and the γ test are not decided by
        # one or two mini-batches; E stays normalized per pass (error / |Ω'|).
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(repeats)]).to(targets.device)
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            logits = model.forward_columns(
                columns[idx],
                None if coords is None else coords[idx],
                None if semantic is None else semantic[idx],
            )
            loss = stroke_loss(logits, targets[idx])
            optimizer.zero_grad(params)
            (loss / len(idx)).backward()
            optimizer.step(params)
            total += float(loss.detach()) / repeats
        if not cfg.running_error:
            total = epoch_error(model, columns, coords, targets, cfg.batch_size * 16, semantic)
        errors.append(total / n)
        if on_epoch is not None:
            on_epoch(epoch, total / n)
        if total < cfg.epsilon * n:
            return "converged"
        if cfg.stop_rule == "literal" and total - previous > cfg.gamma * n:
            return "error above preE"  # preE ← 0: any error above γ|Ω'| stops after one epoch
        if cfg.stop_rule == "plateau" and abs(total - previous) < cfg.gamma * n:
            return "error settled"
        if cfg.stop_rule == "rise" and total - previous > cfg.gamma * n and epoch >= warmup_epochs:
            # Early stop: the epoch made things worse, so keep the parameters from before it.
            model.load_state_dict(snapshot)
            return "error rose"
        previous = total
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return "epoch limit"


@torch.no_grad()
def epoch_error(
    model: DeepProp,
    columns: torch.Tensor,
    coords: torch.Tensor | None,
    targets: torch.Tensor,
    batch: int,
    semantic: torch.Tensor | None = None,
) -> float:
    total = 0.0
    for start in range(0, len(targets), batch):
        sl = slice(start, start + batch)
        logits = model.forward_columns(
            columns[sl], None if coords is None else coords[sl], None if semantic is None else semantic[sl]
        )
        total += float(stroke_loss(logits, targets[sl]))
    return total


def learn(
    model: DeepProp | None,
    source: PatchSource,
    labels: np.ndarray,
    cfg: DeepPropConfig,
    seed: int = 0,
    pretrain: bool | None = None,
    progress: Progress | None = None,
    new_pixels: np.ndarray | None = None,
) -> tuple[DeepProp, TrainingLog]:
    """Algorithm 1. ``model=None`` builds a fresh network (lines 1–3); a given model (already resized to
    the current classes) re-enters the algorithm at line 4 with its parameters (Sec. 4.1): both
    stages run again from the kept weights, unless ``pretrain=False``. ``new_pixels``: the stroke pixels
    the kept model was not trained on (see ``sample_training_set``)."""
    num_classes = int(labels.max()) + 1
    cfg = replace(cfg, in_channels=source.channels)
    generator = np.random.default_rng(seed)
    torch_gen = torch.Generator().manual_seed(seed)
    if model is None:
        torch.manual_seed(seed)
        model = DeepProp(num_classes, cfg).to(source.device)
        fresh = True
    else:
        fresh = False
    pretrain = cfg.incremental_pretrain if pretrain is None and not fresh else pretrain is not False
    ys, xs, cls = sample_training_set(
        labels, cfg.sample_ratio, generator, new_pixels=None if fresh else new_pixels, new_share=cfg.new_stroke_share
    )
    ys_t, xs_t = torch.from_numpy(ys), torch.from_numpy(xs)
    columns = model.vfe.columns(source.patches(ys_t, xs_t)).contiguous()
    coords = source.coords(ys_t, xs_t)
    semantic = source.semantic_at(ys_t, xs_t) if cfg.semantic_channels else None
    targets = torch.from_numpy(cls.astype(np.int64)).to(source.device)
    log = TrainingLog(samples=len(targets))
    rate = cfg.learning_rate if fresh else cfg.learning_rate * cfg.incremental_lr_scale
    optimizer = Adam(list(model.parameters()), rate)

    def report(stage: str, base: float, span: float):
        def on_epoch(epoch: int, error: float):
            if progress is not None:
                done = min(1.0, (epoch + 1) / max(1, cfg.max_epochs) * 4)  # most runs stop within ~¼ cap
                progress(base + span * done, f"{stage}: epoch {epoch + 1}, error {error:.3f}")

        return on_epoch

    if pretrain:
        # Pre-training: VFE + FC_v + LE, no SFE, so the features first learn appearance alone.
        train_stage(
            model,
            optimizer,
            columns,
            None,
            targets,
            cfg,
            torch_gen,
            log.pretrain_errors,
            report("Pre-training", 0.0, 0.4),
            warmup_epochs=cfg.gamma_warmup_epochs if fresh else 0,
            semantic=semantic,
        )
        if fresh:
            # The whole network starts as the pre-trained one: W_cs = 0 until training moves it, so
            # switching the SFE on does not scramble the features learned from appearance. A kept
            # network keeps its learned W_cs (Sec. 4.1 re-enters at line 4, after the initialization).
            nn.init.zeros_(model.fc_s.weight)
    log.stop_reason = train_stage(
        model,
        optimizer,
        columns,
        coords,
        targets,
        cfg,
        torch_gen,
        log.train_errors,
        report("Training", 0.4 if pretrain else 0.0, 0.6 if pretrain else 1.0),
        semantic=semantic,
    )
    model.eval()
    model.zero_grad(set_to_none=True)  # the last step's gradients are not needed for estimation
    return model, log
