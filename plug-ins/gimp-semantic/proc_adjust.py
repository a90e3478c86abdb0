"""Filters > Semantic > Semantic Auto-Adjust... and Adjust with My Map... (SA-AdjustNet, Nam & Kim).

Auto-Adjust applies a learned local style (Foreground Pop-Out, Local Xpro, Watercolor) as a new layer and
can add the predicted semantic adjustment map as K channels named by what each preset does, e.g.
"preset 1: brighter, more saturated (pop-out)" (the map is discrete: each pixel is white in exactly one).
Adjust with My Map applies the painted map: with channels named "preset <k>…" (channel k's value = how
much of preset k applies; start from the exported ones — given back unchanged they reproduce the automatic
layer exactly) or with the selection: one preset inside, another outside (or the automatic map outside).
"""

from __future__ import annotations

import json
import re

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from daemon_link import connect  # noqa: E402
from gi.repository import Gegl, Gimp  # noqa: E402
from gimp_bridge import (  # noqa: E402
    Progress,
    add_result_layer,
    read_channel,
    read_drawable,
    read_selection,
    undo_group,
)
from procedures import RW, choice, image_procedure  # noqa: E402
from semantic_protocol import Array, bad_input  # noqa: E402

AUTO = "plug-in-semantic-auto-adjust"
MY_MAP = "plug-in-semantic-adjust-my-map"
STYLES = (("pop-out", "Foreground Pop-Out"), ("xpro", "Local Xpro"), ("watercolor", "Watercolor"))
SOURCES = (("channels", "Channels named 'preset 0' … 'preset 3'"),
           ("selection", "The selection: one preset inside, another outside"))
PRESETS = 4  # the largest K of the shipped models (2 / 4 / 2); the daemon refuses a preset a style lacks
INVERT = bytes(range(255, -1, -1))  # u8 → 255 − u8, for the outside of the selection
CHANNEL_NAME = re.compile(r"^preset (\d+)\b")
COLORS = ("red", "lime", "blue", "yellow", "cyan", "magenta", "orange", "purple")


def create_auto(plugin, name):
    procedure = image_procedure(
        plugin, name, run_auto, "Semantic _Auto-Adjust...",
        "Apply a learned, content-aware photo style as a new layer",
        "SA-AdjustNet adjusts tone and colour per pixel depending on what the pixel shows (Nam & Kim, "
        "Deep Semantics-Aware Photo Adjustment). The result is a new layer above the source. Optionally the "
        "predicted semantic adjustment map is added as channels, one per preset, to edit and use with "
        "'Adjust with My Map...'.")
    procedure.add_choice_argument("style", "_Style", "Learned style", choice(*STYLES), STYLES[0][0], RW)
    procedure.add_boolean_argument("export-map", "_Add the predicted map as channels",
                                   "One channel per preset: where that preset applies. The result then comes "
                                   "from the semantic-map model, which 'Adjust with My Map...' reproduces "
                                   "exactly; without the map a slightly more accurate model (Eq. 2) is used",
                                   False, RW)
    return procedure


def create_my_map(plugin, name):
    procedure = image_procedure(
        plugin, name, run_my_map, "Adjust with _My Map...",
        "Apply a learned style steered by your own semantic adjustment map",
        "Where you painted, your map replaces the predicted one: either channels named 'preset 0' … "
        "'preset 3' (white = that preset applies; export the predicted ones with Semantic Auto-Adjust "
        "first, they say what each preset does) or the selection, with one preset inside and another "
        "outside. Pixels no channel covers keep the automatic result.")
    procedure.add_choice_argument("style", "_Style", "Learned style", choice(*STYLES), STYLES[0][0], RW)
    procedure.add_choice_argument("source", "_Map from", "Where your map comes from", choice(*SOURCES),
                                  SOURCES[0][0], RW)
    procedure.add_int_argument("preset", "_Preset inside the selection", "Preset applied inside the selection",
                               0, PRESETS - 1, 0, RW)
    procedure.add_int_argument("outside-preset", "Preset _outside the selection",
                               "Preset applied outside the selection; -1 keeps the automatic map there",
                               -1, PRESETS - 1, 1, RW)
    return procedure


