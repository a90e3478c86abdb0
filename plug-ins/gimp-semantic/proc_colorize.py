"""Filters > Semantic > Colorize... and Colorize from Semantic Map... (Ho et al., semantic-driven colorization).

"Colorize..." segments the gray photo, adds the semantic map as a layer (one flat color per class; the
classes are installed as the palette "Semantic classes" so corrections can be painted with exact class
colors) and the colorized layer. "Colorize from Semantic Map..." colorizes again from a map layer the
user picked (and perhaps repainted). A grayscale-mode image is converted to RGB inside the undo group.
"""

from __future__ import annotations

from dataclasses import replace

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from daemon_link import connect  # noqa: E402
from gi.repository import Gegl, Gimp  # noqa: E402
from gimp_bridge import Progress, add_result_layer, read_drawable, undo_group  # noqa: E402
from procedures import RW, image_procedure  # noqa: E402
from semantic_protocol import Array, bad_input  # noqa: E402

NAME = "plug-in-semantic-colorize"
NAME_FROM_MAP = "plug-in-semantic-colorize-from-map"
PALETTE_NAME = "Semantic classes"
MAP_LAYER_NAME = "Semantic map"


def create(plugin, name):
    procedure = image_procedure(
        plugin, name, run, "_Colorize...",
        "Colorize a gray photo, guided by a predicted semantic map",
        "Predicts what each pixel shows (sky, tree, road, ...) and colorizes the photo from that. Adds "
        f"two layers: '{MAP_LAYER_NAME}' (one flat color per class; the classes are installed as the "
        f"palette '{PALETTE_NAME}') and the colorized photo, which keeps the original's lightness. "
        "Repaint the map with the palette's colors (antialiasing off) and run 'Colorize from Semantic "
        "Map...' to change the colors. A grayscale image is converted to RGB.")
    procedure.add_boolean_argument("add-map-layer", "Add the semantic _map layer",
                                   "Add the predicted map as an editable layer", True, RW)
    return procedure


def create_from_map(plugin, name):
    procedure = image_procedure(
        plugin, name, run_from_map, "Colorize from Semantic _Map...",
        "Colorize a gray photo from a semantic map layer you picked (and perhaps repainted)",
        f"Paint class colors from the palette '{PALETTE_NAME}' on the map layer (created by 'Colorize...'), "
        "then run this on the photo layer and pick the map layer. Colors that are not class colors are "
        "reported with where they are, or snapped to the nearest class if you ask for that.")
    procedure.add_layer_argument("map-layer", "Semantic _map layer",
                                 "Layer holding class colors (or class ids in a grayscale image)", False, RW)
    procedure.add_boolean_argument("snap", "_Snap unknown colors to the nearest class",
                                   "Instead of stopping with an error, map off-palette colors to the nearest "
                                   "class color (antialiased brush edges)", False, RW)
    return procedure


def run(procedure, image, drawable, config):
    add_map = config.get_property("add-map-layer")
    pixels = read_drawable(image, drawable)
    progress = Progress("Colorizing")
    try:
        client = connect(lambda text: progress(0.0, text))
        result = client.run("colorize", {}, [pixels.array], on_progress=progress)
        gpl = client.run("semantic_palette", {}, []).arrays["gpl"] if add_map else None
    finally:
        progress.end()
    with undo_group(image):
        color_pixels = _ensure_rgb(image, pixels)
        below = drawable
        if add_map:
            install_palette(bytes(gpl.data).decode())
            below = add_result_layer(image, drawable, color_pixels, result.arrays["map_rgb"], MAP_LAYER_NAME)
            below.set_visible(False)  # shown when the user wants to repaint it
        add_result_layer(image, below, color_pixels, result.arrays["image"], f"{drawable.get_name()} colorized")


def run_from_map(procedure, image, drawable, config):
    map_layer = config.get_property("map-layer")
    snap = config.get_property("snap")
    if map_layer is None:
        raise bad_input("Pick the semantic map layer (made by 'Colorize...', possibly repainted).")
    pixels = read_drawable(image, drawable)
    semantic = read_map_layer(image, map_layer, pixels)
    progress = Progress("Colorizing from the semantic map")
    try:
        client = connect(lambda text: progress(0.0, text))
        result = client.run("colorize", {"snap": snap}, [pixels.array, semantic], on_progress=progress)
    finally:
        progress.end()
    with undo_group(image):
        color_pixels = _ensure_rgb(image, pixels)
        # on top of the photo's layer group, so the new result is what the user sees
        parent = drawable.get_parent()
        top = (parent.get_children() if parent is not None else image.get_layers())[0]
        add_result_layer(image, top, color_pixels, result.arrays["image"],
                         f"{drawable.get_name()} colorized from {map_layer.get_name()}")


def read_map_layer(image, map_layer, pixels) -> Array:
    """The map layer's pixels over the photo layer's area (outside the map layer: unlabeled)."""
    if not isinstance(map_layer, Gimp.Layer):
        raise bad_input("The semantic map must be a layer.")
    _, mx, my = map_layer.get_offsets()
    rect = Gegl.Rectangle.new(pixels.offset_x - mx, pixels.offset_y - my, pixels.width, pixels.height)
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    fmt, channels = ("Y' u8", 1) if gray else ("R'G'B'A u8", 4)  # class ids in gray images, colors in RGB
    data = map_layer.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE)
    return Array("map", "u8", (pixels.height, pixels.width, channels), data)


def _ensure_rgb(image, pixels):
    if image.get_base_type() == Gimp.ImageBaseType.GRAY:
        image.convert_rgb()
    return replace(pixels, gray=False)


def install_palette(gpl_text: str) -> None:
    """Create (or refresh) the palette 'Semantic classes' from the daemon's .gpl text: every class, named
    '<id> <class>'. A palette left by other weights is replaced even when it has as many entries (a class
    list of the same length with other classes would otherwise paint wrong ids)."""
    entries = []
    for line in gpl_text.splitlines()[4:]:
        rgb, _, label = line.partition("\t")
        r, g, b = (int(v) for v in rgb.split())
        entries.append((label, f"#{r:02x}{g:02x}{b:02x}"))
    existing = Gimp.Palette.get_by_name(PALETTE_NAME)
    if existing is not None:
        # the entry names say everything: each class's color is a fixed function of its id
        if palette_entry_names(existing) == [label for label, _ in entries]:
            return
        existing.delete()
    palette = Gimp.Palette.new(PALETTE_NAME)
    palette.set_columns(4)
    for label, hex_color in entries:
        palette.add_entry(label, Gegl.Color.new(hex_color))


def palette_entry_names(palette) -> list[str]:
    names = []
    for index in range(len(palette.get_colors())):
        name = palette.get_entry_name(index)
        names.append(name[-1] if isinstance(name, tuple) else name)  # GIMP 3.0 returns (success, name)
    return names


PROCEDURES = {NAME: create, NAME_FROM_MAP: create_from_map}
