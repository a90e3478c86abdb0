"""Filters > Semantic > Propagate Path Strokes... and Propagate Scribble Layer... (DeepProp, Endo et al.).

Paths: every path of the image is one stroke class. Its color comes from its name ("#rrggbb" or a CSS
color name anywhere in it; "fg"/"bg" mean the foreground/background stroke colors), else from its color
tag (mapped below), else the daemon names the path that has none. Polylines come from
``stroke_interpolate`` and are rasterized by the daemon with the brush width (0: 2 % of the layer's short
side). Scribbles: a transparent layer (by default the one directly above the active layer) whose opaque
pixels are strokes; each distinct color is a class, or in Select mode pixels near the foreground stroke
color are foreground and those near the background color background.

The stroke colors are GIMP's FG/BG swatches by default (so a user paints with FG and BG, black and white
unless changed), or the typed fg/bg colors (red/blue by default, what this plug-in used before).

Results: select (the default mode, as in the CLI) → the selection plus a saved channel, soft or hard;
colorize/recolor → a new layer; masks → one channel per class. All in one undo group; on bad input
nothing changes.
"""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from daemon_link import connect  # noqa: E402
from gi.repository import Gegl, Gimp  # noqa: E402
from gimp_bridge import Progress, add_result_layer, context_colors, read_drawable, undo_group  # noqa: E402
from procedures import RW, choice, image_procedure  # noqa: E402
from semantic_protocol import Array, bad_input  # noqa: E402

PATHS = "plug-in-semantic-propagate-paths"
SCRIBBLES = "plug-in-semantic-propagate-scribbles"
MODES = (
    ("select", "Select (foreground/background strokes → selection)"),
    ("colorize", "Colorize (strokes' colors, image's lightness)"),
    ("recolor", "Recolor (strokes' hue and chroma)"),
    ("masks", "Masks (one channel per stroke color)"),
)
DEFAULT_MODE = "select"  # the daemon's action and the CLI default to select too
# The daemon's named DeepProp configurations (core/propagation/pipeline.CONFIGS); DEFAULT_METHOD is
# its DEFAULT_CONFIG, the CLI's default too (a unit test compares them).
METHODS = (
    ("semantic", "DeepProp + semantic features (default: ImageNet features, strokes as constraints)"),
    ("paper", "DeepProp as published (Endo et al. 2016)"),
)
DEFAULT_METHOD = "semantic"
STROKE_COLORS = (
    ("context", "GIMP's foreground/background colors (FG/BG swatches)"),
    ("typed", "The colors typed below (red/blue unless changed)"),
)
TYPED_FG, TYPED_BG = "#ff0000", "#0000ff"
# GIMP's color tags (Layers/Paths dialog) as stroke colors: the tag's swatch color.
COLOR_TAGS = {
    "BLUE": "#5475b9",
    "GREEN": "#72a05a",
    "YELLOW": "#e3c63c",
    "ORANGE": "#e1873d",
    "BROWN": "#9b6a3c",
    "RED": "#d13c3c",
    "VIOLET": "#9f5bc2",
    "GRAY": "#808080",
}
INTERPOLATION_PRECISION = 0.5


def _common_arguments(procedure):
    procedure.add_choice_argument(
        "mode", "_Mode", "What to do with the strokes", choice(*MODES), DEFAULT_MODE, RW
    )
    procedure.add_choice_argument(
        "method", "Me_thod", "Which DeepProp configuration learns the strokes", choice(*METHODS), DEFAULT_METHOD, RW
    )
    procedure.add_choice_argument(
        "stroke-colors",
        "Stroke _colors",
        "Which colors mark foreground and background strokes (and what 'fg'/'bg' path names mean)",
        choice(*STROKE_COLORS),
        "context",
        RW,
    )
    procedure.add_boolean_argument(
        "hard-selection",
        "_Hard selection",
        "Select mode: every pixel fully selected or not (the selection thresholded at 50 %) instead of "
        "soft edges",
        False,
        RW,
    )
    procedure.add_int_argument(
        "superpixels",
        "Super_pixels",
        "Number of SLIC superpixels (0 = one per 100 pixels; more = finer, slower)",
        0,
        1_000_000,
        0,
        RW,
    )
    procedure.add_double_argument(
        "smoothing",
        "S_moothing",
        "Edge-aware post-processing strength λ (0 = off; 5 = the paper's and both methods' default)",
        0.0,
        100.0,
        5.0,
        RW,
    )
    procedure.add_boolean_argument(
        "per-pixel",
        "_Per-pixel estimation",
        "Estimate every pixel instead of every superpixel (slower)",
        False,
        RW,
    )
    procedure.add_string_argument(
        "fg-color",
        "_Foreground color",
        "Foreground stroke color (#rrggbb or a color name) when Stroke colors is 'typed'",
        TYPED_FG,
        RW,
    )
    procedure.add_string_argument(
        "bg-color",
        "_Background color",
        "Background stroke color (#rrggbb or a color name) when Stroke colors is 'typed'",
        TYPED_BG,
        RW,
    )


