"""Procedure plumbing shared by every filter: registration defaults, the dialog, error handling."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
from gi.repository import (  # noqa: E402
    Gimp,
    GimpUi,  # noqa: E402
    GObject,
)
from gimp_bridge import cancelled, failure, success  # noqa: E402
from semantic_protocol import ErrorCode, SemanticError, bad_input  # noqa: E402

MENU_PATH = "<Image>/Filters/Semantic"
RW = GObject.ParamFlags.READWRITE
Body = Callable[[Gimp.Procedure, Gimp.Image, Gimp.Drawable, Gimp.ProcedureConfig], None]


def image_procedure(plugin: Gimp.PlugIn, name: str, body: Body, label: str, blurb: str, help_text: str,
                    image_types: str = "RGB*, GRAY*") -> Gimp.ImageProcedure:
    procedure = Gimp.ImageProcedure.new(plugin, name, Gimp.PDBProcType.PLUGIN, _runner(body), None)
    procedure.set_image_types(image_types)
    procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
    procedure.set_menu_label(label)
    procedure.add_menu_path(MENU_PATH)
    procedure.set_documentation(blurb, help_text, name)
    procedure.set_attribution("gimp-semantic", "gimp-semantic contributors", "2026")
    return procedure


def choice(*options: tuple[str, str]) -> Gimp.Choice:
    result = Gimp.Choice.new()
    for index, (nick, label) in enumerate(options):
        result.add(nick, index, label, label)
    return result


def _runner(body: Body):
    def run(procedure, run_mode, image, drawables, config, data):
        if run_mode == Gimp.RunMode.INTERACTIVE:
            GimpUi.init("gimp-semantic")
            dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config)
            dialog.fill(None)
            accepted = dialog.run()
            dialog.destroy()
            if not accepted:
                return cancelled(procedure)
        try:
            if len(drawables) != 1:
                raise bad_input("Select exactly one layer to work on.")
            body(procedure, image, drawables[0], config)
        except SemanticError as exc:
            return failure(procedure, exc)
        except Exception as exc:  # noqa: BLE001 - the user gets a message, the log a traceback
            traceback.print_exc(file=sys.stderr)
            return failure(procedure, SemanticError(
                ErrorCode.internal, f"Unexpected error in {procedure.get_name()}: {type(exc).__name__}: {exc}"))
        return success(procedure)

    return run
