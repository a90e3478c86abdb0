"""Filters > Semantic > Semantic Auto-Adjust... and Adjust with My Map... (SA-AdjustNet, Nam & Kim).

Auto-Adjust applies a learned local style (Foreground Pop-Out, Local Xpro, Watercolor) as a new layer and
can add the predicted semantic adjustment map as channels "preset 0 (style)" … "preset K−1 (style)".
Adjust with My Map replaces the predicted map where the user painted: with channels named "preset <k>…"
(channel k's value = how strongly preset k applies; start from the exported ones) or with the selection,
which applies one chosen preset.
"""

from __future__ import annotations

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
SOURCES = (("channels", "Channels named 'preset 0' … 'preset 7'"),
           ("selection", "The selection, as the preset below"))
PRESETS = 8  # the shipped models' K; the daemon refuses a preset the style's model lacks
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
                                   "One channel per preset: how strongly that preset applies at each pixel",
                                   False, RW)
    return procedure


def create_my_map(plugin, name):
    procedure = image_procedure(
        plugin, name, run_my_map, "Adjust with _My Map...",
        "Apply a learned style steered by your own semantic adjustment map",
        "Where you painted, your map replaces the predicted one: either channels named 'preset 0' … "
        "'preset 7' (white = that preset applies; export the predicted ones with Semantic Auto-Adjust "
        "first) or the selection, which applies one preset. Unpainted pixels keep the automatic result.")
    procedure.add_choice_argument("style", "_Style", "Learned style", choice(*STYLES), STYLES[0][0], RW)
    procedure.add_choice_argument("source", "_Map from", "Where your map comes from", choice(*SOURCES),
                                  SOURCES[0][0], RW)
    procedure.add_int_argument("preset", "_Preset for the selection", "Preset applied inside the selection",
                               0, PRESETS - 1, 0, RW)
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
        preset = config.get_property("preset")
        mask = read_selection(image, pixels)
        maps = [Array(f"preset_{preset}", mask.dtype, mask.shape, mask.data)]
        label = f"my map: preset {preset} in selection"
    else:
        maps = []
        for channel in image.get_channels():
            found = CHANNEL_NAME.match(channel.get_name())
            if found:
                maps.append(read_channel(image, channel, pixels, f"preset_{int(found.group(1))}"))
        if not maps:
            raise bad_input("No channels named 'preset 0' … 'preset 7' found. Run Semantic Auto-Adjust with "
                            "'Add the predicted map as channels', or create such channels and paint them.")
        if len({m.name for m in maps}) != len(maps):
            raise bad_input("Two channels name the same preset; keep one 'preset <k>' channel per preset.")
        label = "my map: channels"
    _, result = _adjust(image, drawable, {"style": style}, maps, "Adjusting with your map")
    with undo_group(image):
        add_result_layer(image, drawable, pixels, result.arrays["image"],
                         f"{drawable.get_name()} adjusted ({style}, {label})")


def _add_map_channels(image, pixels, arrays: dict, style: str) -> None:
    presets = sorted(int(name[7:]) for name in arrays if name.startswith("preset_") and name[7:].isdigit())
    rect = Gegl.Rectangle.new(pixels.offset_x, pixels.offset_y, pixels.width, pixels.height)
    for k in presets:
        color = Gegl.Color.new(COLORS[k % len(COLORS)])
        channel = Gimp.Channel.new(image, f"preset {k} ({style})", image.get_width(), image.get_height(),
                                   50.0, color)
        channel.set_visible(False)
        image.insert_channel(channel, None, k)
        buffer = channel.get_buffer()
        buffer.set(rect, "Y u8", bytes(arrays[f"preset_{k}"].data))
        buffer.flush()
        channel.update(0, 0, image.get_width(), image.get_height())


PROCEDURES = {AUTO: create_auto, MY_MAP: create_my_map}
