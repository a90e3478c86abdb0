"""Filters > Semantic > Harmonize Selection...: the selection is the pasted foreground."""

from __future__ import annotations

from daemon_link import connect
from gimp_bridge import Progress, add_result_layer, read_drawable, read_selection, undo_group
from procedures import RW, choice, image_procedure

NAME = "plug-in-semantic-harmonize"
METHODS = (("transform", "Learned colour transform (ImageNet features; best measured)"),
           ("statistics", "Statistics (classical colour transfer)"),
           ("dih", "Deep Image Harmonization (Tsai et al. 2017, the paper's network)"))


def create(plugin, name):
    procedure = image_procedure(
        plugin, name, run, "_Harmonize Selection...",
        "Make a pasted object (the selection) match its background",
        "Adjusts the colours of the selected foreground so it fits the rest of the layer. Soft "
        "selection edges are respected. The result is a new layer above the source; the source is "
        "never changed.")
    procedure.add_choice_argument("method", "_Method", "Harmonization method", choice(*METHODS),
                                  METHODS[0][0], RW)
    procedure.add_double_argument("strength", "_Strength", "0 = unchanged, 1 = full effect",
                                  0.0, 1.0, 1.0, RW)
    procedure.add_boolean_argument("invert-mask", "_Invert selection",
                                   "The selection marks the background instead of the foreground", False, RW)
    return procedure


def run(procedure, image, drawable, config):
    method = config.get_property("method")
    strength = config.get_property("strength")
    invert = config.get_property("invert-mask")
    pixels = read_drawable(image, drawable)
    mask = read_selection(image, pixels)
    progress = Progress("Harmonizing")
    try:
        client = connect(lambda text: progress(0.0, text))
        result = client.run("harmonize", {"method": method, "strength": strength, "invert_mask": invert},
                            [pixels.array, mask], on_progress=progress)
    finally:
        progress.end()
    name = f"{drawable.get_name()} harmonized ({method}, {strength:.0%}{', inverted' if invert else ''})"
    with undo_group(image):
        add_result_layer(image, drawable, pixels, result.arrays["image"], name)


PROCEDURES = {NAME: create}
