"""GIMP-side pixel plumbing: layers, selection and paths in, new layers out (stdlib + gi only).

All Gimp.* calls happen on GIMP's thread; nothing here keeps a reference to a procedure config.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import gi

gi.require_version("Babl", "0.1")
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Babl, Gegl, Gimp, GLib  # noqa: E402
from semantic_protocol import Array, SemanticError, bad_input  # noqa: E402

_EIGHT_BIT = {
    Gimp.Precision.U8_LINEAR,
    Gimp.Precision.U8_NON_LINEAR,
    Gimp.Precision.U8_PERCEPTUAL,
}


@dataclass
class LayerPixels:
    """A drawable's pixels in the format we send, with where the drawable sits in the image."""

    array: Array
    babl_format: str
    offset_x: int
    offset_y: int
    gray: bool

    @property
    def width(self) -> int:
        return self.array.width

    @property
    def height(self) -> int:
        return self.array.height


def pixel_format(image: Gimp.Image) -> tuple[str, str, bool]:
    """(babl format, wire dtype, gray) for reading and writing this image's layers without losing depth."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    model = "Y'A" if gray else "R'G'B'A"
    if image.get_precision() in _EIGHT_BIT:
        return f"{model} u8", "u8", gray
    return f"{model} float", "f32", gray


def read_drawable(image: Gimp.Image, drawable: Gimp.Drawable, name: str = "image") -> LayerPixels:
    if not isinstance(drawable, Gimp.Layer):
        raise bad_input("Pick a layer (not a channel or mask) as the active drawable.")
    fmt, dtype, gray = pixel_format(image)
    width, height = drawable.get_width(), drawable.get_height()
    _, offset_x, offset_y = drawable.get_offsets()
    data = drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, width, height), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    channels = 2 if gray else 4
    return LayerPixels(Array(name, dtype, (height, width, channels), data), fmt, offset_x, offset_y, gray)


def read_selection(image: Gimp.Image, layer: LayerPixels, name: str = "mask") -> Array:
    """The selection as a soft mask in the layer's coordinates (linear 'Y u8', as GIMP stores it)."""
    _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    if not non_empty:
        raise bad_input("There is no selection. Select the foreground (the pasted object) first; "
                        "feathered edges are respected.")
    if x2 <= layer.offset_x or y2 <= layer.offset_y or x1 >= layer.offset_x + layer.width \
            or y1 >= layer.offset_y + layer.height:
        raise bad_input("The selection does not overlap the active layer. Select part of that layer.")
    rect = Gegl.Rectangle.new(layer.offset_x, layer.offset_y, layer.width, layer.height)
    data = image.get_selection().get_buffer().get(rect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
    return Array(name, "u8", (layer.height, layer.width, 1), data)


def read_channel(image: Gimp.Image, channel: Gimp.Channel, layer: LayerPixels, name: str) -> Array:
    """A saved channel (or the selection mask) cropped to the layer, as a soft mask."""
    fmt = "Y u8" if image.get_precision() in _EIGHT_BIT else "Y float"
    rect = Gegl.Rectangle.new(layer.offset_x, layer.offset_y, layer.width, layer.height)
    data = channel.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.NONE)
    return Array(name, "u8" if fmt.endswith("u8") else "f32", (layer.height, layer.width, 1), data)


def context_colors(image: Gimp.Image) -> tuple[str, str]:
    """GIMP's foreground and background colors (the FG/BG swatches) as '#rrggbb', the way a brush puts
    them on this image's layers: sRGB bytes, or in a grayscale image their gray (as 'R'G'B'' bytes of
    a gray layer read them).

    Gegl.Color.get_rgba() is linear light, so the bytes come from babl's own conversion instead
    (checked in GIMP 3.0.4 and 3.2.6: FG #4080c0 reads back 40 80 c0, its get_rgba() 0.051 0.216 0.527).
    """
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    fmt = Babl.format("Y' u8" if gray else "R'G'B' u8")
    colors = []
    for color in (Gimp.context_get_foreground(), Gimp.context_get_background()):
        data = bytes(color.get_bytes(fmt).get_data())
        colors.append("#" + (data * 3 if gray else data).hex())
    return colors[0], colors[1]


def add_result_layer(image: Gimp.Image, source: Gimp.Drawable, pixels: LayerPixels, result: Array,
                     name: str) -> Gimp.Layer:
    """Insert ``result`` as a new layer directly above ``source`` at the same offsets."""
    if (result.height, result.width) != (pixels.height, pixels.width):
        raise SemanticError("internal", f"The daemon returned {result.width}×{result.height} pixels for a "
                                        f"{pixels.width}×{pixels.height} layer.")
    layer_type = Gimp.ImageType.GRAYA_IMAGE if pixels.gray else Gimp.ImageType.RGBA_IMAGE
    layer = Gimp.Layer.new(image, name, pixels.width, pixels.height, layer_type, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
    layer.set_offsets(pixels.offset_x, pixels.offset_y)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, pixels.width, pixels.height), _format_for(result, pixels.gray),
               bytes(result.data))
    buffer.flush()
    layer.update(0, 0, pixels.width, pixels.height)
    return layer


def _format_for(array: Array, gray: bool) -> str:
    model = {1: "Y'", 2: "Y'A", 3: "R'G'B'", 4: "R'G'B'A"}[array.channels]
    if gray and array.channels >= 3:
        raise SemanticError("internal", "The daemon returned colour pixels for a grayscale image.")
    return f"{model} {'u8' if array.dtype == 'u8' else 'u16' if array.dtype == 'u16' else 'float'}"


@contextmanager
def undo_group(image: Gimp.Image):
    Gimp.context_push()
    image.undo_group_start()
    try:
        yield
    finally:
        image.undo_group_end()
        Gimp.context_pop()


class Progress:
    """GIMP's progress bar for a job, fed by the daemon's progress frames.

    Its Cancel button never reaches this process as a callback: GIMP 3 answers it by closing the
    plug-in (gimp_plug_in_progress_cancel_callback -> gimp_plug_in_close: GP_QUIT, 10 ms, SIGKILL), and
    libgimp's progress vtable is for plug-ins that display others' progress. So Cancel works through
    the daemon: our connection closes with the killed process, the daemon drops the job at its next
    progress report (0.2-0.6 s measured), and since results are written only after the job returns,
    the image stays as it was.
    Checked with GIMP 3.0.4 and 3.2.6 under Xvfb by clicking the statusbar's Cancel (the procedure
    returns "Cancelled", the daemon logs the job cancelled); tests/e2e/test_cancel_e2e.py does the kill.
    """

    def __init__(self, text: str):
        Gimp.progress_init(text)
        self._text = text

    def __call__(self, fraction: float, text: str) -> None:
        if text and text != self._text:
            self._text = text
            Gimp.progress_set_text(text)
        Gimp.progress_update(fraction)

    def end(self) -> None:
        Gimp.progress_end()


def success(procedure: Gimp.Procedure):
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def failure(procedure: Gimp.Procedure, error: SemanticError):
    """Report a user-facing error; bad input is a calling error, everything else an execution error."""
    status = Gimp.PDBStatusType.CALLING_ERROR if error.code.value in ("bad_input", "bad_request") \
        else Gimp.PDBStatusType.EXECUTION_ERROR
    return procedure.new_return_values(status, GLib.Error.new_literal(Gimp.PlugIn.error_quark(),
                                                                       error.message, 0))


def cancelled(procedure: Gimp.Procedure):
    return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
