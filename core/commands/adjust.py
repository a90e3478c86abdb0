"""gimp-semantic adjust IMAGE -o OUT --style {pop-out,xpro,watercolor} [--adjustment-map MAP.png]
    [--export-map MAP.png] [--mask MASK.png --inside-preset K --outside-preset J]

A personal adjustment map is an 8-bit grayscale PNG of the image's size whose value k (0 … K−1) picks
preset k at that pixel; 255 keeps the predicted map there. ``--export-map`` writes the predicted map in
the same format (and prints what each preset does), so it can be edited (with a hard brush) and given
back: given back unchanged it reproduces the automatic result bit for bit. ``--mask`` applies one preset
inside a mask (white) and another outside (black; -1 keeps the predicted map there), blending in between.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from core.actions.adjust import HEADS, STYLES
from core.commands.common import add_runtime_options, execute, write_output
from core.imaging.io import load_image, load_mask
from core.protocol import bad_input

KEEP = 255


def register(subparsers) -> None:
    parser = subparsers.add_parser("adjust", help="semantics-aware photo adjustment (SA-AdjustNet)")
    parser.add_argument("image", help="RGB or RGBA image (any size)")
    parser.add_argument("-o", "--output", required=True, help="output file; keeps the input's size and alpha")
    parser.add_argument("--style", choices=STYLES, default="pop-out")
    parser.add_argument("--adjustment-map", metavar="MAP.png",
                        help="your own semantic adjustment map: pixel value k = preset k, 255 = keep predicted")
    parser.add_argument("--export-map", metavar="MAP.png",
                        help="also write the map that was used (same format as --adjustment-map)")
    parser.add_argument("--mask", metavar="MASK.png",
                        help="8-bit mask of the image's size: --inside-preset where white, --outside-preset "
                             "where black")
    parser.add_argument("--inside-preset", type=int, default=0, help="preset inside --mask (default 0)")
    parser.add_argument("--outside-preset", type=int, default=-1,
                        help="preset outside --mask (default -1: keep the predicted map)")
    parser.add_argument("--head", choices=HEADS, default="auto",
                        help="'direct': Eq. 2, the most accurate automatic adjustment; 'map': the semantic "
                             "adjustment map model (needed for maps); 'auto' (default): 'map' when a map is "
                             "given or exported, else 'direct'")
    add_runtime_options(parser)
    parser.set_defaults(func=run)


def index_map_to_weights(index: np.ndarray, presets: int = 255) -> np.ndarray:
    """H×W preset indices (≥ ``presets`` or 255 = keep predicted) → H×W×P one-hot u8 weights."""
    top = int(index[index != KEEP].max()) + 1 if (index != KEEP).any() else 1
    if top > presets:
        raise bad_input(f"The adjustment map uses preset {top - 1}, but the model has presets 0–{presets - 1}.")
    weights = np.zeros(index.shape + (top,), np.uint8)
    for k in range(top):
        weights[..., k] = np.where(index == k, 255, 0)
    return weights


def mask_to_weights(mask: np.ndarray, inside: int, outside: int) -> np.ndarray:
    """A mask (u8, 255 = inside) → H×W×P u8 weights: ``inside`` where white, ``outside`` where black."""
    if inside < 0 or outside < -1:
        raise bad_input("--inside-preset must be 0 or more, --outside-preset -1 (keep) or more.")
    weights = np.zeros(mask.shape + (max(inside, outside) + 1,), np.uint16)
    weights[..., inside] += mask
    if outside >= 0:
        weights[..., outside] += 255 - mask
    return weights.astype(np.uint8) if weights.max() <= 255 else np.minimum(weights, 255).astype(np.uint8)


def _same_size(array: np.ndarray, image: np.ndarray, what: str) -> None:
    if array.shape[:2] != image.shape[:2]:
        raise bad_input(f"The {what} is {array.shape[1]}×{array.shape[0]} but the image is "
                        f"{image.shape[1]}×{image.shape[0]}; they must be the same size.")


def run(args) -> int:
    image = load_image(args.image)
    arrays = {"image": image}
    if args.adjustment_map and args.mask:
        raise bad_input("Give either --adjustment-map or --mask, not both.")
    if args.adjustment_map:
        index = load_mask(args.adjustment_map)
        _same_size(index, image, "adjustment map")
        arrays["preset_weights"] = index_map_to_weights(index)
    elif args.mask:
        mask = load_mask(args.mask)
        _same_size(mask, image, "mask")
        arrays["preset_weights"] = mask_to_weights(mask, args.inside_preset, args.outside_preset)
    params = {"style": args.style, "head": args.head, "return_map": bool(args.export_map)}
    result = execute("adjust", arrays, params, args)
    write_output(args.output, result["image"])
    if args.export_map:
        write_output(args.export_map, result["preset_index"])
        names = json.loads(result["preset_names"].tobytes().decode()) if "preset_names" in result else []
        for k, words in enumerate(names):
            print(f"preset {k}: {words or 'effect not measured'}", file=sys.stderr)
    return 0
