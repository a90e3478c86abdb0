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

import cv2
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
    # Guided filter (He et al.) of the upsampled features with the image as the guide: radius in
    # pixels of the image (0 = plain bilinear upsampling) and ε (the guide's variance, RGB in [0, 1],
    # below which a window counts as flat). Bilinear upsampling of stride-8 maps spreads each object's
    # features ~8 px past its outline, and DeepProp's estimate with them.
    guide_radius: int = 0
    guide_eps: float = 1e-3
    guide_subsample: int = 4  # the filter's coefficients computed at 1/4 size (He & Sun's fast variant)


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
    if cfg.guide_radius <= 0:
        full = F.interpolate(lowres, size=(h, w), mode="bilinear", align_corners=False)[0]
        return full.permute(1, 2, 0).contiguous().numpy()
    # The features go straight from their stride-8 grid to the filter's coefficient grid: resampling
    # them to full size first, only for the filter to shrink them again, was most of its cost.
    small_size = _small_size(h, w, cfg.guide_subsample)
    small_src = F.interpolate(lowres, size=small_size, mode="bilinear", align_corners=False)[0]
    features = small_src.permute(1, 2, 0).contiguous().numpy()
    guide = rgb.astype(np.float32, copy=False)
    return guided_filter(guide, features, cfg.guide_radius, cfg.guide_eps, cfg.guide_subsample)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """He, Sun & Tang's guided filter with a colour guide: ``src`` (H×W×C) as a local linear function
    of ``guide`` (H×W×3) in each (2r+1)² window, the coefficients averaged → H×W×C float32. Where the
    guide has an edge the output follows it; where it is flat the output is ``src`` box-smoothed.
    ``subsample`` > 1 is He & Sun's fast variant: the coefficients are computed on both images
    shrunk by that factor (radius too) and upsampled, only the final a·I + b runs at full size.
    ``src`` may already be at the shrunk size (what semantic_features passes). A guide with fewer than
    three channels (a gray image) guides with its first channel as all three; one with more (alpha) with
    its first three."""
    guide = guide[..., :3] if guide.shape[2] >= 3 else np.repeat(guide[..., :1], 3, axis=2)
    guide = np.ascontiguousarray(guide)
    h, w = guide.shape[:2]
    full_guide = guide
    if subsample > 1:
        small_h, small_w = _small_size(h, w, subsample)
        guide = _resize(guide, (small_w, small_h), cv2.INTER_AREA)
        if src.shape[:2] != (small_h, small_w):
            src = _resize(src, (small_w, small_h), cv2.INTER_AREA)
        radius = max(1, round(radius / subsample))
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    gh, gw = guide.shape[:2]
    mean_i = box(guide)  # h×w×3
    # The guide's 3×3 covariance per pixel (symmetric: six box filters), ε on the diagonal.
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = np.stack([guide[..., a] * guide[..., b] for a, b in pairs], axis=2)
    moments = box(products)
    cov = np.empty((gh, gw, 3, 3), np.float32)
    for k, (a, b) in enumerate(pairs):
        value = moments[..., k] - mean_i[..., a] * mean_i[..., b]
        cov[..., a, b] = value
        cov[..., b, a] = value
    cov += eps * np.eye(3, dtype=np.float32)
    inverse = np.linalg.inv(cov)
    channels = src.shape[2]
    mean_p = box(np.ascontiguousarray(src, dtype=np.float32))
    if mean_p.ndim == 2:
        mean_p = mean_p[..., None]
    coef_a = np.empty((gh, gw, channels, 3), np.float32)
    for c in range(channels):
        cov_ip = box(guide * src[..., c : c + 1]) - mean_i * mean_p[..., c : c + 1]  # h×w×3
        coef_a[..., c, :] = np.einsum("hwij,hwj->hwi", inverse, cov_ip)
    coef_b = mean_p - (coef_a * mean_i[..., None, :]).sum(3)
    mean_a = box(coef_a.reshape(gh, gw, channels * 3)).reshape(gh, gw, channels * 3)
    mean_b = box(coef_b).reshape(gh, gw, channels)
    if (gh, gw) != (h, w):
        mean_a = _resize(mean_a, (w, h), cv2.INTER_LINEAR)
        mean_b = _resize(mean_b, (w, h), cv2.INTER_LINEAR)
    mean_a = mean_a.reshape(h, w, channels, 3)
    return (np.einsum("hwcj,hwj->hwc", mean_a, full_guide) + mean_b).astype(np.float32, copy=False)


def _small_size(h: int, w: int, subsample: int) -> tuple[int, int]:
    """The (height, width) of the guided filter's coefficient grid."""
    if subsample <= 1:
        return h, w
    return max(1, round(h / subsample)), max(1, round(w / subsample))


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """An H×W×C float32 array resized to ``size`` (width, height), C kept even when it is 1. OpenCV
    resizes all channels in one channel-last pass (10× faster than torch's area mode and than its
    bilinear mode on a channel-last view, measured at 640×480 on one thread), except area averaging
    by a non-integer factor, which it does for at most 4 channels: torch's area mode does that."""
    h, w = image.shape[:2]
    exact = h % size[1] == 0 and w % size[0] == 0
    if interpolation == cv2.INTER_AREA and image.shape[2] > 4 and not exact:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        out = F.interpolate(tensor.contiguous(), size=(size[1], size[0]), mode="area")
        return out[0].permute(1, 2, 0).contiguous().numpy()
    out = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), size, interpolation=interpolation)
    return out.reshape(size[1], size[0], -1)


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