def _adjust(image, drawable, params: dict, maps: list[Array], label: str):
    pixels = read_drawable(image, drawable)
    progress = Progress(label)
    try:
        client = connect(lambda text: progress(0.0, text))
        result = client.run("adjust", params, [pixels.array, *maps], on_progress=progress)
    finally:
        progress.end()
    return pixels, result


def run_auto(procedure, image, drawable, config):
    style = config.get_property("style")
    export = config.get_property("export-map")
    pixels, result = _adjust(image, drawable, {"style": style, "return_map": export}, [],
                             "Semantic auto-adjust")
    with undo_group(image):
        add_result_layer(image, drawable, pixels, result.arrays["image"],
                         f"{drawable.get_name()} adjusted ({style})")
        if export:
            _add_map_channels(image, pixels, result.arrays, style)


def run_my_map(procedure, image, drawable, config):
    style = config.get_property("style")
    source = config.get_property("source")
    pixels = read_drawable(image, drawable)
    if source == "selection":
        preset, outside = config.get_property("preset"), config.get_property("outside-preset")
        mask = read_selection(image, pixels)
        if outside == preset:
            maps = [Array(f"preset_{preset}", mask.dtype, mask.shape, bytes([255]) * len(mask.data))]
        else:
            maps = [Array(f"preset_{preset}", mask.dtype, mask.shape, mask.data)]
            if outside >= 0:
                maps.append(Array(f"preset_{outside}", mask.dtype, mask.shape, bytes(mask.data).translate(INVERT)))
        label = f"my map: preset {preset} in selection" + (f", {outside} outside" if outside >= 0 else "")
    else:
        maps = []
        for channel in image.get_channels():
            found = CHANNEL_NAME.match(channel.get_name())
            if found:
                maps.append(read_channel(image, channel, pixels, f"preset_{int(found.group(1))}"))
        if not maps:
            raise bad_input("No channels named 'preset 0' … 'preset 3' found. Run Semantic Auto-Adjust with "
                            "'Add the predicted map as channels', or create such channels and paint them.")
        if len({m.name for m in maps}) != len(maps):
            raise bad_input("Two channels name the same preset; keep one 'preset <k>' channel per preset.")
        label = "my map: channels"
    _, result = _adjust(image, drawable, {"style": style}, maps, "Adjusting with your map")
    with undo_group(image):
        add_result_layer(image, drawable, pixels, result.arrays["image"],
                         f"{drawable.get_name()} adjusted ({style}, {label})")


def channel_name(k: int, words: str, style: str) -> str:
    return f"preset {k}: {words} ({style})" if words else f"preset {k} ({style})"


def _preset_words(arrays: dict) -> list[str]:
    names = arrays.get("preset_names")
    try:
        found = json.loads(bytes(names.data).decode()) if names is not None else []
    except (ValueError, UnicodeDecodeError):
        found = []
    return [str(w) for w in found] if isinstance(found, list) else []


def _add_map_channels(image, pixels, arrays: dict, style: str) -> None:
    presets = sorted(int(name[7:]) for name in arrays if name.startswith("preset_") and name[7:].isdigit())
    words = _preset_words(arrays)
    rect = Gegl.Rectangle.new(pixels.offset_x, pixels.offset_y, pixels.width, pixels.height)
    for k in presets:
        color = Gegl.Color.new(COLORS[k % len(COLORS)])
        name = channel_name(k, words[k] if k < len(words) else "", style)
        channel = Gimp.Channel.new(image, name, image.get_width(), image.get_height(), 50.0, color)
        channel.set_visible(False)
        image.insert_channel(channel, None, k)
        buffer = channel.get_buffer()
        buffer.set(rect, "Y u8", bytes(arrays[f"preset_{k}"].data))
        buffer.flush()
        channel.update(0, 0, image.get_width(), image.get_height())


PROCEDURES = {AUTO: create_auto, MY_MAP: create_my_map}