def create_paths(plugin, name):
    procedure = image_procedure(
        plugin,
        name,
        run_paths,
        "Propagate _Path Strokes...",
        "Spread edits drawn as paths over the layer (DeepProp)",
        "Each path is a stroke; its color comes from its name (#rrggbb or a color name such as 'sky blue', "
        "or 'fg'/'bg': the foreground/background stroke colors) or its color tag. A small network learns "
        "this image from the strokes and propagates them: Select (the default) sets the selection from "
        "paths named 'fg' (on the object) and 'bg' (around it), soft or hard; Colorize and Recolor add a "
        "new layer; Masks adds one channel per color. Stroke colors: GIMP's FG/BG swatches (default) or "
        "the typed colors (red/blue unless changed, as in earlier versions). Brush width 0 draws the "
        "paths 2 % of the layer's short side wide. Run it again after editing a path: the trained network "
        "is reused.",
    )
    _common_arguments(procedure)
    procedure.add_double_argument(
        "brush-width",
        "_Brush width",
        "Width of the path strokes in pixels (0 = 2 % of the layer's short side)",
        0.0,
        500.0,
        0.0,
        RW,
    )
    return procedure


def create_scribbles(plugin, name):
    procedure = image_procedure(
        plugin,
        name,
        run_scribbles,
        "Propagate _Scribble Layer...",
        "Spread edits painted on a transparent layer over the active layer (DeepProp)",
        "Paint strokes on a transparent layer above the photo, select the photo layer and run this. "
        "Transparent pixels mean 'no stroke'. Select (the default) sets the selection: paint the object "
        "with GIMP's foreground color and around it with the background color (black and white unless "
        "changed; press X to swap them while painting); soft brush edges are fine. Hard selection makes "
        "every pixel fully in or out. Stroke colors 'typed' uses the typed colors instead (red = "
        "foreground, blue = background unless changed, as in earlier versions). Colorize and Recolor "
        "(one color per region) add a new layer, Masks adds one channel per color.",
    )
    _common_arguments(procedure)
    procedure.add_layer_argument(
        "scribble-layer",
        "Scribble _layer",
        "The layer with the strokes (empty: the layer directly above)",
        True,
        RW,
    )
    return procedure


def _params(config, image, drawable) -> dict:
    mode = config.get_property("mode")
    fg, bg = _stroke_colors(config, image, mode)
    return {
        "mode": mode,
        "config": config.get_property("method"),
        "superpixels": int(config.get_property("superpixels")),
        "smoothing": float(config.get_property("smoothing")),
        "per_pixel": bool(config.get_property("per-pixel")),
        "fg_color": fg,
        "bg_color": bg,
        "hard_selection": bool(config.get_property("hard-selection")),
        "image_key": f"gimp:{image.get_id()}:{drawable.get_id()}",
    }


def _stroke_colors(config, image, mode: str) -> tuple[str, str]:
    """The foreground and background stroke colors as '#rrggbb' (or typed names the daemon parses)."""
    if config.get_property("stroke-colors") == "typed":
        return config.get_property("fg-color") or TYPED_FG, config.get_property("bg-color") or TYPED_BG
    fg, bg = context_colors(image)
    if mode == "select" and fg == bg:
        gray = " in this grayscale image" if image.get_base_type() == Gimp.ImageBaseType.GRAY else ""
        raise bad_input(
            f"GIMP's foreground and background colors are both {fg}{gray}, so foreground and background "
            "strokes cannot be told apart. Press D for black and white (or pick another background "
            "color), paint the object with the foreground color and around it with the background color."
        )
    return fg, bg


