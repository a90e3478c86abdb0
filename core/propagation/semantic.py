"""Per-pixel semantic features for DeepProp (beyond the paper): the shared frozen ImageNet
EfficientNet-Lite0's feature maps of the image, reduced per image to a few channels.

The paper's network sees a 9×9 colour patch and the pixel's position. Those tell "similar colour,
nearby" but not "the same object": on the bench's dev split most of DeepProp's wrong pixels were
whole background regions coloured like the object, far from every stroke (see the model card notes in
``DeepPropConfig``). An ImageNet backbone's mid-level features separate such regions. They are
computed once per image (the per-image state keeps them for incremental updates) on a copy whose long
side is at most ``max_side``: the features are coarse anyway (stride 8/16), and it bounds the cost
at any image size (~0.06 s on one CPU thread).

The 152 channels of the stride-8 and stride-16 taps are reduced to ``channels`` by this image's own
principal components (computed on the stride-8 grid), then bilinearly upsampled to the image. PCA
per image keeps the directions along which *this* image varies; a fixed projection would spend
channels on distinctions the image does not contain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.models.efficientnet_lite import EfficientNetLite0


@dataclass(frozen=True)
class SemanticConfig:
    channels: int = 8  # principal components kept; 0 = no semantic features (the paper's network)
    taps: tuple[str, ...] = ("stride8", "stride16")
    max_side: int = 384  # the backbone sees the image downscaled to at most this long side
    border: int = 32  # mirrored margin (pixels of the downscaled image) against the frame's zero padding


@torch.no_grad()
def semantic_features(rgb: np.ndarray, backbone: EfficientNetLite0, cfg: SemanticConfig) -> np.ndarray:
    """rgb: H×W×3 (or ×1 gray) float in [0, 1] → H×W×channels float32, the first component with
    unit standard deviation and the others scaled alike (their relative variance kept)."""
    h, w = rgb.shape[:2]
    image = torch.from_numpy(np.ascontiguousarray(rgb[..., :3], dtype=np.float32)).permute(2, 0, 1)[None]
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    scale = min(1.0, cfg.max_side / max(h, w))
    small = (max(16, round(h * scale)), max(16, round(w * scale)))
    if small != (h, w):
        image = F.interpolate(image, size=small, mode="bilinear", align_corners=False, antialias=True)
    device = next(backbone.parameters()).device
    # The backbone zero-pads its convolutions, so features near the frame differ from the same
    # content inside the image: strokes that stay off the frame (as they usually do) then leave a band
    # along it unexplained (on the GIMP e2e scene the top rows went to the wrong class). The image is
    # mirrored outward by a margin a multiple of the coarsest stride, and the margin cropped off.
    pad = cfg.border
    if pad:
        mode = "reflect" if min(small) > pad else "replicate"
        image = F.pad(image, (pad, pad, pad, pad), mode=mode)
    maps = backbone.features(image.to(device), cfg.taps)
    maps = {name: _crop(fmap, pad, image.shape[-2:]) for name, fmap in maps.items()}
    grid = maps[cfg.taps[0]].shape[-2:]
    stacked = []
    for name in cfg.taps:
        fmap = maps[name]
        if fmap.shape[-2:] != grid:
            fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        # Each tap standardized on its own, so the wider stride-16 tap does not outvote stride 8.
        fmap = (fmap - fmap.mean((2, 3), keepdim=True)) / fmap.std().clamp_min(1e-6)
        stacked.append(fmap[0])
    feats = torch.cat(stacked).flatten(1).T.float().cpu()  # (grid pixels)×C
    feats = feats - feats.mean(0, keepdim=True)
    k = min(cfg.channels, feats.shape[1], feats.shape[0])
    # The top-k right singular vectors: the directions of largest variance of this image's features.
    _, s, vh = torch.linalg.svd(feats, full_matrices=False)
    projected = feats @ vh[:k].T
    projected = projected / projected[:, 0].std().clamp_min(1e-6)
    if k < cfg.channels:  # a tiny image has fewer grid pixels than channels: the rest stay zero
        projected = F.pad(projected, (0, cfg.channels - k))
    lowres = projected.T.reshape(1, cfg.channels, *grid)
    full = F.interpolate(lowres, size=(h, w), mode="bilinear", align_corners=False)[0]
    return full.permute(1, 2, 0).contiguous().numpy()


def _crop(fmap: torch.Tensor, pad: int, padded: torch.Size) -> torch.Tensor:
    """A feature map of the padded image → the part over the image itself (its stride from its size)."""
    if not pad:
        return fmap
    stride_y = padded[0] / fmap.shape[-2]
    stride_x = padded[1] / fmap.shape[-1]
    top, left = round(pad / stride_y), round(pad / stride_x)
    bottom = fmap.shape[-2] - round(pad / stride_y)
    right = fmap.shape[-1] - round(pad / stride_x)
    return fmap[..., top:bottom, left:right]
