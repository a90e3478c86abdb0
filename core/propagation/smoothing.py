"""Edge-aware post-processing of the estimate (DeepProp Sec. 5.2, Eq. 15).

    min_x  Σ_p w_p (x_p − y_p)²  +  λ Σ_(p,q)∈N  a_pq (x_p − x_q)²,     a_pq = exp(−‖I_p − I_q‖² / 2σ²)

y is the network's estimate, N the 4-neighborhood, I the image in CIELab. The data weight w_p is 0
in a band of ``radius`` pixels around the boundaries of the estimated label regions (the eroded
edges: where superpixel-wise estimates are least trustworthy) and 1 elsewhere, so the band is
re-interpolated from the confident interiors along the image's edges. The minimizer solves the
sparse SPD system (W + λL) x = W y, L the graph Laplacian of a_pq; we solve it for all channels at
once with Jacobi-preconditioned conjugate gradients on a scipy.sparse matrix. The system is linear
in y, so smoothing class probabilities and then mixing edits equals mixing then smoothing: callers
smooth whichever has fewer channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class SmoothingConfig:
    strength: float = 1.0  # λ of Eq. 15; 0 turns post-processing off
    sigma: float = 6.0  # σ of the edge affinity, CIELab units
    radius: float | None = None  # eroded band half-width in pixels; None: a quarter superpixel interval
    tolerance: float = 1e-3  # relative residual of the CG solve
    max_iterations: int = 500


class EdgeGraph:
    """The image-only part of Eq. 15: affinities a_pq as a sparse matrix and the degrees Σ_q a_pq."""

    def __init__(self, lab: np.ndarray, sigma: float):
        h, w = lab.shape[:2]
        lab = lab.astype(np.float32, copy=False)
        inv = np.float32(-0.5 / (sigma * sigma))
        wh = np.exp(np.square(lab[:, 1:] - lab[:, :-1]).sum(-1) * inv)  # H×(W−1), right neighbors
        wv = np.exp(np.square(lab[1:] - lab[:-1]).sum(-1) * inv)  # (H−1)×W, lower neighbors
        n = h * w
        idx = np.arange(n, dtype=np.int64).reshape(h, w)
        rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1].ravel()])
        cols = np.concatenate([idx[:, 1:].ravel(), idx[1:].ravel()])
        vals = np.concatenate([wh.ravel(), wv.ravel()])  # float32: halves the memory traffic of CG
        upper = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
        self.affinity = (upper + upper.T).tocsr()
        self.degree = np.asarray(self.affinity.sum(axis=1)).ravel()
        self.shape = (h, w)


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
) -> tuple[np.ndarray, int]:
    """Solve (W + λL) x = W y for each channel of ``values`` (H×W×C) → (x as float32 H×W×C, CG iterations)."""
    h, w = graph.shape
    y = values.reshape(h * w, -1).astype(np.float32)
    if cfg.strength <= 0:
        return values.astype(np.float32), 0
    lam = cfg.strength
    wd = data_weights.reshape(-1).astype(np.float32)
    diag = (wd + lam * graph.degree).astype(np.float32)
    affinity = graph.affinity

    def apply(x: np.ndarray) -> np.ndarray:
        return diag[:, None] * x - np.float32(lam) * (affinity @ x)

    inv_diag = (1.0 / np.maximum(diag, 1e-12))[:, None].astype(np.float32)
    b = wd[:, None] * y
    x = y.copy()  # the estimate itself is a close start: only the eroded bands have to move
    r = b - apply(x)
    z = inv_diag * r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    b_norm = np.maximum(np.linalg.norm(b, axis=0), 1e-12)
    iterations = 0
    for iterations in range(1, cfg.max_iterations + 1):  # noqa: B007 (reported below)
        ap = apply(p)
        pap = np.einsum("ij,ij->j", p, ap)
        alpha = np.where(pap > 0, rz / np.maximum(pap, 1e-30), 0.0).astype(np.float32)
        x += alpha * p
        r -= alpha * ap
        if (np.linalg.norm(r, axis=0) / b_norm).max() < cfg.tolerance:
            break
        z = inv_diag * r
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.where(rz > 0, rz_new / np.maximum(rz, 1e-30), 0.0).astype(np.float32)
        p = z + beta * p
        rz = rz_new
    return x.reshape(h, w, -1).astype(np.float32), iterations
