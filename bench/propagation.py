"""DeepProp benchmark: speed at the paper's Table 2 sizes, incremental update, and foreground
segmentation quality against GrabCut and the random walker on the same strokes, colorization against
Levin et al. 2004. Prints JSON.

    python -m bench.propagation [--data ../shared/datasets] [--threads N] [--per-set 8] [--colorize 8]
                                [--split bench|dev] [--out bench/results] [--max-side 480]
                                [--sizes 400x314,...] [--repeat 3] [--skip-speed] [--skip-quality]
                                [--skip-colorize] [--config semantic|paper] [--set PART.FIELD=VALUE]
                                [--methods deepprop,grabcut,random_walker] [--gray gimp|luma]
                                [--only speed|quality|colorization] [--merge-into FILE.json]

``--config`` picks DeepProp's named configuration (core/propagation/pipeline.CONFIGS; "paper" is the
published method), ``--set`` overrides one field for an ablation (``model.semantic_channels=16``,
``smoothing.data_weight=0.01``, ``semantic.taps=stride4+stride8``, ``color_space=luma``).

Splits: a fixed quarter of each set (by a hash of the image id; of the sequence for DAVIS) is the
development split, used to choose settings; the bench reports the other three quarters. Only 2 of
DAVIS's 15 sequences hash into dev, so dev takes all their frames (never a bench sequence's).

Speed (a): real photos resized to 400×314 (10 strokes), 640×480 (5) and 1800×1200 (19); strokes are
lines through the interiors of distinct BSDS segments (mapped to the resized image), brush ≈ 1% of
the short side; full run = learn (Algorithm 1 from scratch) + superpixel estimation + Eq. 15, in
colorize mode, with a cold per-image state; the median wall time of ``--repeat`` runs (each listed)
and process CPU seconds. Incremental = the same image with one more stroke, re-run with the state
the first run left (Sec. 4.1). The paper's CPU times are 23.0, 36.5, 432.4 s. ``first_run`` is a
small propagation in the fresh process: the one-time cost a daemon pays before its first run.
The hypervisor's steal time is recorded: on a shared VM it inflates wall times.

Quality (b): salient objects — people/ccp, people/coco128-seg, harmonization/photos-with-masks and
DAVIS train (first frame of each sequence), ``--per-set`` images each from the bench split (a fixed
quarter of each set, ``--split dev``, is kept for choosing settings). Strokes like a user's
(core/propagation/simulate.py: brush 2 % of the short side, a stroke along every part of the object,
branches toward its boundary, strokes through the background), the same for every method; then one
correction stroke where each method's own first result is most wrong (DeepProp: its incremental
update). Precision, recall and F1 at 0.5 (mean over images) and micro-averaged PR curves (PNG in
``--out``), before and after the correction, with times. Baselines: OpenCV's GrabCut seeded with the
strokes, and the random walker (Grady 2006) with scikit-image's weighting (β = 130 on data/std),
solved exactly with scipy's sparse LU (``pip install -e '.[bench]'``). Images are resized to
``--max-side``.

Colorization (c): ΔE (CIE76) to the colour original for DeepProp and Levin et al. 2004 (written here
from the paper; also its solve mixing Lab a*, b* with L* kept, to tell propagation from colour space)
on the same strokes: Levin's own examples (their gray and scribbles; their published result beside
ours) and ``--colorize`` photos from each of six sources (BSDS500 val, Kodak, ImageNet samples, COCO
scenes, CCP people, DAVIS frames: COLOR_SOURCES), drawn by a hash from the bench split (never the dev
quarter the colorization settings were chosen on), at most 480 px, made gray as GIMP makes it
(``--gray luma``: as most other software does), with a stroke of the user's brush in each colour of
the original and its median colour (colour_strokes). Per photo, then mean, median and a 95 % bootstrap
interval, and the paired DeepProp − Levin difference. ``--only colorization --merge-into
bench/results/propagation.json`` reruns this part alone and writes its entry, keeping the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from bench.stats import summary
from core.imaging.color import rgb_to_lab, srgb_to_linear_torch
from core.imaging.grabcut import seeded_grabcut
from core.imaging.io import load_image, load_mask, to_float
from core.models.efficientnet_lite import load_pretrained
from core.propagation.apps import lab_to_rgb_keep_lightness
from core.propagation.pipeline import CONFIGS, DEFAULT_CONFIG, PropagationOptions, configured, propagate
from core.propagation.simulate import components, correction_stroke, user_brush, user_strokes
from core.propagation.simulate import region_strokes as spine_strokes
from core.propagation.strokes import StrokePath, labels_for_selection, labels_from_scribbles, rasterize_paths

PAPER_SECONDS = {"400x314": 23.0, "640x480": 36.5, "1800x1200": 432.4}
TABLE2 = [((314, 400), 10), ((480, 640), 5), ((1200, 1800), 19)]


# --- strokes from regions ------------------------------------------------------------------------


def interior_line(
    region: np.ndarray,
    margin: float,
    rng: np.random.Generator,
    length: float,
    avoid: list[tuple[int, int]] | None = None,
) -> np.ndarray | None:
    """A straight polyline inside ``region`` staying ``margin`` px from its boundary, along a random
    direction through an interior point far from the points in ``avoid`` and deep inside the region
    (spreads a class's scribbles over it); None if the region has no interior."""
    # The image frame counts as a boundary: otherwise the background's deepest points are the image
    # corners and its scribbles end up as short stubs along the frame, unlike what a user draws.
    padded = cv2.copyMakeBorder(region.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    inside = dist > margin
    if not inside.any():
        inside = dist >= max(1.0, dist.max() * 0.6)
        if not inside.any():
            return None
    ys, xs = np.nonzero(inside)
    if avoid:
        pts = np.asarray(avoid, dtype=np.float64)
        gap = np.min(np.hypot(ys[:, None] - pts[None, :, 0], xs[:, None] - pts[None, :, 1]), axis=1)
        i = int(np.argmax(np.minimum(gap, 3 * dist[ys, xs])))  # far from the others, yet deep inside
    else:
        i = int(np.argmax(dist[ys, xs]))
    cy, cx = ys[i], xs[i]
    if avoid is not None:
        avoid.append((cy, cx))
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    t = np.arange(-length / 2, length / 2 + 1, 1.0)
    px = np.clip(np.rint(cx + t * d[0]).astype(int), 0, region.shape[1] - 1)
    py = np.clip(np.rint(cy + t * d[1]).astype(int), 0, region.shape[0] - 1)
    ok = inside[py, px]
    center = len(t) // 2
    lo = center
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    hi = center
    while hi < len(t) - 1 and ok[hi + 1]:
        hi += 1
    return np.array([[px[lo], py[lo]], [px[hi], py[hi]]], dtype=np.float64)


def region_strokes(segments: np.ndarray, count: int, rng: np.random.Generator, brush: int):
    """``count`` strokes in the ``count`` largest segments, each its own color (class)."""
    h, w = segments.shape
    ids, areas = np.unique(segments, return_counts=True)
    order = ids[np.argsort(-areas, kind="stable")]
    palette = rng.integers(0, 256, size=(count + 8, 3))
    paths = []
    for k, seg in enumerate(order):
        if len(paths) == count:
            break
        line = interior_line(segments == seg, brush, rng, 0.25 * np.hypot(h, w))
        if line is None:
            continue
        color = tuple(int(v) for v in palette[k])
        paths.append(StrokePath(f"s{k} #{bytes(color).hex()}", [line], [False]))
    return paths


THRESHOLDS = np.linspace(0, 1, 101)
SETS = ("people/ccp", "people/coco128-seg", "harmonization/photos-with-masks", "davis")
METHODS = ("deepprop", "grabcut", "random_walker")
FG, BG = (255, 0, 0), (0, 0, 255)


def split_of(key: str) -> str:
    """A fixed quarter of each set (by a hash of the image, or of the sequence for DAVIS) is the
    development subset, the one used to choose settings; the bench reports the other three quarters."""
    return "dev" if hashlib.sha1(key.encode()).digest()[0] % 4 == 0 else "bench"


def set_items(root: Path, name: str, split: str, count: int) -> list[tuple[str, Path, Path]]:
    """(id, image, mask) of ``count`` images of a set's split, spread evenly over it."""
    if name == "davis" and split == "dev":
        # Only 2 of the 15 sequences fall in the dev quarter: their first frames alone are too few to
        # choose settings on, so dev takes all their frames (every 6th of the video; near-duplicates
        # of each other, but never of a bench sequence).
        items = [
            (p.stem, p, root / "davis/train/masks" / (p.stem + ".png"))
            for p in sorted((root / "davis/train/images").glob("*.jpg"))
            if split_of(f"davis/{p.stem.rsplit('_', 1)[0]}") == "dev"
        ]
        items = items[:: max(1, len(items) // max(count, 1))][:count] if count < len(items) else items
        return [(f"{name}/{key}", image, mask) for key, image, mask in items]
    if name == "davis":
        seen: dict[str, Path] = {}
        for path in sorted((root / "davis/train/images").glob("*.jpg")):
            seen.setdefault(path.stem.rsplit("_", 1)[0], path)  # each sequence's first frame
        items = [(seq, p, root / "davis/train/masks" / (p.stem + ".png")) for seq, p in seen.items()]
    elif name == "harmonization/photos-with-masks":
        folder = root / name
        items = [(p.stem, p, p.with_suffix(".png")) for p in sorted(folder.glob("*.jpg"))]
    else:
        folder = root / name
        items = [
            (p.stem, p, folder / "masks" / (p.stem + ".png"))
            for p in sorted((folder / "images").glob("*.jpg"))
        ]
    items = [
        (f"{name}/{key}", image, mask) for key, image, mask in items if split_of(f"{name}/{key}") == split
    ]
    if len(items) > count:
        items = [items[round(i * len(items) / count)] for i in range(count)]
    return items


def resize_to(image: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (round(w * scale), round(h * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def add_stroke(raster: np.ndarray, line: np.ndarray, is_fg: bool, brush: int) -> np.ndarray:
    h, w = raster.shape[:2]
    color = FG if is_fg else BG
    layer = rasterize_paths([StrokePath("c", [line], [False], fallback_color=color)], h, w, brush, FG, BG)
    out = raster.copy()
    out[layer[..., 3] > 0] = layer[layer[..., 3] > 0]
    return out


def side_labels(raster: np.ndarray) -> np.ndarray:
    """Stroke raster → H×W: 0 foreground, 1 background, -1 none (the baselines' input)."""
    strokes = labels_for_selection(raster, FG, BG)
    return strokes.labels


def counts(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each threshold t in THRESHOLDS: (true positives, predicted positives) of prob ≥ t."""
    fg_hist = np.histogram(prob[truth], bins=len(THRESHOLDS) - 1, range=(0, 1))[0]
    all_hist = np.histogram(prob, bins=len(THRESHOLDS) - 1, range=(0, 1))[0]
    tp = np.concatenate([np.cumsum(fg_hist[::-1])[::-1], [0]])
    pp = np.concatenate([np.cumsum(all_hist[::-1])[::-1], [0]])
    return np.stack([tp, pp]).astype(np.float64)


def run_methods(
    rgb: np.ndarray, mask: np.ndarray, raster: np.ndarray, options: PropagationOptions, methods=METHODS
) -> dict:
    """Each method on the strokes, then on the strokes plus one correction stroke where its own first
    result is most wrong (DeepProp through its incremental update, the others run again)."""
    brush = user_brush(mask.shape)
    out = {}
    for method in methods:
        results = []
        strokes = raster
        keep = None
        for round_ in ("first", "corrected"):
            t0 = time.perf_counter()
            if method == "deepprop":
                result, keep = propagate(
                    rgb,
                    labels_for_selection(strokes, FG, BG),
                    replace(options, mode="select", fg=FG, bg=BG),
                    keep,
                )
                prob = result.output
                extra = {"epochs": result.log.epochs if result.log else 0, "incremental": result.incremental}
            elif method == "grabcut":
                prob, extra = grabcut(rgb, side_labels(strokes)), {}
            else:
                prob, extra = random_walker(rgb, side_labels(strokes)), {}
            seconds = time.perf_counter() - t0
            results.append({"round": round_, "prob": prob, "seconds": seconds, **prf(prob, mask), **extra})
            if round_ == "first":
                fix = correction_stroke(mask, prob >= 0.5, brush)
                if fix is None:
                    results.append(
                        {**results[0], "round": "corrected", "seconds": 0.0, "no_correction": True}
                    )
                    break
                strokes = add_stroke(strokes, fix[0], fix[1], brush)
        out[method] = results
    return out


def quality(
    root: Path,
    per_set: int,
    max_side: int,
    split: str,
    out_dir: Path | None,
    options: PropagationOptions,
    methods=METHODS,
) -> dict:
    sets = {}
    for name in SETS:
        rows = []
        curves = {f"{m}/{r}": np.zeros((2, len(THRESHOLDS))) for m in methods for r in ("first", "corrected")}
        truth_total = 0
        for key, image_path, mask_path in set_items(root, name, split, per_set):
            rgb = resize_to(to_float(load_image(image_path))[..., :3], max_side)
            mask = load_mask(mask_path) > 127
            mask = cv2.resize(mask.astype(np.uint8), rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
            user = user_strokes(mask)
            raster = user.raster(mask.shape, FG, BG)
            runs = run_methods(rgb, mask, raster, options, methods)
            truth_total += int(mask.sum())
            row = {"image": key, "size": list(mask.shape), "stroke_share": float((raster[..., 3] > 0).mean())}
            for method, results in runs.items():
                for r in results:
                    curves[f"{method}/{r['round']}"] += counts(r.pop("prob"), mask)
                row[method] = {
                    r["round"]: {
                        k: round(v, 4) if isinstance(v, float) else v for k, v in r.items() if k != "round"
                    }
                    for r in results
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not rows:
            continue
        summary = {}
        for method in methods:
            for round_ in ("first", "corrected"):
                sel = [r[method][round_] for r in rows]
                summary.setdefault(method, {})[round_] = {
                    k: round(float(np.mean([s[k] for s in sel])), 4)
                    for k in ("precision", "recall", "f1", "seconds")
                }
        pr = {}
        for label, (tp, pp) in curves.items():
            precision = np.where(pp > 0, tp / np.maximum(pp, 1), 1.0)
            recall = tp / max(truth_total, 1)
            pr[label] = {"precision": precision.round(4).tolist(), "recall": recall.round(4).tolist()}
        sets[name] = {"images": len(rows), "summary": summary, "pr_micro": pr, "per_image": rows}
    if out_dir is not None and sets and len(methods) == len(METHODS):
        draw_pr_curves({k: v["pr_micro"] for k, v in sets.items()}, out_dir / f"propagation-pr-{split}.png")
    return {"split": split, "max_side": max_side, "per_set": per_set, "sets": sets}


def draw_pr_curves(curves: dict[str, dict], path: Path, size: int = 320) -> None:
    """One precision–recall panel per set (micro-averaged over its images, thresholds 0…1): solid the
    first result, thin after the correction stroke; GrabCut is hard, so a point per round."""
    colors = {"deepprop": (40, 40, 220), "grabcut": (40, 160, 40), "random_walker": (200, 120, 20)}
    panels = []
    for name, pr in curves.items():
        panel = np.full((size + 40, size + 40, 3), 255, np.uint8)
        origin = np.array([30, size + 10])

        def point(recall: float, precision: float, origin=origin) -> tuple[int, int]:
            return int(origin[0] + recall * size), int(origin[1] - precision * size)

        cv2.rectangle(panel, point(0, 1), point(1, 0), (0, 0, 0), 1)
        for tick in (0.5, 0.8, 0.9):
            cv2.line(panel, point(0, tick), point(1, tick), (220, 220, 220), 1)
            cv2.putText(
                panel, f"{tick}", (2, point(0, tick)[1] + 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1
            )
        for label, curve in pr.items():
            method, round_ = label.split("/")
            if method == "grabcut":  # a hard mask: one point, its precision and recall at 0.5
                half = len(THRESHOLDS) // 2
                at = point(curve["recall"][half], curve["precision"][half])
                cv2.circle(
                    panel, at, 5 if round_ == "first" else 3, colors[method], -1 if round_ == "first" else 1
                )
                continue
            pts = [point(r, p) for r, p in zip(curve["recall"], curve["precision"]) if r > 0]
            if pts:
                width = 2 if round_ == "first" else 1
                cv2.polylines(panel, [np.array(pts, np.int32)], False, colors[method], width)
        cv2.putText(panel, name, (30, 14), cv2.FONT_HERSHEY_PLAIN, 1.0, (0, 0, 0), 1)
        panels.append(panel)
    legend = np.full((24, len(panels) * (size + 40), 3), 255, np.uint8)
    for i, (method, color) in enumerate(colors.items()):
        cv2.putText(legend, method, (30 + 160 * i, 16), cv2.FONT_HERSHEY_PLAIN, 1.0, color, 1)
    cv2.putText(
        legend,
        "thick, dot: user strokes; thin, ring: + correction",
        (520, 16),
        cv2.FONT_HERSHEY_PLAIN,
        1.0,
        (0, 0, 0),
        1,
    )
    cv2.imwrite(str(path), np.concatenate([legend, np.concatenate(panels, 1)], 0))


# --- colorization ----------------------------------------------------------------------------------

# Colour photos for the colorization comparison, several kinds of scene: (source, folder). A photo's
# split key is the one the rest of this bench gives it (BSDS: "bsds/<id>", the key DeepProp's
# colorization settings were chosen on; DAVIS: its sequence; the salient sets: "<set>/<id>"), so the dev
# quarter that chose DeepProp's settings is never drawn.
COLOR_SOURCES: tuple[tuple[str, str], ...] = (
    ("bsds500", "bsds500/val/images"),
    ("kodak24", "photos/kodak24"),
    ("imagenet-samples", "photos/imagenet-samples"),
    ("coco128", "photos/coco128"),
    ("people/ccp", "people/ccp/images"),
    ("davis", "davis/train/images"),
)
GRAYS = ("gimp", "luma")
# babl's luminance weights (linear sRGB, primaries Bradford-adapted to D50): what GIMP's gray keeps.
GIMP_LUMINANCE = np.array([0.22248840, 0.71690369, 0.06060791], np.float32)
STROKE_REGIONS = 12  # strokes per photo (colour_regions says which regions get them)
COLOR_CLUSTERS = 8  # k-means colours a region map is made of
BOOTSTRAP = 10_000
COLOR_METHODS = ("deepprop", "levin2004", "levin2004_lab", "gray_input")


def colour_split_key(source: str, path: Path) -> str:
    if source == "bsds500":
        return f"bsds/{path.stem}"
    if source == "davis":
        return f"davis/{path.stem.rsplit('_', 1)[0]}"
    return f"{source}/{path.stem}"


def draw_rank(name: str) -> str:
    return hashlib.sha1(f"colorization/{name}".encode()).hexdigest()


def colour_photos(root: Path, per_source: int, split: str) -> list[tuple[str, Path]]:
    """(id, path) of ``per_source`` photos of ``split`` from each of COLOR_SOURCES, the first in the
    order of a hash of their ids: a fixed rule that never looks at the content. DAVIS gives at most one
    frame per sequence (its frames are near-duplicates), the frame drawn by the same hash."""
    drawn = []
    for source, folder in COLOR_SOURCES:
        by_group: dict[str, Path] = {}
        for path in sorted((root / folder).glob("*.jpg")):
            group = colour_split_key(source, path)
            if split_of(group) != split:
                continue
            if group not in by_group or draw_rank(path.stem) < draw_rank(by_group[group].stem):
                by_group[group] = path
        ordered = sorted(by_group.items(), key=lambda item: draw_rank(item[0]))
        drawn.extend((f"{source}/{path.stem}", path) for _, path in ordered[:per_source])
    return drawn


def gray_of(rgb: np.ndarray, kind: str = "gimp") -> np.ndarray:
    """The gray a user starts from, in 8 bits. "gimp": GIMP's Image ▸ Mode ▸ Grayscale, the luminance
    of linear light with babl's sRGB primaries (adapted to D50) sRGB-encoded, GIMP 3.0's and 3.2's
    values but for a rare rounding tie (tests/e2e/test_gray_e2e.py): it keeps the luminance Y, so L*,
    and ΔE to the original measures the colours a method adds. "luma": Y' = 0.299 R' + 0.587 G' +
    0.114 B' of the encoded values, the gray most other software makes (and Levin et al.'s examples
    are)."""
    if kind == "luma":
        value = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        linear = srgb_to_linear_torch(torch.from_numpy(rgb.astype(np.float32))).numpy()
        luminance = linear @ GIMP_LUMINANCE
        encoded = 1.055 * np.power(luminance, 1 / 2.4) - 0.055
        value = np.where(luminance <= 0.0031308, 12.92 * luminance, encoded)
    gray = np.repeat(np.clip(value, 0, 1)[..., None], 3, axis=2)
    return (gray * 255).round().astype(np.float32) / 255


def kmeans_centres(points: np.ndarray, count: int, rng: np.random.Generator, rounds: int = 20) -> np.ndarray:
    """``count`` k-means centres of ``points`` (N×D) from k-means++ seeding on a sample of them."""
    sample = points[rng.choice(len(points), min(len(points), 20_000), replace=False)]
    centres = sample[rng.integers(len(sample))][None]
    for _ in range(1, count):
        distance = np.square(sample[:, None] - centres[None]).sum(2).min(1)
        if distance.sum() <= 0:  # fewer distinct colours than clusters
            break
        centres = np.vstack([centres, sample[rng.choice(len(sample), p=distance / distance.sum())]])
    for _ in range(rounds):
        nearest = np.square(sample[:, None] - centres[None]).sum(2).argmin(1)
        centres = np.stack(
            [sample[nearest == k].mean(0) if (nearest == k).any() else centre for k, centre in enumerate(centres)]
        )
    return centres


def colour_regions(rgb: np.ndarray, brush: int) -> list[np.ndarray]:
    """The regions of one colour a user colouring the photo (``rgb``: H×W×3 float in [0, 1]) paints, in
    the order a user strokes them (H×W bool each): the original's Lab colours, blurred over a quarter
    brush, in COLOR_CLUSTERS k-means clusters; each pixel takes the cluster most common within a brush
    width (speckle thinner than a stroke is no region to a user); connected parts of at least four brush
    areas that a stroke fits inside (a sliver of blended colours along an edge is no region either).
    First the largest part of every colour, largest first (a user gives each colour in the photo
    a stroke, a small red coat as much as the sky), then the remaining parts, largest first."""
    blurred = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), max(brush / 4, 0.5))
    lab = rgb_to_lab(blurred).reshape(-1, 3).astype(np.float64)
    centres = kmeans_centres(lab, COLOR_CLUSTERS, np.random.default_rng(0))
    nearest = np.square(lab[:, None] - centres[None]).sum(2).argmin(1).reshape(rgb.shape[:2])
    votes = [cv2.blur((nearest == k).astype(np.float32), (brush, brush)) for k in range(len(centres))]
    clusters = np.stack(votes).argmax(0)
    parts = [
        [part for part in components(clusters == k, 4 * brush * brush) if depth(part) >= brush]
        for k in range(len(centres))
    ]
    first = sorted((colour[0] for colour in parts if colour), key=lambda part: -int(part.sum()))
    rest = sorted((part for colour in parts for part in colour[1:]), key=lambda part: -int(part.sum()))
    return first + rest


def depth(region: np.ndarray) -> float:
    """The largest distance from inside ``region`` to its boundary (the image frame counts)."""
    padded = cv2.copyMakeBorder(region.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return float(cv2.distanceTransform(padded, cv2.DIST_L2, 5).max())


def colour_strokes(truth_u8: np.ndarray) -> np.ndarray:
    """H×W×4 scribbles as a user colouring the gray photo paints them: a stroke of the user's brush
    along the spine of each of the first STROKE_REGIONS colour regions (colour_regions), painted with
    the original's median colour under it. The same scribbles go to every method."""
    h, w = truth_u8.shape[:2]
    brush = user_brush((h, w))
    raster = np.zeros((h, w, 4), np.uint8)
    for region in colour_regions(truth_u8.astype(np.float32) / 255, brush)[:STROKE_REGIONS]:
        for line in spine_strokes(region, brush, branches=0):
            path = StrokePath("s", [line], [False], fallback_color=(1, 1, 1))
            under = rasterize_paths([path], h, w, brush)[..., 3] > 0
            raster[under] = (*np.median(truth_u8[under], axis=0).astype(np.uint8), 255)
    return raster


def delta_e(rgb: np.ndarray, truth: np.ndarray) -> float:
    """Mean CIE76 ΔE (Lab distance) to the original."""
    return float(
        np.linalg.norm(
            rgb_to_lab(rgb.astype(np.float32)) - rgb_to_lab(truth.astype(np.float32)), axis=2
        ).mean()
    )


def colorize_all(
    gray: np.ndarray, raster: np.ndarray, truth: np.ndarray, options: PropagationOptions
) -> dict:
    """ΔE to ``truth`` and seconds of DeepProp, Levin et al. 2004 as published (YIQ) and Levin's solve
    mixing CIELab a*, b* (L* kept, as DeepProp's default does), all from the same scribbles."""
    marked = raster[..., 3] > 0
    scribbles = raster[..., :3].astype(np.float32) / 255
    row: dict = {}
    start = time.perf_counter()
    result, _ = propagate(gray, labels_from_scribbles(raster), replace(options, mode="colorize"))
    outputs = {"deepprop": result.output}
    row["deepprop"] = {"seconds": round(time.perf_counter() - start, 3)}
    for name, space in (("levin2004", "yiq"), ("levin2004_lab", "lab")):
        start = time.perf_counter()
        outputs[name] = levin_colorize(gray, scribbles, marked, space)
        row[name] = {"seconds": round(time.perf_counter() - start, 3)}
    for name, output in outputs.items():
        row[name] = {"delta_e": round(delta_e(output, truth), 3), **row[name]}
    row["gray_input"] = {"delta_e": round(delta_e(gray, truth), 3)}
    row["stroke_share"] = round(float(marked.mean()), 4)
    return row


def levin_example_strokes(gray_u8: np.ndarray, marked_u8: np.ndarray) -> np.ndarray:
    """The examples' scribbles (drawn over the gray image) → an RGBA raster with one colour per stroke:
    each connected scribble takes its median colour, so anti-aliased edges do not become classes."""
    painted = np.abs(gray_u8.astype(int) - marked_u8.astype(int)).sum(2) > 10
    count, labels = cv2.connectedComponents(painted.astype(np.uint8), connectivity=8)
    raster = np.zeros((*painted.shape, 4), np.uint8)
    for k in range(1, count):
        where = labels == k
        if where.sum() >= 8:
            raster[where] = (*np.median(marked_u8[where], axis=0).astype(np.uint8), 255)
    return raster


def photo_statistics(photos: list[dict]) -> dict:
    """Per method the summary of ΔE over the photos; the paired DeepProp − Levin differences (negative:
    DeepProp closer to the original) with how many photos DeepProp wins; per source the means; times."""
    rng = np.random.default_rng(0)
    stats: dict = {m: summary([r[m]["delta_e"] for r in photos], rng, BOOTSTRAP) for m in COLOR_METHODS}
    for other in ("levin2004", "levin2004_lab"):
        differences = [r["deepprop"]["delta_e"] - r[other]["delta_e"] for r in photos]
        stats[f"deepprop_minus_{other}"] = {
            **summary(differences, rng, BOOTSTRAP),
            "deepprop_lower": int(sum(d < 0 for d in differences)),
        }
    by_source: dict[str, list[dict]] = {}
    for row in photos:
        by_source.setdefault(row["image"].rsplit("/", 1)[0], []).append(row)
    stats["by_source_mean"] = {
        source: {m: round(float(np.mean([r[m]["delta_e"] for r in rows])), 3) for m in COLOR_METHODS}
        for source, rows in sorted(by_source.items())
    }
    stats["seconds"] = {
        m: summary([r[m]["seconds"] for r in photos], rng, BOOTSTRAP)
        for m in ("deepprop", "levin2004", "levin2004_lab")
    }
    return stats


COLORIZATION_NOTE = (
    "photos: per source the first of the bench split in sha1('colorization/<id>') order (never the dev "
    "quarter; DAVIS one frame per sequence), at most 480 px; strokes: brush 2 % of the short side along "
    "the spine of each colour region of the original (k-means of its Lab colours; first the largest part "
    "of each colour, then the largest others, 12 at most), each painted with the original's median "
    "colour under it, the same strokes for every method; levin2004 = Levin, Lischinski, Weiss 2004 as "
    "published (YIQ: the gray's luma kept), levin2004_lab = the same solve for a*, b* with L* kept "
    "(DeepProp's colour space), to tell the propagation from the colour space; ΔE = mean CIE76 to the "
    "original; ci95 = 95 % bootstrap interval of the mean over photos (10 000 resamples, seed 0); "
    "deepprop_minus_*: paired per-photo differences (negative = DeepProp closer), deepprop_lower = photos "
    "where DeepProp is closer. Levin's examples use their own gray, which is luma (Y'): Levin's YIQ keeps "
    "it exactly, DeepProp's default keeps L*, so on example2's saturated colours it gives the wrong "
    "lightness (a loss from the colour space, as levin2004_lab shows; color_space=auto reads the gray's "
    "kind from the strokes)."
)


def colorization(root: Path, per_source: int, split: str, options: PropagationOptions, gray: str) -> dict:
    """(1) Levin et al.'s own examples: their gray, their scribbles, ΔE to the colour original for
    DeepProp, our Levin implementation and (example3) their published result. (2) ``per_source`` photos
    of ``split`` from each of COLOR_SOURCES (colour_photos), resized to 480 px at most, made gray
    (``gray``: gray_of) and scribbled by colour_strokes; per photo and summarized (photo_statistics)."""
    folder = root / "propagation/levin-examples"
    examples = {}
    for name in ("example2", "example3"):
        gray_u8 = cv2.imread(str(folder / f"{name}.png"))[..., ::-1]
        marked_u8 = cv2.imread(str(folder / f"{name}_marked.png"))[..., ::-1]
        truth = cv2.imread(str(folder / f"{name}_original.png"))[..., ::-1].astype(np.float32) / 255
        raster = levin_example_strokes(gray_u8, marked_u8)
        row = colorize_all(gray_u8.astype(np.float32) / 255, raster, truth, options)
        published = folder / f"{name}_colorized.png"
        if published.exists():
            theirs = cv2.imread(str(published))[..., ::-1].astype(np.float32) / 255
            row["levin2004_published"] = {"delta_e": round(delta_e(theirs, truth), 3)}
        examples[name] = row
        print(json.dumps({name: row}), flush=True)
    photos = []
    for key, path in colour_photos(root, per_source, split):
        truth_u8 = resize_to(np.ascontiguousarray(load_image(path)[..., :3]), 480)
        truth = truth_u8.astype(np.float32) / 255
        raster = colour_strokes(truth_u8)
        row = {"image": key, "size": [truth.shape[1], truth.shape[0]]}
        row.update(colorize_all(gray_of(truth, gray), raster, truth, options))
        photos.append(row)
        print(json.dumps(row), flush=True)
    return {
        "gray": gray,
        "note": COLORIZATION_NOTE,
        "levin_examples": examples,
        "photos": photos,
        "photos_statistics": photo_statistics(photos) if photos else {},
    }


def merge_entry(path: Path, key: str, entry: dict) -> None:
    """Write ``entry`` as ``key`` of the JSON object in ``path``, re-read just before writing so keys
    another run wrote meanwhile survive; the file is replaced in one rename."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = entry
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def bsds_segments(path: Path) -> np.ndarray:
    return np.asarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).astype(np.int64)


# --- metrics and baselines ----------------------------------------------------------------------


def prf(prob: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred = prob > 0.5
    tp = float((pred & truth).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def grabcut(rgb: np.ndarray, labels: np.ndarray, iterations: int = 5) -> np.ndarray:
    """OpenCV's GrabCut (Rother et al. 2004) seeded with the strokes: stroke pixels are certain
    (label 0 foreground, 1 background), every other pixel starts as 'probably' the side of its
    nearest stroke, the one neutral way to start its colour models from strokes alone → H×W 0/1."""
    fg_dist = cv2.distanceTransform((labels != 0).astype(np.uint8), cv2.DIST_L2, 3)
    bg_dist = cv2.distanceTransform((labels != 1).astype(np.uint8), cv2.DIST_L2, 3)
    mask = np.where(fg_dist < bg_dist, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[labels == 0] = cv2.GC_FGD
    mask[labels == 1] = cv2.GC_BGD
    bgr = np.ascontiguousarray((rgb[..., ::-1] * 255).round().astype(np.uint8))
    seeded_grabcut(bgr, mask, iterations)  # its k-means++ start seeded: runs do not depend on order
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)


def levin_colorize(
    gray: np.ndarray, scribbles: np.ndarray, marked: np.ndarray, space: str = "yiq"
) -> np.ndarray:
    """Levin, Lischinski, Weiss 2004, *Colorization using Optimization*, written from the paper: in
    YIQ, each unmarked pixel's I and Q equal the weighted mean of its 3×3 neighbours', weights
    exp(−(Y_r − Y_s)² / 2σ_r²) with σ_r² the intensity variance in the window (floored so a flat
    window still averages); marked pixels keep the scribble's I, Q. gray: H×W×3 float RGB (equal
    channels), scribbles: H×W×3 float RGB, marked: H×W bool → H×W×3 float RGB.
    ``space="lab"`` (not the paper's): the same weights and solve for CIELab a*, b* with the gray's L*
    kept, the colour space DeepProp's default mixes in, so the bench can tell the propagation apart
    from the colour space (YIQ keeps the luma Y', which on an L*-made gray shifts a colour's L*)."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    y = gray.astype(np.float64) @ to_yiq[0]
    if space == "lab":
        iq = rgb_to_lab(scribbles.astype(np.float32))[..., 1:].astype(np.float64)
    else:
        iq = scribbles.astype(np.float64) @ to_yiq[1:].T
    h, w = y.shape
    index = np.arange(h * w).reshape(h, w)
    pad_y = np.pad(y, 1, mode="edge")
    pad_i = np.pad(index, 1, mode="edge")
    shifts = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    neighbours = np.stack([pad_y[dy : dy + h, dx : dx + w] for dy, dx in shifts])
    ids = np.stack([pad_i[dy : dy + h, dx : dx + w] for dy, dx in shifts])
    window = np.concatenate([neighbours, y[None]])
    variance = window.var(0) * 0.6
    closest = np.square(neighbours - y[None]).min(0)
    variance = np.maximum(np.maximum(variance, closest / np.log(100.0)), 2e-6)
    weights = np.exp(-np.square(neighbours - y[None]) / variance[None])
    weights /= weights.sum(0, keepdims=True)
    free = ~marked.ravel()
    rows = np.repeat(index.ravel()[free], len(shifts))
    cols = ids.reshape(len(shifts), -1)[:, free].T.ravel()
    vals = -weights.reshape(len(shifts), -1)[:, free].T.ravel()
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w)) + sp.eye(h * w, format="csr")
    rhs = np.where(marked.ravel()[:, None], iq.reshape(-1, 2), 0.0)
    solved = spla.spsolve(matrix.tocsc(), rhs)
    if space == "lab":
        lab = rgb_to_lab(gray.astype(np.float32))
        lab[..., 1:] = solved.reshape(h, w, 2)
        return lab_to_rgb_keep_lightness(lab).astype(np.float32)
    yiq = np.concatenate([y.reshape(-1, 1), solved], 1)
    return np.clip(yiq @ np.linalg.inv(to_yiq).T, 0, 1).reshape(h, w, 3).astype(np.float32)


def random_walker(rgb: np.ndarray, labels: np.ndarray, beta: float = 130.0) -> np.ndarray:
    """P(label 0) by the random walker with scikit-image's weights: exp(−β/(10·std) Σ_c ΔI_c²)."""
    h, w = labels.shape
    data = rgb.astype(np.float64)
    beta = beta / (10 * data.std())
    idx = np.arange(h * w).reshape(h, w)
    wh = np.exp(-beta * np.square(data[:, 1:] - data[:, :-1]).sum(-1)) + 1e-10
    wv = np.exp(-beta * np.square(data[1:] - data[:-1]).sum(-1)) + 1e-10
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:].ravel()])
    vals = np.concatenate([wh.ravel(), wv.ravel()])
    adj = sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))
    adj = adj + adj.T
    lap = (sp.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()
    flat = labels.ravel()
    seeded = flat >= 0
    unknown = ~seeded
    x_seed = (flat[seeded] == 0).astype(np.float64)
    rhs = -lap[unknown][:, seeded] @ x_seed
    x = np.empty(h * w)
    x[seeded] = x_seed
    x[unknown] = spla.spsolve(lap[unknown][:, unknown].tocsc(), rhs)
    return x.reshape(h, w)


# --- runs ------------------------------------------------------------------------------------------


def first_run_seconds(options: PropagationOptions) -> float:
    """A small propagation in this fresh process: what a user's first run pays once per daemon
    (library initialization, kernel selection, loading the backbone) on top of the timings below,
    which exclude it."""
    rng = np.random.default_rng(0)
    rgb = rng.random((64, 64, 3)).astype(np.float32)
    scribbles = np.zeros((64, 64, 4), np.uint8)
    scribbles[10:14, 5:30] = (255, 0, 0, 255)
    scribbles[50:54, 30:60] = (0, 0, 255, 255)
    t0 = time.perf_counter()
    propagate(rgb, labels_from_scribbles(scribbles), replace(options, mode="select"))
    return time.perf_counter() - t0


def cpu_steal_fraction(seconds: float = 1.0) -> float | None:
    """Share of CPU time the hypervisor gave to other guests over ``seconds`` (Linux /proc/stat)."""

    def read() -> list[int] | None:
        try:
            return [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None

    a = read()
    time.sleep(seconds)
    b = read()
    if a is None or b is None or len(a) < 8:
        return None
    delta = [y - x for x, y in zip(a, b)]
    return round(delta[7] / max(1, sum(delta)), 3)


def speed(root: Path, options: PropagationOptions, sizes: set[str] | None = None, repeat: int = 3) -> dict:
    photos = sorted((root / "bsds500/val/images").glob("*.jpg"))
    out = {}
    # The daemon keeps the frozen backbone loaded between runs (its model cache), so the timed runs
    # get it loaded too; loading it is part of ``first_run``.
    loaded = load_pretrained() if options.model.semantic_channels else None

    def backbone():
        return loaded

    for i, ((h, w), n) in enumerate(TABLE2):
        if sizes and f"{w}x{h}" not in sizes:
            continue
        brush = max(3, round(min(h, w) / 100))
        rng = np.random.default_rng(i)
        # The first photo (from a fixed offset) with enough segments for n + 1 strokes.
        for j in range(len(photos)):
            path = photos[(7 * i + 3 + j) % len(photos)]
            segments = bsds_segments(root / "bsds500/val/segments" / (path.stem + ".png"))
            segments = cv2.resize(
                segments.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST
            ).astype(np.int64)
            paths = region_strokes(segments, n + 1, rng, brush)
            if len(paths) == n + 1:
                break
        rgb = cv2.resize(to_float(load_image(path))[..., :3], (w, h), interpolation=cv2.INTER_CUBIC).clip(
            0, 1
        )
        base = labels_from_scribbles(rasterize_paths(paths[:n], h, w, brush))
        more = labels_from_scribbles(rasterize_paths(paths[: n + 1], h, w, brush))
        options = replace(options, mode="colorize")
        runs = []
        for _ in range(repeat):
            # Each repeat is a full run from a cold per-image state (no network, superpixels or graph
            # kept), then the incremental run with one more stroke on the state it left (Sec. 4.1).
            c0, t0 = time.process_time(), time.perf_counter()
            full, state = propagate(rgb, base, options, backbone=backbone)
            c1, t1 = time.process_time(), time.perf_counter()
            inc, _ = propagate(rgb, more, options, state, backbone=backbone)
            c2, t2 = time.process_time(), time.perf_counter()
            runs.append((t1 - t0, c1 - c0, t2 - t1, c2 - c1, full, inc))
        wall, cpu, inc_wall, inc_cpu = (float(np.median([r[k] for r in runs])) for k in range(4))
        full, inc = sorted(runs, key=lambda r: r[0])[len(runs) // 2][4:]  # breakdown of the median run
        key = f"{w}x{h}"
        out[key] = {
            "image": f"bsds500/val/{path.stem}",
            "strokes": base.num_classes,
            "stroke_pixels": int((base.labels >= 0).sum()),
            "brush": brush,
            "repeats": repeat,
            "full_seconds": wall,  # median wall time of the repeats
            "full_seconds_each": [round(r[0], 3) for r in runs],
            "paper_cpu_seconds": PAPER_SECONDS[key],
            "speedup_vs_paper": PAPER_SECONDS[key] / wall,
            # CPU seconds of this process (all threads): on a shared machine wall time also measures
            # the other tenants and the hypervisor's steal time.
            "full_cpu_seconds": cpu,
            "incremental_seconds": inc_wall,
            "incremental_cpu_seconds": inc_cpu,
            "incremental_ratio": inc_wall / wall,
            "full_breakdown": {k: round(v, 3) for k, v in full.timings.items()},
            "full_epochs": full.log.epochs,
            "full_stop": full.log.stop_reason,
            "incremental_breakdown": {k: round(v, 3) for k, v in inc.timings.items()},
            "incremental_epochs": inc.log.epochs if inc.log else 0,
        }
        print(json.dumps({key: out[key]}), flush=True)
    return out


def with_overrides(options: PropagationOptions, overrides: list[str]) -> PropagationOptions:
    """``part.field=value`` (part: model, smoothing, semantic) → options with that field replaced,
    the value parsed as the field's current type."""
    for item in overrides:
        name, _, value = item.partition("=")
        part, _, field_name = name.partition(".")
        if not field_name:  # a field of the options themselves, e.g. color_space=luma
            options = replace(options, **{part: _parse_like(getattr(options, part), value)})
            continue
        target = getattr(options, part)
        current = {f.name: getattr(target, f.name) for f in fields(target)}
        if field_name not in current:
            raise SystemExit(f"--set {item}: {part} has no field '{field_name}'")
        parsed = _parse_like(current[field_name], value)
        options = replace(options, **{part: replace(target, **{field_name: parsed})})
    return options


def _parse_like(old: object, value: str) -> object:
    """``value`` as the type of ``old`` (bool("false") would be True, so booleans are read by word)."""
    if isinstance(old, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(old, tuple):
        return tuple(value.split("+"))
    if old is None:
        return float(value) if value not in ("", "none", "None") else None
    return type(old)(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--per-set", type=int, default=8, help="images per salient-object set")
    parser.add_argument(
        "--colorize", type=int, default=8, help="colorization: photos from each source (COLOR_SOURCES)"
    )
    parser.add_argument("--gray", choices=GRAYS, default="gimp", help="colorization: how the gray is made")
    parser.add_argument(
        "--split",
        choices=("bench", "dev"),
        default="bench",
        help="dev: the quarter of each set kept for choosing settings",
    )
    parser.add_argument("--out", default="bench/results", help="folder for the PR-curve PNG")
    parser.add_argument("--max-side", type=int, default=480)
    parser.add_argument("--sizes", default="", help="comma-separated subset of 400x314,640x480,1800x1200")
    parser.add_argument("--repeat", type=int, default=3, help="full runs per size (the median is reported)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-colorize", action="store_true")
    parser.add_argument(
        "--only",
        choices=("speed", "quality", "colorization"),
        help="run this part alone (otherwise colorization runs with quality unless skipped)",
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        help="write the colorization result (with this run's command and machine) as the --merge-key "
        "entry of this JSON file, keeping its other entries",
    )
    parser.add_argument("--merge-key", help="default: 'colorization' ('colorization_luma_gray' with --gray luma)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default=DEFAULT_CONFIG, help="DeepProp configuration")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PART.FIELD=VALUE",
        help="override one field of the configuration (ablations), e.g. smoothing.strength=2, "
        "model.semantic_channels=8, semantic.max_side=256; repeatable",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    args = parser.parse_args()
    options = with_overrides(configured("select", args.config), args.set)
    methods = tuple(m for m in args.methods.split(",") if m)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    report = {
        "config": args.config,
        "overrides": args.set,
        "options": repr(options),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": list(os.getloadavg()),
            "cpu_steal_at_start": cpu_steal_fraction(),
        }
    }
    # Colorization runs with the quality part (--skip-quality skips both) unless run alone.
    skipped = {"speed": args.skip_speed, "quality": args.skip_quality}
    skipped["colorization"] = args.skip_quality or args.skip_colorize
    parts = {args.only} if args.only else {part for part, skip in skipped.items() if not skip}
    if "speed" in parts:
        report["speed"] = {"first_run": first_run_seconds(options)}
        report["speed"].update(speed(root, options, set(filter(None, args.sizes.split(","))), args.repeat))
    if "quality" in parts:
        if not (root / "davis").exists():
            report["quality"] = {"skipped": f"no datasets under {root}"}
        else:
            out_dir = Path(args.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            report["quality"] = quality(root, args.per_set, args.max_side, args.split, out_dir, options, methods)
    if "colorization" in parts:
        if not (root / "propagation/levin-examples").exists():
            report["colorization"] = {"skipped": f"no datasets under {root}"}
        else:
            report["colorization"] = colorization(root, args.colorize, args.split, options, args.gray)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["machine"]["cpu_steal_at_end"] = cpu_steal_fraction()
    print(json.dumps(report, indent=1))
    if args.merge_into and "colorization" in report:
        key = args.merge_key or ("colorization" if args.gray == "gimp" else f"colorization_{args.gray}_gray")
        run = {"command": "python -m bench.propagation " + " ".join(sys.argv[1:]), "config": args.config}
        run.update(overrides=args.set, machine=report["machine"])
        merge_entry(args.merge_into, key, {**run, **report["colorization"]})


if __name__ == "__main__":
    main()
