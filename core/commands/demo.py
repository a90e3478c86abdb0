"""gimp-semantic demo [-o DIR] [--image IMG --mask MASK]: run the filters on sample (or your) images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from core.actions.base import JobContext, ModelCache
from core.actions.harmonize import METHODS
from core.actions.registry import find_action
from core.device import select_device
from core.imaging.io import load_image, load_mask, save_image
from core.protocol import SemanticError
from core.samples import composite


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="harmonize sample composites and write viewable results")
    parser.add_argument("-o", "--output", type=Path, default=Path("demo-output"))
    parser.add_argument("--image", help="your own composite (default: a generated sample)")
    parser.add_argument("--mask", help="its foreground mask (required with --image)")
    parser.add_argument("--device", default=None)
    parser.set_defaults(func=run)


def run(args) -> int:
    if bool(args.image) != bool(args.mask):
        raise SemanticError("bad_input", "Give both --image and --mask, or neither for the built-in sample.")
    if args.image:
        image, mask, stem = load_image(args.image), load_mask(args.mask), Path(args.image).stem
    else:
        image, mask, stem = *composite(), "sample"
        save_image(args.output / f"{stem}-composite.png", image)
        save_image(args.output / f"{stem}-mask.png", mask)
    ctx = JobContext(select_device(args.device), ModelCache())
    harmonize = find_action("harmonize")
    panels = [image[..., :3]]
    for method in sorted(METHODS):
        try:
            result = harmonize.run({"image": image, "mask": mask[..., None]}, {"method": method}, ctx)["image"]
        except SemanticError as exc:
            print(f"  {method}: skipped ({exc.message})", file=sys.stderr)
            continue
        path = args.output / f"{stem}-harmonized-{method}.png"
        save_image(path, result)
        panels.append(result[..., :3])
        print(f"wrote {path}")
    side_by_side = args.output / f"{stem}-side-by-side.png"
    save_image(side_by_side, np.concatenate([p if p.dtype == np.uint8 else p for p in panels], axis=1))
    print(f"wrote {side_by_side}  (input | " + " | ".join(sorted(METHODS)) + ")")
    return 0
