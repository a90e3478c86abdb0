#!/usr/bin/env python3
"""gimp-semantic: semantic image editing filters under Filters > Semantic (GIMP 3).

Each proc_*.py module beside this file contributes PROCEDURES: {name: create(plugin, name)}.
The pixels go to the local gimp-semantic daemon; results come back as new layers.
"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402


def _procedure_factories() -> dict:
    factories = {}
    for path in sorted(Path(__file__).resolve().parent.glob("proc_*.py")):
        module = importlib.import_module(path.stem)
        factories.update(module.PROCEDURES)
    return factories


class SemanticPlugIn(Gimp.PlugIn):
    def do_query_procedures(self):
        return list(_procedure_factories())

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        return _procedure_factories()[name](self, name)


Gimp.main(SemanticPlugIn.__gtype__, sys.argv)
