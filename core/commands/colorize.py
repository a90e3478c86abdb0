"""gimp-semantic segment IMAGE -o MAP.png [--colored]
gimp-semantic colorize IMAGE -o OUT [--semantic-map MAP.png] [--save-map MAP.png] [--snap] [--no-map]"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.commands.common import add_runtime_options, execute, write_output
from core.imaging.io import load_image
from core.protocol import bad_input


def register(subparsers) -> None:
    seg = subparsers.add_parser("segment", help="semantic map of a gray photo (8-bit class ids or colors)")
    seg.add_argument("image", help="gray or color photo (color is ignored)")
    seg.add_argument("-o", "--output", required=True,
                     help="PNG of class ids (0 = unlabeled, ids as in the training set's classes.txt)")
    seg.add_argument("--colored", action="store_true", help="write the palette-colored map instead of ids")
    add_runtime_options(seg)
    seg.set_defaults(func=run_segment)

    col = subparsers.add_parser("colorize", help="colorize a gray photo, guided by its semantic map")
    col.add_argument("image", help="gray or color photo of any size (only its lightness is used)")
    col.add_argument("-o", "--output", required=True, help="RGB output at the input's size")
    col.add_argument("--semantic-map", metavar="MAP", help="map to use instead of the predicted one: class "
                     "ids (8-bit gray) or palette colors, same size as the image")
    col.add_argument("--save-map", metavar="MAP", help="also write the map that was used (class ids)")
    col.add_argument("--colored", action="store_true", help="--save-map writes palette colors, not ids")
    col.add_argument("--snap", action="store_true", help="map colors not in the palette go to the nearest class")
    col.add_argument("--no-map", action="store_true", help="colorize without any semantic map")
    add_runtime_options(col)
    col.set_defaults(func=run_colorize)


def load_semantic_map(path: str) -> np.ndarray:
    """A map file → uint8 H×W (ids) or H×W×3/4 (colors), as the 'colorize' action reads it."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise bad_input(f"Semantic map not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise bad_input(f"Cannot read the semantic map {path}: {exc}") from None
    if image.mode == "L":
        return np.asarray(image)
    if image.mode in ("RGB", "RGBA"):
        return np.asarray(image)
    if image.mode in ("P", "PA", "LA"):
        return np.asarray(image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB"))
    raise bad_input(f"{path} is a {image.mode} image; a semantic map must be 8-bit ids (gray) or RGB colors.")


def _save_map(path: str, result: dict, colored: bool) -> None:
    if "map_rgb" not in result:
        raise bad_input("No semantic map was used (--no-map), so there is none to save.")
    rgb = np.asarray(result["map_rgb"])
    if colored:
        write_output(path, rgb)
        return
    write_output(path, np.ascontiguousarray(result["map"][..., 0]))


def run_segment(args) -> int:
    result = execute("segment", {"image": load_image(args.image)}, {}, args)
    if args.colored:
        write_output(args.output, np.asarray(result["map_rgb"]))
    else:
        write_output(args.output, np.ascontiguousarray(result["map"][..., 0]))
    return 0


def run_colorize(args) -> int:
    image = load_image(args.image)
    arrays = {"image": image}
    if args.semantic_map and args.no_map:
        raise bad_input("--semantic-map and --no-map contradict each other; give one.")
    if args.semantic_map:
        arrays["map"] = load_semantic_map(args.semantic_map)
    params = {"use_map": not args.no_map, "snap": args.snap}
    result = execute("colorize", arrays, params, args)
    write_output(args.output, result["image"])
    if args.save_map:
        _save_map(args.save_map, result, args.colored)
    return 0
