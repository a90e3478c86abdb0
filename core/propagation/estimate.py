"""Patches and coordinates for DeepProp, and the two estimation modes of Sec. 5.1.

The image lives once on the device as a reflect-padded c×(H+8)×(W+8) tensor; any set of pixels
becomes N×c×9×9 patches with one gather (the 81 offsets are added to flat pixel indices), so
training samples, superpixel centers and per-pixel chunks all use the same batched extraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.models.deepprop import DeepProp


@dataclass
class PatchSource:
    padded: torch.Tensor  # c×(H+2r)×(W+2r), values in [0, 1]
    height: int
    width: int
    radius: int
    offsets: torch.Tensor  # 81 flat offsets of a 9×9 window
    # (H·W)×k per-pixel semantic features (core/propagation/semantic.py), None for the paper's inputs.
    semantic: torch.Tensor | None = None

    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        patch_size: int = 9,
        device: torch.device | str = "cpu",
        gray: bool | None = None,
    ) -> PatchSource:
        """image: H×W×3 float in [0, 1]. Gray images (all channels equal) use c = 1, as in the paper."""
        if gray is None:
            gray = is_gray(image)
        h, w = image.shape[:2]
        channels = image[..., :1] if gray else image[..., :3]
        tensor = torch.from_numpy(np.ascontiguousarray(channels.transpose(2, 0, 1), dtype=np.float32))
        r = patch_size // 2
        mode = "reflect" if min(h, w) > r else "replicate"
        padded = F.pad(tensor[None], (r, r, r, r), mode=mode)[0].to(device)
        wp = w + 2 * r
        dy, dx = torch.meshgrid(torch.arange(patch_size), torch.arange(patch_size), indexing="ij")
        offsets = (dy * wp + dx).reshape(-1).to(device)
        return cls(padded.contiguous(), h, w, r, offsets)

    @property
    def channels(self) -> int:
        return self.padded.shape[0]

    @property
    def device(self) -> torch.device:
        return self.padded.device

    def patches(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Integer pixel rows/columns (N) → N×c×9×9 patches centered on them."""
        size = 2 * self.radius + 1
        base = ys.to(self.device) * (self.width + 2 * self.radius) + xs.to(self.device)  # top-left corner
        index = base[:, None] + self.offsets[None, :]  # N×81
        flat = self.padded.view(self.channels, -1)
        return flat[:, index].permute(1, 0, 2).reshape(-1, self.channels, size, size)

    def with_semantic(self, features: np.ndarray | None) -> PatchSource:
        """The same source with H×W×k semantic features (None: without)."""
        flat = None
        if features is not None:
            flat = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32).reshape(-1, features.shape[2]))
            flat = flat.to(self.device)
        return PatchSource(self.padded, self.height, self.width, self.radius, self.offsets, flat)

    def semantic_at(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor | None:
        if self.semantic is None:
            return None
        return self.semantic[ys.to(self.device) * self.width + xs.to(self.device)]

    def coords(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """(x, y) normalized to [0, 1] by the image size (Sec. 3)."""
        sx = 1.0 / max(self.width - 1, 1)
        sy = 1.0 / max(self.height - 1, 1)
        x = xs.to(self.device, torch.float32) * sx
        return torch.stack([x, ys.to(self.device, torch.float32) * sy], 1)


def is_gray(image: np.ndarray, tolerance: float = 1.5 / 255) -> bool:
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    sample = image[:: max(1, image.shape[0] // 64), :: max(1, image.shape[1] // 64), :3]
    return bool(np.abs(sample - sample[..., :1]).max() <= tolerance)


@torch.no_grad()
def predict(
    model: DeepProp, source: PatchSource, ys: torch.Tensor, xs: torch.Tensor, batch: int | None = None
) -> torch.Tensor:
    """Class probabilities (N×n) for the given pixels. On a CPU the batches are small enough that
    conv2's im2col (batch × 4 × 1152 floats) stays in cache: 512 ran 2× faster than 8192."""
    batch = batch or (512 if source.device.type == "cpu" else 8192)
    model.eval()
    out = []
    for start in range(0, len(ys), batch):
        y, x = ys[start : start + batch], xs[start : start + batch]
        out.append(model.probabilities(source.patches(y, x), source.coords(y, x), source.semantic_at(y, x)))
    return torch.cat(out) if out else torch.zeros(0, model.num_classes, device=source.device)


def estimate_superpixels(
    model: DeepProp, source: PatchSource, labels: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """Superpixel-wise estimation (Sec. 5.1): one forward pass per superpixel center → H×W×n."""
    ys = torch.from_numpy(np.clip(np.rint(centers[:, 0]), 0, source.height - 1).astype(np.int64))
    xs = torch.from_numpy(np.clip(np.rint(centers[:, 1]), 0, source.width - 1).astype(np.int64))
    probs = predict(model, source, ys, xs).cpu().numpy()
    return probs[labels]


def estimate_pixels(model: DeepProp, source: PatchSource, progress=None, batch: int = 16384) -> np.ndarray:
    """Per-pixel estimation: every pixel's own patch → H×W×n (slow on CPU for large images)."""
    h, w = source.height, source.width
    out = np.empty((h * w, model.num_classes), np.float32)
    rows_per_chunk = max(1, batch // w)
    for y0 in range(0, h, rows_per_chunk):
        y1 = min(h, y0 + rows_per_chunk)
        ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(w), indexing="ij")
        out[y0 * w : y1 * w] = predict(model, source, ys.reshape(-1), xs.reshape(-1)).cpu().numpy()
        if progress is not None:
            progress(y1 / h)
    return out.reshape(h, w, -1)
