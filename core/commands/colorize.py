"""gimp-semantic segment IMAGE -o MAP.png [--colored] [--segmenter pretrained|gridnet]
gimp-semantic colorize IMAGE -o OUT [--semantic-map MAP.png] [--save-map MAP.png] [--snap] [--no-map]
                       [--segmenter pretrained|gridnet]"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.colorization.pipeline import DEFAULT_SEGMENTER, SEGMENTERS
from core.commands.common import add_runtime_options, execute, write_output
from core.imaging.io import load_image
from core.protocol import bad_input

# Lossy formats change pixel values near edges: a class id 18 (person) becomes 17 or 19 (other classes),
# and palette colors become colors no class has. Maps must be written losslessly.
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".heic", ".heif", ".avif", ".jxl", ".jp2",
                  ".j2k")
SEGMENTER_HELP = ("which network predicts the map: 'pretrained' (default; two decoders on an ImageNet "
                  "backbone, weights segmenter-siftflow) or 'gridnet' (GridNet from scratch, gridnet-siftflow)")


def register(subparsers) -> None:
    seg = subparsers.add_parser("segment", help="semantic map of a gray photo (8-bit class ids or colors)")
    seg.add_argument("image", help="gray or color photo (color is ignored)")
    seg.add_argument("-o", "--output", required=True,
                     help="PNG of class ids (0 = unlabeled, ids as in the training set's classes.txt)")
    seg.add_argument("--colored", action="store_true", help="write the palette-colored map instead of ids")
    seg.add_argument("--segmenter", choices=tuple(SEGMENTERS), default=DEFAULT_SEGMENTER, help=SEGMENTER_HELP)
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
    col.add_argument("--segmenter", choices=tuple(SEGMENTERS), default=DEFAULT_SEGMENTER,
                     help=SEGMENTER_HELP + "; used when no --semantic-map is given")
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


def require_lossless(path: str, option: str) -> None:
    """Refuse a map file name whose format would corrupt class ids, before any work is done."""
    suffix = Path(path).suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        raise bad_input(f"{option} {path}: {suffix[1:].upper()} is a lossy format, which changes class ids "
                        "and palette colors at region edges, so the map would name wrong classes. Write the map "
                        f"as PNG (e.g. {Path(path).with_suffix('.png')}), or TIFF/BMP.")


def _save_map(path: str, result: dict, colored: bool) -> None:
    if "map_rgb" not in result:
        raise bad_input("No semantic map was used (--no-map), so there is none to save.")
    rgb = np.asarray(result["map_rgb"])
    if colored:
        write_output(path, rgb)
        return
    write_output(path, np.ascontiguousarray(result["map"][..., 0]))


def run_segment(args) -> int:
    require_lossless(args.output, "-o")
    result = execute("segment", {"image": load_image(args.image)}, {"segmenter": args.segmenter}, args)
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
    if args.save_map:
        require_lossless(args.save_map, "--save-map")
    if args.semantic_map:
        arrays["map"] = load_semantic_map(args.semantic_map)
    params = {"use_map": not args.no_map, "snap": args.snap, "segmenter": args.segmenter}
    result = execute("colorize", arrays, params, args)
    write_output(args.output, result["image"])
    if args.save_map:
        _save_map(args.save_map, result, args.colored)
    return 0
