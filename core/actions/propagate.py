"""Edit propagation from strokes (DeepProp, Endo et al. 2016).

Inputs: "image" (H×W×C, u8/u16/f32, gray or RGB, alpha kept) and either "strokes" (H×W×4 u8 RGBA
scribbles: transparent = no stroke, each opaque color one class) or params "paths" (GIMP paths as
polylines: [{"name", "color" (the color tag as #rrggbb, or null), "strokes": [[x0, y0, x1, y1, ...]]}]
in image coordinates, with "offset" [x, y] of the layer), rasterized here with "brush_width" (pixels;
absent or 0: 2 % of the layer's short side).

Params: "mode" select (default, as in the CLI and GIMP) | colorize | recolor | masks; "config" (the
named DeepProp configuration, core/propagation/pipeline.CONFIGS: "paper" is the published method);
"superpixels" (count, 0 = one per 100 pixels); "per_pixel"; "smoothing" (λ of Eq. 15, 0 = off; absent:
the configuration's); "color_space" (colorize: lab keeps the gray's CIELab lightness, for a gray made
from luminance as GIMP's; luma keeps it as Rec. 601 luma, for a gray most other software makes; auto
picks the one whose lightness of the stroke colours matches the gray under them; absent: the
configuration's, lab by default); "fg_color"/"bg_color"
(select: stroke pixels near these colors are foreground/background, default red/blue — the plug-in
sends GIMP's FG/BG swatches; also what 'fg'/'bg' path names mean); "hard_selection" (select: threshold
the mask at 0.5); "image_key" (names the image across runs so an edited path re-uses the trained
network; defaults to a hash of the pixels); "seed".

Outputs: select "mask" (H×W×1 u8, soft, or 0/255 with "hard_selection"); colorize/recolor "image"
(same size, type and alpha); masks "masks" (H×W×n u8); always "class_colors" (n×1×3 u8, the class
order of the outputs; select: foreground then background).
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, get_float, get_int, require_image
from core.imaging.io import from_float, to_uint8
from core.propagation import apps
from core.propagation.pipeline import (
    CONFIGS,
    DEFAULT_CONFIG,
    ImageState,
    configured,
    image_fingerprint,
    prepare_rgb,
    propagate,
)
from core.propagation.strokes import (
    DEFAULT_BG,
    DEFAULT_FG,
    default_brush_width,
    labels_for_selection,
    labels_from_scribbles,
    parse_color,
    paths_from_params,
    rasterize_paths,
    rgb_hex,
    selection_side,
)
from core.protocol import bad_input

CACHE_PREFIX = "deepprop-image:"
_LOCK = threading.Lock()  # guards creating the per-image slot; each slot has its own lock


class _Slot:
    def __init__(self):
        self.lock = threading.Lock()
        self.state: ImageState | None = None


def _color(params: dict, name: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    value = params.get(name)
    if value in (None, ""):
        return default
    color = parse_color(str(value))
    if color is None:
        raise bad_input(f"'{name}' must be #rrggbb or a CSS color name; got {value!r}.")
    return color


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_strokes(arrays: Arrays, params: dict, height: int, width: int, fg, bg, mode: str = "masks"):
    """The stroke classes: one per color, or for select mode foreground and background by color."""
    if "strokes" in arrays:
        scribbles = require_image(arrays, "strokes", channels=(3, 4))
        if scribbles.shape[:2] != (height, width):
            raise bad_input(
                f"The scribble layer is {scribbles.shape[1]}×{scribbles.shape[0]} but the image is "
                f"{width}×{height}; they must be the same size."
            )
        if mode == "select":
            return labels_for_selection(to_uint8(scribbles), fg, bg)
        return labels_from_scribbles(to_uint8(scribbles))
    if "paths" in params:
        offset = params.get("offset", [0, 0])
        if not (isinstance(offset, list | tuple) and len(offset) == 2 and all(_is_finite_number(v) for v in offset)):
            raise bad_input(f"'offset' must be [x, y], the layer's offsets as two numbers; got {offset!r:.60}.")
        brush = get_float(params, "brush_width", 0.0, 0.0, 500.0)
        if brush == 0.0:
            brush = default_brush_width(height, width)
        elif brush < 1.0:
            raise bad_input(f"'brush_width' must be 0 (automatic) or between 1 and 500 pixels; got {brush}.")
        paths = paths_from_params(params["paths"], (float(offset[0]), float(offset[1])))
        if mode != "select":
            return labels_from_scribbles(rasterize_paths(paths, height, width, brush, fg, bg))
        for path in paths:
            color = path.color(fg, bg)
            if selection_side(color, fg, bg) is None:
                raise bad_input(
                    f"Path '{path.name}' has the color {rgb_hex(color)}, which is neither the foreground "
                    f"({rgb_hex(fg)}) nor the background ({rgb_hex(bg)}) color. Name it 'fg' or 'bg' "
                    "(or give it one of those colors) to use it for a selection."
                )
        return labels_for_selection(rasterize_paths(paths, height, width, brush, fg, bg), fg, bg)
    raise bad_input("No strokes were sent: give a scribble layer ('strokes') or paths.")


def _backbone(ctx: JobContext):
    """The frozen ImageNet backbone of the semantic features, loaded once per daemon (kept in the
    model cache like the networks of the other actions)."""
    from core.models.efficientnet_lite import load_pretrained

    return ctx.models.get("efficientnet-lite0:propagate", lambda: load_pretrained(device=ctx.device))


def run(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    mode = get_choice(params, "mode", apps.DEFAULT_MODE, apps.MODES)
    hard_selection = get_bool(params, "hard_selection", False)
    fg, bg = _color(params, "fg_color", DEFAULT_FG), _color(params, "bg_color", DEFAULT_BG)
    h, w = image.shape[:2]
    if h * w < 4:
        raise bad_input("The image is too small to propagate strokes over.")
    strokes = read_strokes(arrays, params, h, w, fg, bg, mode)
    config = get_choice(params, "config", DEFAULT_CONFIG, tuple(CONFIGS))
    options = configured(
        mode,
        config,
        superpixels=get_int(params, "superpixels", 0, 0, h * w),
        per_pixel=get_bool(params, "per_pixel", False),
        fg=fg,
        bg=bg,
        seed=get_int(params, "seed", 0, 0, 2**31 - 1),
    )
    if params.get("color_space") is not None:  # colorize: "lab" keeps L*, "luma" Y', "auto" either
        options = replace(options, color_space=get_choice(params, "color_space", "lab", apps.COLOR_SPACES))
    if params.get("smoothing") is not None:  # λ of Eq. 15; absent: the configuration's
        strength = get_float(params, "smoothing", options.smoothing.strength, 0.0, 1000.0)
        options = replace(options, smoothing=replace(options.smoothing, strength=strength))
    ctx.report(0.01, "Reading strokes")
    rgb, alpha, _ = prepare_rgb(image)
    key = params.get("image_key") or None
    if key is not None and not isinstance(key, str):
        raise bad_input("'image_key' must be a string.")
    cache_key = CACHE_PREFIX + (key or image_fingerprint(rgb))
    with _LOCK:
        slot = ctx.models.get(cache_key, _Slot)
    with slot.lock:
        result, slot.state = propagate(
            rgb, strokes, options, slot.state, ctx.report, ctx.device, backbone=lambda: _backbone(ctx)
        )

    colors = result.colors.reshape(-1, 1, 3).astype(np.uint8)
    if mode in ("colorize", "recolor"):
        out = from_float(result.output, image.dtype)
        if alpha is not None:
            out = np.concatenate([out, alpha], axis=2)
        return {"image": out, "class_colors": colors}
    if mode == "select":
        mask = result.output
        if hard_selection:
            # Every pixel fully in or out: the class with the higher propagated probability wins.
            mask = (mask >= 0.5).astype(np.float32)
        return {"mask": from_float(mask, np.uint8)[..., None], "class_colors": colors}
    return {"masks": from_float(result.output, np.uint8), "class_colors": colors}


ACTIONS = [
    Action("propagate", "Propagate stroke edits (colorize, recolor, select, masks) with DeepProp", run)
]
