"""gimp-semantic: semantic image-editing models, their daemon and command-line interface."""

__version__ = "0.1.0"
