"""Semantics-aware photo adjustment (SA-AdjustNet): a learned local style, optionally steered by the
user's own semantic adjustment map (Nam & Kim, Sec. 4.4).

Inputs: ``image`` (H×W×C); optionally the user's map, either ``preset_weights`` (H×W×k, k ≤ K presets of
the style's model, any pixel type; channel i is how strongly preset i is painted at a pixel) or one
H×W×1 array ``preset_<i>`` per painted preset (what the GIMP plug-in sends: one per channel). Where the
weights sum to s > 0 the map becomes min(1, s) · (weights / s) + (1 − min(1, s)) · predicted map;
elsewhere the predicted map is kept, so the output changes only where the user painted. The predicted map
is discrete (each pixel one preset, the argmax of Eq. 3), so the exported map given back unchanged
reproduces the automatic result bit for bit.

Watercolor's brush is a fixed procedure (``adjustment_styles.superpixel_brush``), applied to the photo
before the network, which learned that style's colour part.

Params: ``style`` (pop-out, xpro, watercolor), ``head`` ("map": the semantic-adjustment-map model,
needed for personal maps; "direct": Eq. 2 with the continuous context feature; "auto", the default: "direct"
for a plain automatic adjustment, "map" when a map is painted or returned), ``return_map``. Why "auto": on the
select split Eq. 2 is closer to the targets than the map model for every style (Pop-Out 3.13 vs 3.56, Local
Xpro 5.09 vs 6.00, Watercolor 2.22 vs 2.91 Lab L2), as in the paper's Table 1 for two of three styles, while a
personal map needs the discrete map only the map model has.
Outputs: ``image`` (same size, pixel type and alpha); with ``return_map`` also the map that was used:
``preset_<k>`` (H×W×1 u8, 255 where preset k applies, one per preset), ``preset_index`` (H×W×1 u8, the
preset per pixel) and ``preset_names`` (1×n×1 u8: UTF-8 JSON list of K strings saying what each preset
does, measured on the select split when the weights were exported, e.g. "brighter, more saturated").
"""

from __future__ import annotations

import json

import numpy as np
import torch

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, require_image
from core.data.adjustment_styles import network_input
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch
from core.imaging.io import from_float, split_alpha, to_float
from core.models.efficientnet_lite import load_pretrained
from core.models.sa_adjustnet import SAAdjustConfig, adjust_lab, load_trained
from core.protocol import ErrorCode, SemanticError, bad_input
from core.weights import Manifest

STYLES = ("pop-out", "xpro", "watercolor")
HEADS = ("auto", "map", "direct")


def weight_id(style: str) -> str:
    return f"sa-adjustnet-{style}"


def load_model(style: str, device: torch.device):
    """(SA-AdjustNet, global baseline) of a style from the verified weights in the manifest (and, for the
    Lite0 variant, the shared pretrained backbone's own file)."""
    manifest = Manifest.load()
    entry = manifest.entry(weight_id(style))
    state = manifest.load_state_dict(weight_id(style))
    config = SAAdjustConfig.from_dict(entry.config)
    backbone = load_pretrained(manifest) if config.backbone == "lite0" else None
    try:
        model, baseline = load_trained(state, config, backbone)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SemanticError(ErrorCode.weights_corrupt,
                            f"The weights for style '{style}' do not fit this version of the model ({exc}). "
                            "Re-run the installer.") from None
    return model.to(device), baseline.to(device)


def preset_names(style: str, presets: int) -> list[str]:
    """What each preset does, in words, from the weights' manifest entry ("" where it was not measured)."""
    effects = Manifest.load().entry(weight_id(style)).config.get("preset_effects") or []
    names = [str(e.get("words", "")) if isinstance(e, dict) else "" for e in effects[:presets]]
    return names + [""] * (presets - len(names))


def text_array(value) -> np.ndarray:
    """JSON as a 1×n×1 u8 array, the way text travels among the image arrays."""
    return np.frombuffer(json.dumps(value).encode(), np.uint8).reshape(1, -1, 1).copy()


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
    head = get_choice(params, "head", "auto", HEADS)
    return_map = get_bool(params, "return_map", False)
    color, alpha = split_alpha(image)
    gray = image.shape[2] in (1, 2)
    ctx.report(0.02, f"Loading the {style} model")
    model, _ = ctx.models.get(f"sa-adjustnet:{style}:{ctx.device}", lambda: load_model(style, ctx.device))
    mine, coverage = None, None
    painted = painted_weights(arrays, image, model.config.presets)
    if head == "auto":
        head = "map" if painted is not None or return_map else "direct"
    if painted is not None:
        if head != "map":
            raise bad_input("A personal adjustment map needs head 'map' (the semantic-adjustment-map model).")
        mine, coverage = user_map(painted, image, model.config.presets)
    rgb_np = to_float(color).copy()
    if gray:
        rgb_np = np.repeat(rgb_np[..., :1], 3, axis=2)
    if style == "watercolor":
        ctx.report(0.05, "Watercolor brush")
        rgb_np = np.ascontiguousarray(network_input(style, rgb_np), dtype=np.float32)
    lab = rgb_to_lab_torch(torch.from_numpy(rgb_np), dim=-1)
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
        outputs["preset_names"] = text_array(preset_names(style, model.config.presets))
    ctx.report(1.0, "Done")
    return outputs


ACTIONS = [Action("adjust", "Semantics-aware photo adjustment (SA-AdjustNet) with optional personal map", run)]
