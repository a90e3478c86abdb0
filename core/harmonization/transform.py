"""Learned colour-transform harmonization at any resolution (the network is core/models/harmonizer.py).

1. A copy of about R² pixels (aspect kept) is described: frozen ImageNet features and colour
   statistics of the foreground, the background and the ring around the object, each weighted by alpha
   (invisible pixels belong to no region, as in the other methods; core/harmonization/inputs.py).
2. The head predicts one global transform: a 3×3 colour matrix, an offset and a tone curve per channel.
3. The transform is applied to the full-resolution pixels inside the mask's bounding box, strip by
   strip, and blended with the soft mask and the strength: where the mask is 0 the result is the
   input bit for bit; alpha is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from core.harmonization.inputs import Composite, check_composite, small_rgb
from core.imaging.io import from_float, to_float
from core.models.efficientnet_lite import WEIGHT_ID as BACKBONE_ID
from core.models.harmonizer import HarmonizerConfig, WhiteBoxHarmonizer, curve_points
from core.weights import Manifest, load_verified_state

# The default transform is the mean of the arguments predicted by two heads, one on the ImageNet features
# and colour statistics, one on the statistics alone: on the validation composites that pick models the
# pair's fMSE is 5 % below the first head's and 18 % below the second's (weights/harmonizer-lite0.md).
DEFAULT_WEIGHTS = ("harmonizer-lite0", "harmonizer-statistics")
STRIP_PIXELS = 1 << 20
MIN_SIDE = 32  # the backbone's stride-32 map needs at least one cell


def load_harmonizer(weight_id: str, manifest: Manifest | None = None,
                    device: torch.device | str = "cpu") -> WhiteBoxHarmonizer:
    """Head from ``weight_id``, frozen backbone from the shared ImageNet file; both sha256-checked."""
    manifest = manifest or Manifest.load()
    model = WhiteBoxHarmonizer(HarmonizerConfig.from_dict(manifest.entry(weight_id).config))
    load_verified_state(model.predictor, manifest, weight_id, "the harmonizer's transform predictor")
    if model.backbone is not None:
        load_verified_state(model.backbone, manifest, BACKBONE_ID, "the EfficientNet-Lite0 backbone")
    return model.to(device).eval()


def load_harmonizers(weight_ids: Sequence[str] = DEFAULT_WEIGHTS, manifest: Manifest | None = None,
                     device: torch.device | str = "cpu") -> list[WhiteBoxHarmonizer]:
    """The heads whose predictions are averaged; the backbone's weights are shared, not duplicated."""
    manifest = manifest or Manifest.load()
    models = [load_harmonizer(weight_id, manifest, device) for weight_id in weight_ids]
    with_backbone = [m for m in models if m.backbone is not None]
    for model in with_backbone[1:]:
        model.backbone = with_backbone[0].backbone
    return models


def predict_transform(checked: Composite, models: Sequence[WhiteBoxHarmonizer]) -> np.ndarray:
    """The transform's arguments (P floats) for this composite: the mean over ``models``, which all
    see the same small copy (about R² pixels, aspect kept; invisible pixels laid over their region's mean)."""
    height, width = checked.mask.shape
    scale = models[0].config.resolution / np.sqrt(height * width)
    size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
    small_mask = cv2.resize(checked.mask, size, interpolation=cv2.INTER_AREA)
    small, small_alpha = small_rgb(checked.image3[..., :checked.color_channels], size, checked.alpha, small_mask)
    params = []
    for model in models:
        device = model.predictor.description_mean.device
        with torch.no_grad():
            rgb = torch.from_numpy(small).permute(2, 0, 1)[None].to(device)
            m = torch.from_numpy(small_mask)[None, None].to(device)
            alpha = torch.from_numpy(small_alpha)[None, None].to(device) if checked.alpha is not None else None
            params.append(model(rgb, m, alpha)[0].double().cpu().numpy())
    return np.mean(params, axis=0)


def apply_global_transform(pixels: np.ndarray, params: np.ndarray, knots: int) -> np.ndarray:
    """curve(M·x + b) on float RGB pixels (…×3) in [0, 1], in NumPy (no torch copy of a 24 MP image)."""
    matrix = (np.eye(3) + params[:9].reshape(3, 3)).astype(np.float32)
    offset = params[9:12].astype(np.float32)
    points = curve_points(torch.from_numpy(params[12:].reshape(1, 3, knots)))[0].numpy().astype(np.float32)
    mixed = pixels @ matrix.T + offset
    out = np.empty_like(mixed)
    for c in range(3):
        position = mixed[..., c] * knots
        segment = np.clip(np.floor(position), 0, knots - 1)
        index = segment.astype(np.int64)
        low, high = points[c][index], points[c][index + 1]
        out[..., c] = low + (position - segment) * (high - low)
    return np.clip(out, 0, 1, out=out)


def harmonize_transform(image: np.ndarray, mask: np.ndarray, models: WhiteBoxHarmonizer | Sequence[WhiteBoxHarmonizer],
                        strength: float = 1.0, progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """Harmonize the masked foreground of ``image`` (H×W×C, C in 1–4, u8/u16/f32) with one predicted
    global colour transform. ``mask`` H×W float in [0, 1]. Returns the input's shape and dtype."""
    models = [models] if isinstance(models, WhiteBoxHarmonizer) else list(models)
    knots = {model.config.curve_knots for model in models}
    if len(knots) != 1:
        raise ValueError(f"harmonizers to average must share their curve size, got {sorted(knots)}")
    curve_knots = knots.pop()
    checked = check_composite(image, mask, strength)
    image3, mask, color_channels = checked.image3, checked.mask, checked.color_channels
    report = progress or (lambda fraction, text: None)
    report(0.05, "Looking at the composite")
    params = predict_transform(checked, models)
    report(0.3, "Applying the colour transform at full resolution")
    result = image.copy()
    out3 = result if result.ndim == 3 else result[..., None]
    rows = np.nonzero(mask.max(axis=1) > 0)[0]
    cols = np.nonzero(mask.max(axis=0) > 0)[0]
    y_start, y_stop, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    rows_per_strip = max(1, STRIP_PIXELS // (x1 - x0))
    for y0 in range(y_start, y_stop, rows_per_strip):
        y1 = min(y0 + rows_per_strip, y_stop)
        block = image3[y0:y1, x0:x1, :color_channels]
        original = to_float(block)
        rgb = np.repeat(original, 3, axis=2) if color_channels == 1 else original
        adjusted = apply_global_transform(rgb, params, curve_knots)
        if color_channels == 1:
            adjusted = adjusted.mean(axis=2, keepdims=True)
        weight = mask[y0:y1, x0:x1, None] * np.float32(strength)
        new = from_float(original + weight * (adjusted - original), image.dtype)
        out3[y0:y1, x0:x1, :color_channels] = np.where(mask[y0:y1, x0:x1, None] > 0, new, block)
        report(0.3 + 0.7 * (y1 - y_start) / (y_stop - y_start), "Applying at full resolution")
    return result