def path_payload(image) -> list[dict]:
    paths = image.get_paths()
    if not paths:
        raise bad_input(
            "This image has no paths. Draw at least two paths with the Paths tool, named 'fg' (on the "
            "object) and 'bg' (around it) for Select, or with a color (e.g. 'sky #4080ff', 'grass green')."
        )
    payload = []
    for path in paths:
        strokes = []
        for sid in path.get_strokes():
            coords, closed = path.stroke_interpolate(sid, INTERPOLATION_PRECISION)
            coords = [float(v) for v in coords]
            if closed and len(coords) >= 4:
                coords += coords[:2]
            if coords:
                strokes.append(coords)
        tag = path.get_color_tag()
        tag_name = tag.value_nick.upper() if hasattr(tag, "value_nick") else str(tag).rsplit(".", 1)[-1]
        payload.append({"name": path.get_name(), "color": COLOR_TAGS.get(tag_name), "strokes": strokes})
    return payload


def run_paths(procedure, image, drawable, config):
    params = _params(config, image, drawable)
    _check_mode(image, params["mode"])
    pixels = read_drawable(image, drawable)
    params.update(
        paths=path_payload(image),
        offset=[pixels.offset_x, pixels.offset_y],
        brush_width=float(config.get_property("brush-width")),  # 0: the daemon picks 2 % of the short side
    )
    _run(image, drawable, pixels, params, [pixels.array], "paths")


def run_scribbles(procedure, image, drawable, config):
    params = _params(config, image, drawable)
    _check_mode(image, params["mode"])
    scribble = config.get_property("scribble-layer") or _layer_above(image, drawable)
    if scribble is None:
        raise bad_input(
            "No scribble layer: add a transparent layer directly above this one and paint the "
            "strokes on it, or pick the scribble layer in the dialog."
        )
    if scribble.get_id() == drawable.get_id():
        raise bad_input("The scribble layer is the active layer. Select the photo layer and run this again.")
    pixels = read_drawable(image, drawable)
    _, sx, sy = scribble.get_offsets()
    rect = Gegl.Rectangle.new(pixels.offset_x - sx, pixels.offset_y - sy, pixels.width, pixels.height)
    data = scribble.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE)
    strokes = Array("strokes", "u8", (pixels.height, pixels.width, 4), data)
    _run(image, drawable, pixels, params, [pixels.array, strokes], f"scribbles '{scribble.get_name()}'")


def _layer_above(image, drawable):
    parent = drawable.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    position = image.get_item_position(drawable)
    return siblings[position - 1] if position > 0 else None


def _check_mode(image, mode: str) -> None:
    if mode in ("colorize", "recolor") and image.get_base_type() != Gimp.ImageBaseType.RGB:
        raise bad_input(
            f"{mode.capitalize()} makes color: convert the image with Image > Mode > RGB first "
            "(the gray values are kept as lightness)."
        )


def _run(image, drawable, pixels, params: dict, arrays: list, source: str) -> None:
    mode = params["mode"]
    progress = Progress("Propagating strokes")
    try:
        client = connect(lambda text: progress(0.0, text))
        result = client.run("propagate", params, arrays, on_progress=progress)
    finally:
        progress.end()
    out = result.arrays
    colors = bytes(out["class_colors"].data)
    hexes = ["#" + colors[i : i + 3].hex() for i in range(0, len(colors), 3)]
    with undo_group(image):
        if mode in ("colorize", "recolor"):
            add_result_layer(
                image,
                drawable,
                pixels,
                out["image"],
                f"{drawable.get_name()} {mode}d ({len(hexes)} strokes from {source})",
            )
        elif mode == "select":
            channel = _add_channel(
                image, pixels, f"Propagated selection ({source})", "#ff0000", bytes(out["mask"].data), 0
            )
            image.select_item(Gimp.ChannelOps.REPLACE, channel)
        else:
            masks = bytes(out["masks"].data)
            n = len(hexes)
            for k, color in enumerate(hexes):
                _add_channel(image, pixels, f"propagated {color}", color, masks[k::n], k)
    Gimp.displays_flush()


def _add_channel(image, pixels, name: str, color: str, data: bytes, position: int):
    channel = Gimp.Channel.new(
        image, name, image.get_width(), image.get_height(), 50.0, Gegl.Color.new(color)
    )
    channel.set_visible(False)
    image.insert_channel(channel, None, position)
    buffer = channel.get_buffer()
    buffer.set(
        Gegl.Rectangle.new(pixels.offset_x, pixels.offset_y, pixels.width, pixels.height), "Y u8", data
    )
    buffer.flush()
    channel.update(0, 0, image.get_width(), image.get_height())
    return channel


PROCEDURES = {PATHS: create_paths, SCRIBBLES: create_scribbles}
