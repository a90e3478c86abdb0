"""SLIC superpixels (Achanta et al., TPAMI 2012), vectorized in torch.

The image is cut into the initial S×S grid cells; every pixel of a cell compares itself with the
centers of that cell and its 8 neighbors (SLIC's 2S×2S search window expressed on the grid). With
coordinates pre-scaled by m/S the SLIC distance is Euclidean, and since ‖f‖² is the same for all
candidates of a pixel, the assignment step is one batched matmul per iteration:
argmin_k ‖c_k‖² − 2 f·c_k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SlicResult:
    labels: np.ndarray  # H×W int64, 0..n-1 (every label used)
    centers: np.ndarray  # n×2 float (y, x): mean position of each superpixel
    spacing: float  # grid interval S in pixels

    @property
    def count(self) -> int:
        return len(self.centers)


def slic(
    lab: np.ndarray | torch.Tensor, n_segments: int, compactness: float = 10.0, iterations: int = 10
) -> SlicResult:
    """lab: H×W×3 CIELab (or any H×W×C features in similar units) → superpixels.

    D² = d_lab² + (m / S)² d_xy² with m = ``compactness`` and S = √(HW / n_segments), as in SLIC.
    """
    feats = torch.as_tensor(lab, dtype=torch.float32)
    if feats.ndim == 2:
        feats = feats[..., None]
    h, w, c = feats.shape
    n_segments = int(max(1, min(n_segments, h * w)))
    spacing = math.sqrt(h * w / n_segments)
    sy = max(1, min(h, round(spacing)))
    sx = max(1, min(w, round(spacing)))
    gh, gw = math.ceil(h / sy), math.ceil(w / sx)
    hp, wp = gh * sy, gw * sx
    xy_scale = compactness / spacing

    ys = torch.arange(h, dtype=torch.float32) * xy_scale
    xs = torch.arange(w, dtype=torch.float32) * xy_scale
    planes = torch.cat(
        [feats.permute(2, 0, 1), ys.view(1, h, 1).expand(1, h, w), xs.view(1, 1, w).expand(1, h, w)]
    )  # (c+2)×H×W
    d = c + 2
    # Pad to whole cells (replicated edges, excluded from the center updates by ``valid``).
    planes = F.pad(planes[None], (0, wp - w, 0, hp - h), mode="replicate")[0]
    valid = torch.zeros(hp, wp)
    valid[:h, :w] = 1
    blocks = planes.view(d, gh, sy, gw, sx).permute(1, 3, 2, 4, 0).reshape(gh, gw, sy * sx, d)
    valid_blocks = valid.view(gh, sy, gw, sx).permute(0, 2, 1, 3).reshape(-1)

    cell_y = torch.arange(gh)
    cell_x = torch.arange(gw)
    cand = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny = (cell_y + dy).clamp(0, gh - 1)
            nx = (cell_x + dx).clamp(0, gw - 1)
            cand.append(ny[:, None] * gw + nx[None, :])
    cand = torch.stack(cand, -1)  # gh×gw×9
    centers = blocks[:, :, (sy // 2) * sx + sx // 2, :].reshape(gh * gw, d).clone()

    flat_pixels = blocks.reshape(-1, d)
    labels = None
    for _ in range(iterations):
        cf = centers[cand]  # gh×gw×9×d
        score = torch.matmul(blocks, cf.transpose(2, 3)).mul_(-2).add_(cf.square().sum(-1)[:, :, None, :])
        choice = score.argmin(-1)  # gh×gw×npix
        labels = torch.gather(cand, 2, choice).reshape(-1)
        sums = torch.zeros(gh * gw, d).index_add_(0, labels, flat_pixels * valid_blocks[:, None])
        counts = torch.zeros(gh * gw).index_add_(0, labels, valid_blocks)
        occupied = counts > 0
        centers[occupied] = sums[occupied] / counts[occupied, None]

    image_labels = labels.view(gh, gw, sy, sx).permute(0, 2, 1, 3).reshape(hp, wp)[:h, :w]
    used, image_labels = torch.unique(image_labels, return_inverse=True)
    positions = centers[used][:, c:] / xy_scale
    return SlicResult(image_labels.numpy(), positions.numpy().astype(np.float64), spacing)
