"""Edge-aware post-processing of the estimate (DeepProp Sec. 5.2, Eq. 15).

    min_x  Σ_p w_p (x_p − y_p)²  +  λ Σ_(p,q)∈N  a_pq (x_p − x_q)²,     a_pq = exp(−‖I_p − I_q‖² / 2σ²)

y is the network's estimate, N the 4-neighborhood, I the image in CIELab. The data weight w_p is 0
in a band of ``radius`` pixels around the boundaries of the estimated label regions (the eroded
edges: where superpixel-wise estimates are least trustworthy) and 1 elsewhere, so the band is
re-interpolated from the confident interiors along the image's edges. The minimizer solves the
sparse SPD system (W + λL) x = W y, L the graph Laplacian of a_pq; we solve it for all channels at
once with Jacobi-preconditioned conjugate gradients. On the 4-neighbor grid L is a five-point
stencil, so L x is four shifted multiply-adds on the image-shaped tensor (no sparse matrix, all
cores). The system is linear in y, so smoothing class probabilities and then mixing edits equals
mixing then smoothing: callers smooth whichever has fewer channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class SmoothingConfig:
    strength: float = 1.0  # λ of Eq. 15; 0 turns post-processing off
    sigma: float = 6.0  # σ of the edge affinity, CIELab units
    radius: float | None = None  # eroded band half-width in pixels; None: a quarter superpixel interval
    tolerance: float = 1e-3  # relative residual of the CG solve
    max_iterations: int = 500


class EdgeGraph:
    """The image-only part of Eq. 15: the affinities a_pq to the right and lower neighbors and the
    degrees Σ_q a_pq, as float32 tensors (float32 halves the memory traffic of CG)."""

    def __init__(self, lab: np.ndarray, sigma: float):
        h, w = lab.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32))
        inv = -0.5 / (sigma * sigma)
        self.right = torch.exp((image[:, 1:] - image[:, :-1]).square().sum(-1) * inv)  # H×(W−1)
        self.down = torch.exp((image[1:] - image[:-1]).square().sum(-1) * inv)  # (H−1)×W
        degree = torch.zeros(h, w)
        degree[:, :-1] += self.right
        degree[:, 1:] += self.right
        degree[:-1] += self.down
        degree[1:] += self.down
        self.degree = degree
        self.shape = (h, w)

    def adjacency_times(self, x: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
        """out −= scale · A x for C×H×W ``x``, A the symmetric 4-neighbor affinity matrix."""
        out[:, :, :-1].addcmul_(self.right, x[:, :, 1:], value=-scale)
        out[:, :, 1:].addcmul_(self.right, x[:, :, :-1], value=-scale)
        out[:, :-1].addcmul_(self.down, x[:, 1:], value=-scale)
        out[:, 1:].addcmul_(self.down, x[:, :-1], value=-scale)
        return out


def eroded_edge_weights(hard_labels: np.ndarray, radius: float) -> np.ndarray:
    """w_p: 0 within ``radius`` of a boundary between different estimated labels, else 1."""
    edge = np.zeros(hard_labels.shape, np.uint8)
    horizontal = hard_labels[:, 1:] != hard_labels[:, :-1]
    vertical = hard_labels[1:] != hard_labels[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    r = int(round(radius))
    if r > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r - 1, 2 * r - 1))
        edge = cv2.dilate(edge, kernel)
    weights = 1.0 - edge.astype(np.float64)
    if not weights.any():  # everything is edge (tiny image or radius): keep all data
        weights[:] = 1.0
    return weights


def smooth(
    graph: EdgeGraph,
    values: np.ndarray,
    data_weights: np.ndarray,
    cfg: SmoothingConfig,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Solve (W + λL) x = W y for each channel of ``values`` (H×W×C) → (x as float32 H×W×C, CG iterations).

    CG starts from ``start`` when given (H×W×C), else from the estimate y itself.
    """
    if cfg.strength <= 0:
        return values.astype(np.float32), 0
    channels = values.shape[2]
    y = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32))  # C×H×W
    lam = float(cfg.strength)
    wd = torch.from_numpy(np.ascontiguousarray(data_weights, dtype=np.float32))
    diag = wd + lam * graph.degree

    def apply(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # out = (W + λL) x
        torch.mul(diag, x, out=out)
        return graph.adjacency_times(x, lam, out)

    def dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # per-channel ⟨a, b⟩
        # BLAS dot per channel: 2.3× faster than a batched vecdot or multiply-and-sum on CPU.
        return torch.stack([torch.dot(a[c].view(-1), b[c].view(-1)) for c in range(channels)])

    inv_diag = 1.0 / diag.clamp_min(1e-12)
    b = wd * y
    if start is None:
        x = y.clone()  # the estimate itself is a close start: only the eroded bands have to move
    else:
        x = torch.from_numpy(np.ascontiguousarray(start.transpose(2, 0, 1), dtype=np.float32))
    ap = torch.empty_like(x)
    r = b - apply(x, ap)
    z = inv_diag * r
    p = z.clone()
    rz = dots(r, z)
    b_norm = dots(b, b).sqrt().clamp_min(1e-12)
    iterations = 0
    for iterations in range(1, cfg.max_iterations + 1):  # noqa: B007 (reported below)
        apply(p, ap)
        pap = dots(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), 0).view(channels, 1, 1)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        if float((dots(r, r).sqrt() / b_norm).max()) < cfg.tolerance:
            break
        torch.mul(inv_diag, r, out=z)
        rz_new = dots(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), 0).view(channels, 1, 1)
        torch.addcmul(z, beta, p, out=p)  # p ← z + β p in one pass
        rz = rz_new
    return x.permute(1, 2, 0).contiguous().numpy(), iterations
