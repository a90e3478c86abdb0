"""Chroma upsampling from the colorizer's grid to full size: colour bleeding across edges, as JSON.

    python bench/chroma_upsampling.py --data ../shared/datasets/bsds500/train/images [--limit 60]

An oracle test of the upsampler alone: each colour photo's true ab is area-reduced to a model grid (the
best a colorizer at that grid could give; ``--blur`` also softens it by a Gaussian of that many grid
pixels, as a network's chroma is), then brought back to full size by bilinear, bicubic and the guided
upsampling of ``core/colorization/guided.py`` with L of the photo as the guide. Reported: mean |Δab|
(CIE76 ΔE, L being exact) over all pixels and over the colour-edge band (pixels within 3 px of a true ab
edge, where bleeding shows), for grids of ``--sides`` (about side² pixels: 32 gives ~15× upsampling on
481×321 photos, as a 24 MP photo from a 352² grid does).

Choose the guided filter's radius and eps on a split the colorization bench does not report (the
default folder is BSDS500 train, which the colorization bench does not score).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.colorization.guided import GuidedUpsampling, upsample_chroma  # noqa: E402
from core.colorization.pipeline import model_shape  # noqa: E402
from core.imaging.color import rgb_to_lab  # noqa: E402

EDGE_BAND_PX = 3
EDGE_THRESHOLD = 4.0  # |∇ab| per pixel (ab units) that counts as a colour edge


def edge_band(ab: np.ndarray) -> np.ndarray:
    gradient = np.zeros(ab.shape[:2], np.float32)
    for channel in range(2):
        gx = cv2.Sobel(ab[..., channel], cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(ab[..., channel], cv2.CV_32F, 0, 1, ksize=3) / 8
        gradient = np.maximum(gradient, np.hypot(gx, gy))
    edges = (gradient > EDGE_THRESHOLD).astype(np.uint8)
    side = 2 * EDGE_BAND_PX + 1
    return cv2.dilate(edges, np.ones((side, side), np.uint8)) > 0


def methods(params: list[GuidedUpsampling]) -> dict:
    def plain(interpolation):
        return lambda lightness, small: cv2.resize(small, lightness.shape[::-1], interpolation=interpolation)

    table = {"bilinear": plain(cv2.INTER_LINEAR), "bicubic": plain(cv2.INTER_CUBIC)}
    for p in params:
        table[f"guided_r{p.radius}_eps{p.eps:g}_texture{p.texture_weight:g}"] = (
            lambda lightness, small, p=p: upsample_chroma(lightness, small, p))
    return table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/bsds500/train/images"))
    p.add_argument("--limit", type=int, default=60)
    p.add_argument("--sides", type=int, nargs="+", default=[32, 96])
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian sigma in grid pixels on the oracle ab")
    p.add_argument("--radii", type=int, nargs="+", default=[GuidedUpsampling.radius])
    p.add_argument("--eps", type=float, nargs="+", default=[GuidedUpsampling.eps])
    p.add_argument("--texture-weights", type=float, nargs="+", default=[GuidedUpsampling.texture_weight])
    args = p.parse_args(argv)
    files = sorted(f for f in args.data.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[:args.limit or None]
    table = methods([GuidedUpsampling(radius=r, eps=e, texture_weight=t)
                     for r in args.radii for e in args.eps for t in args.texture_weights])
    # edge-band errors are pooled over the photos' band pixels (some photos have no colour edge)
    sums = {side: {name: {"all": 0.0, "edges": 0.0} for name in table} for side in args.sides}
    band_pixels = 0
    for file in files:
        lab = rgb_to_lab(np.asarray(Image.open(file).convert("RGB"), np.float32) / 255)
        lightness, ab = lab[..., 0], np.ascontiguousarray(lab[..., 1:])
        band = edge_band(ab)
        band_pixels += int(band.sum())
        for side in args.sides:
            h, w = model_shape(*lightness.shape, side)
            small = cv2.resize(ab, (w, h), interpolation=cv2.INTER_AREA)
            if args.blur > 0:
                small = cv2.GaussianBlur(small, (0, 0), args.blur)
            for name, upsample in table.items():
                error = np.linalg.norm(upsample(lightness, small) - ab, axis=2)
                sums[side][name]["all"] += float(error.mean()) / len(files)
                sums[side][name]["edges"] += float(error[band].sum())
    for by_side in sums.values():
        for m in by_side.values():
            m["edges"] /= max(1, band_pixels)
    result = {"photos": len(files), "data": str(args.data), "blur_grid_px": args.blur,
              "mean_abs_delta_ab": {f"side_{side}": {name: {k: round(v, 3) for k, v in m.items()}
                                                     for name, m in by_side.items()}
                                    for side, by_side in sums.items()}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
