"""Semantics-aware photo adjustment (SA-AdjustNet): a learned local style, optionally steered by the
user's own semantic adjustment map (Nam & Kim, Sec. 4.4).

Inputs: ``image`` (H×W×C); optionally the user's map, either ``preset_weights`` (H×W×k, k ≤ K presets of
the style's model, any pixel type; channel i is how strongly preset i is painted at a pixel) or one
H×W×1 array ``preset_<i>`` per painted preset (what the GIMP plug-in sends: one per channel). Where the
weights sum to s > 0 the map becomes min(1, s) · (weights / s) + (1 − min(1, s)) · predicted map;
elsewhere the predicted map is kept, so the output changes only where the user painted.

Params: ``style`` (pop-out, xpro, watercolor), ``head`` ("map": the semantic-adjustment-map model,
needed for personal maps; "direct": Eq. 2 with the continuous context feature), ``return_map``.
Outputs: ``image`` (same size, pixel type and alpha); with ``return_map`` also the map that was used:
``preset_<k>`` (H×W×1 u8, p(k | x) · 255, one per preset) and ``preset_index`` (H×W×1 u8, argmax).
"""

from __future__ import annotations

import numpy as np
import torch

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, require_image
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch
from core.imaging.io import from_float, split_alpha, to_float
from core.models.sa_adjustnet import SAAdjustConfig, adjust_lab, load_trained
from core.protocol import ErrorCode, SemanticError, bad_input
from core.weights import Manifest

STYLES = ("pop-out", "xpro", "watercolor")
HEADS = ("map", "direct")


def weight_id(style: str) -> str:
    return f"sa-adjustnet-{style}"


def load_model(style: str, device: torch.device):
    """(SA-AdjustNet, global baseline) of a style from the verified weights in the manifest."""
    manifest = Manifest.load()
    entry = manifest.entry(weight_id(style))
    state = manifest.load_state_dict(weight_id(style))
    try:
        model, baseline = load_trained(state, SAAdjustConfig.from_dict(entry.config))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SemanticError(ErrorCode.weights_corrupt,
                            f"The weights for style '{style}' do not fit this version of the model ({exc}). "
                            "Re-run the installer.") from None
    return model.to(device), baseline.to(device)


def user_map(weights: np.ndarray, like: np.ndarray, presets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Painted preset weights (H×W×k) → (normalized map H×W×K, coverage H×W)."""
    if weights.ndim == 2:
        weights = weights[..., None]
    if weights.ndim != 3 or weights.shape[:2] != like.shape[:2]:
        raise bad_input(f"The adjustment map is {list(weights.shape)} but the image is "
                        f"{like.shape[1]}×{like.shape[0]}; give one channel per preset at the image's size.")
    if weights.shape[2] > presets:
        raise bad_input(f"The adjustment map has {weights.shape[2]} channels but this style has only "
                        f"{presets} presets (0–{presets - 1}).")
    if weights.dtype == np.float32 and not np.isfinite(weights).all():
        raise bad_input("The adjustment map contains NaN or infinite values.")
    w = torch.from_numpy(to_float(weights).copy())
    w = torch.cat([w, torch.zeros(*w.shape[:2], presets - w.shape[2])], -1)
    total = w.sum(-1)
    normalized = w / total.clamp_min(1e-6).unsqueeze(-1)
    return normalized, total.clamp(0, 1)


def painted_weights(arrays: Arrays, like: np.ndarray, presets: int) -> np.ndarray | None:
    """The user's map from ``preset_weights`` or from per-preset ``preset_<k>`` arrays (None if neither)."""
    if "preset_weights" in arrays:
        return arrays["preset_weights"]
    named = {}
    for name, array in arrays.items():
        if name.startswith("preset_") and name[7:].isdigit():
            k = int(name[7:])
            if k >= presets:
                raise bad_input(f"'{name}': this style has presets 0–{presets - 1} only.")
            if array.shape[:2] != like.shape[:2] or (array.ndim == 3 and array.shape[2] != 1):
                raise bad_input(f"'{name}' must be one channel of the image's size "
                                f"({like.shape[1]}×{like.shape[0]}); got {list(array.shape)}.")
            named[k] = to_float(array.reshape(array.shape[:2]))
    if not named:
        return None
    stacked = np.zeros(like.shape[:2] + (max(named) + 1,), np.float32)
    for k, weight in named.items():
        stacked[..., k] = weight
    return stacked


def run(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    style = get_choice(params, "style", "pop-out", STYLES)
    head = get_choice(params, "head", "map", HEADS)
    return_map = get_bool(params, "return_map", False)
    color, alpha = split_alpha(image)
    gray = image.shape[2] in (1, 2)
    ctx.report(0.02, f"Loading the {style} model")
    model, _ = ctx.models.get(f"sa-adjustnet:{style}:{ctx.device}", lambda: load_model(style, ctx.device))
    mine, coverage = None, None
    painted = painted_weights(arrays, image, model.config.presets)
    if painted is not None:
        if head != "map":
            raise bad_input("A personal adjustment map needs head 'map' (the semantic-adjustment-map model).")
        mine, coverage = user_map(painted, image, model.config.presets)
    rgb = torch.from_numpy(to_float(color).copy())
    lab = rgb_to_lab_torch(rgb, dim=-1)
    ctx.report(0.1, "Adjusting")
    try:
        adjusted = adjust_lab(model, lab, head=head, user_map=mine, user_coverage=coverage,
                              return_map=return_map, progress=lambda f: ctx.report(0.1 + 0.85 * f, "Adjusting"))
    except torch.OutOfMemoryError:
        raise SemanticError(ErrorCode.out_of_memory, "Out of memory while adjusting; try the CPU device or a "
                                                     "smaller layer.") from None
    out, probabilities = adjusted if return_map else (adjusted, None)
    if gray:
        out[..., 1:] = 0
    result = lab_to_rgb_torch(out, dim=-1).numpy()
    result = from_float(result[..., :1] if gray else result, image.dtype)
    if alpha is not None:
        result = np.concatenate([result, alpha], axis=2)
    outputs = {"image": result}
    if return_map:
        levels = (probabilities.numpy() * 255 + 0.5).astype(np.uint8)
        for k in range(levels.shape[2]):
            outputs[f"preset_{k}"] = levels[..., k:k + 1]
        outputs["preset_index"] = probabilities.argmax(-1, keepdim=True).numpy().astype(np.uint8)
    ctx.report(1.0, "Done")
    return outputs


ACTIONS = [Action("adjust", "Semantics-aware photo adjustment (SA-AdjustNet) with optional personal map", run)]
