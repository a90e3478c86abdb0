"""Semantic-driven colorization (Ho et al.): segment a gray photo, colorize it from a (user-editable) map.

"segment"   image → "map" (H×W×1 uint8 class ids, 0 = unlabeled) and "map_rgb" (palette colors)
"colorize"  image [+ "map": ids in one channel or palette colors in RGB(A)] → "image" (same size, type,
            alpha; the input's L kept), "map" and "map_rgb" (the map that was used: ids, palette colors)

Params: "use_map" (colorize: false = colorize without any map), "snap" (map colors not in the palette go
to the nearest class instead of raising an error naming where they are), "segmenter" (segment, and
colorize's predicted map: "pretrained", the default, on the ImageNet backbone, or "gridnet", GridNet
trained from scratch).
"""

from __future__ import annotations

import numpy as np

from core.actions.base import Action, Arrays, JobContext
from core.actions.inputs import get_bool, get_choice, require_image
from core.colorization import pipeline
from core.colorization.palette import gimp_palette, read_map, render
from core.protocol import bad_input


def _segmenter(params: dict, ctx: JobContext) -> pipeline.Segmenter:
    name = get_choice(params, "segmenter", pipeline.DEFAULT_SEGMENTER, tuple(pipeline.SEGMENTERS))
    weight_id = pipeline.SEGMENTERS[name]
    return ctx.models.get(f"{weight_id}@{ctx.device}", lambda: pipeline.load_segmenter(ctx.device, weight_id))


def _colorizer(ctx: JobContext) -> pipeline.Colorizer:
    return ctx.models.get(f"{pipeline.COLORIZER_WEIGHTS}@{ctx.device}",
                          lambda: pipeline.load_colorizer(ctx.device))


def _predict_map(lightness: np.ndarray, params: dict,
                 ctx: JobContext) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    segmenter = _segmenter(params, ctx)
    ctx.report(0.3, "Segmenting")
    ids, ids_small = pipeline.segment(lightness, segmenter)
    return ids, ids_small, segmenter.classes


def segment(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    ctx.report(0.05, "Reading lightness")
    lightness, _ = pipeline.image_lightness(image)
    ids, _, classes = _predict_map(lightness, params, ctx)
    ctx.report(1.0, "Done")
    return {"map": ids[..., None], "map_rgb": render(ids, len(classes))}


def colorize(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    image = require_image(arrays)
    use_map = get_bool(params, "use_map", True)
    snap = get_bool(params, "snap", False)
    colorizer = _colorizer(ctx)
    ctx.report(0.05, "Reading lightness")
    lightness, _ = pipeline.image_lightness(image)
    ids = ids_small = None
    if "map" in arrays and use_map:
        user_map = arrays["map"]
        if user_map.shape[:2] != image.shape[:2]:
            raise bad_input(f"The semantic map is {user_map.shape[1]}×{user_map.shape[0]} but the image is "
                            f"{image.shape[1]}×{image.shape[0]}; they must be the same size.")
        ids = read_map(np.asarray(user_map), colorizer.classes, snap=snap)
    elif use_map:
        ids, ids_small, _ = _predict_map(lightness, params, ctx)
    ctx.report(0.6, "Colorizing")
    result, _ = pipeline.colorize(image, colorizer, ids, lightness, ids_small)
    ctx.report(1.0, "Done")
    out = {"image": result}
    if ids is not None:
        out["map"], out["map_rgb"] = ids[..., None], render(ids, len(colorizer.classes))
    return out


def palette(arrays: Arrays, params: dict, ctx: JobContext) -> Arrays:
    """The class palette as GIMP .gpl text in a u8 array (for the plug-in, which has no model files)."""
    text = gimp_palette(_colorizer(ctx).classes).encode()
    return {"gpl": np.frombuffer(text, np.uint8).reshape(-1, 1)}


ACTIONS = [
    Action("segment", "Semantic map (class ids and palette colors) of a gray photo", segment),
    Action("colorize", "Colorize a gray photo from its semantic map (predicted or given)", colorize),
    Action("semantic_palette", "The semantic classes as a GIMP palette (.gpl text)", palette),
]
