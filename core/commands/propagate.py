"""gimp-semantic propagate IMAGE (--strokes SCRIBBLES.png | --paths PATHS.svg) -o OUT
[--mode {colorize,recolor,select,masks}] [--fg-color C] [--bg-color C] [--hard-selection]
[--config NAME] [--color-space lab|luma|auto] [--superpixels N] [--smoothing L] [--brush-width W]
[--per-pixel] [--seed S]"""

from __future__ import annotations

import sys
from pathlib import Path

from core.commands.common import add_runtime_options, execute, write_output
from core.imaging.io import load_image
from core.propagation.apps import COLOR_SPACES, DEFAULT_MODE, MODES
from core.propagation.pipeline import CONFIGS, DEFAULT_CONFIG
from core.propagation.strokes import read_svg_paths, rgb_hex
from core.protocol import bad_input


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "propagate",
        help="propagate stroke edits over an image (DeepProp): colorize, recolor, select, masks",
        description="Strokes come from a scribble PNG (transparent = no stroke, each color one class) or "
        "an SVG exported by GIMP's Export Path (each path one class, its color in its name).",
    )
    parser.add_argument("image", help="the photo (gray or color, any size)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--strokes", help="scribble PNG with alpha, same size as the image")
    source.add_argument(
        "--paths", help="SVG from GIMP's Export Path: path names hold colors (#rrggbb, CSS names, fg/bg)"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file; masks mode writes OUT's stem + _<n>_<rrggbb> per class",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULT_MODE,
        help=f"what to make of the strokes (default {DEFAULT_MODE}, as in GIMP): select = a mask from "
        "foreground/background strokes; colorize/recolor = a new image; masks = one mask per stroke color",
    )
    parser.add_argument(
        "--fg-color",
        default="#ff0000",
        help="select: foreground stroke color; stroke pixels near it count (default red; GIMP uses its FG swatch)",
    )
    parser.add_argument(
        "--bg-color",
        default="#0000ff",
        help="select: background stroke color; stroke pixels near it count (default blue; GIMP: BG swatch)",
    )
    parser.add_argument(
        "--hard-selection",
        action="store_true",
        help="select: every pixel fully in or out (the mask thresholded at 0.5) instead of a soft mask",
    )
    parser.add_argument(
        "--superpixels",
        type=int,
        default=0,
        help="number of SLIC superpixels (default 0: one per 100 pixels)",
    )
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        default=DEFAULT_CONFIG,
        help=f"DeepProp configuration (default {DEFAULT_CONFIG}); paper = Endo et al. 2016 as published",
    )
    parser.add_argument(
        "--color-space",
        choices=COLOR_SPACES,
        default=None,
        help="colorize: keep the gray's CIELab lightness (lab, the default: a gray made from luminance, as GIMP "
        "makes it), its Rec. 601 luma (luma: a gray made by most other software), or whichever of the two the "
        "stroke colours match under the strokes (auto)",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=None,
        help="edge-aware post-processing strength λ (0 = off; default: the configuration's, "
        + ", ".join(f"{name} {model_smoothing.strength:g}" for name, model_smoothing in _strengths())
        + ")",
    )
    parser.add_argument(
        "--brush-width",
        type=float,
        default=0.0,
        help="SVG paths: stroke width in pixels (default 0: 2%% of the image's short side)",
    )
    parser.add_argument(
        "--per-pixel", action="store_true", help="estimate every pixel (slower) instead of every superpixel"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_options(parser)
    parser.set_defaults(func=run)


def _strengths():
    return [(name, config["smoothing"]) for name, config in sorted(CONFIGS.items())]


def run(args) -> int:
    image = load_image(args.image)
    arrays = {"image": image}
    params = {
        "mode": args.mode,
        "fg_color": args.fg_color,
        "bg_color": args.bg_color,
        "hard_selection": args.hard_selection,
        "superpixels": args.superpixels,
        "config": args.config,
        "color_space": args.color_space,
        "smoothing": args.smoothing,
        "brush_width": args.brush_width,
        "per_pixel": args.per_pixel,
        "seed": args.seed,
    }
    if args.strokes:
        strokes = load_image(args.strokes)
        if strokes.shape[2] != 4:
            raise bad_input(
                f"{args.strokes} has no alpha channel: paint the strokes on a transparent layer "
                "and export it as PNG (transparent pixels mean 'no stroke')."
            )
        arrays["strokes"] = strokes
    else:
        paths, size = read_svg_paths(args.paths)
        h, w = image.shape[:2]
        sx, sy = (w / size[0], h / size[1]) if size and size[0] > 0 and size[1] > 0 else (1.0, 1.0)
        params["paths"] = [
            {
                "name": p.name,
                "color": rgb_hex(p.fallback_color) if p.fallback_color else None,
                "strokes": [
                    _closed(pts, closed, sx, sy) for pts, closed in zip(p.polylines, p.closed, strict=True)
                ],
            }
            for p in paths
        ]
    result = execute("propagate", arrays, params, args)
    colors = [rgb_hex(tuple(int(v) for v in c)) for c in result["class_colors"].reshape(-1, 3)]
    if args.mode in ("colorize", "recolor"):
        write_output(args.output, result["image"])
    elif args.mode == "select":
        write_output(args.output, result["mask"])
    else:
        out = Path(args.output)
        for k, color in enumerate(colors):
            write_output(
                out.with_name(f"{out.stem}_{k}_{color[1:]}{out.suffix or '.png'}"), result["masks"][..., k]
            )
    print("classes: " + ", ".join(colors), file=sys.stderr)
    return 0


def _closed(points, closed: bool, sx: float, sy: float) -> list[float]:
    scaled = points * (sx, sy)
    if closed and len(scaled) > 1:
        scaled = [*scaled, scaled[0]]
    return [float(v) for pt in scaled for v in pt]
