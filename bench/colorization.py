"""Semantic-driven colorization on the held-out split by source, people photos and scenes apart, as JSON.

    python bench/colorization.py --data ../shared/datasets [--limit N] [--sheets runs/colorization/sheets]

Photos: every colour photo of ``heldout`` (core.data.colorization: split by source group; checkpoints were
picked on ``select``, the segmenter trained on ``train``). "people" = people/ccp and people/coco128-seg
(with person masks), "scenes" = every other source (SIFT Flow, BSDS500, DAVIS, ImageNet samples, COCO,
Kodak). Everything runs through the full-resolution pipeline the CLI and GIMP use.

Per photo, against the original: PSNR (sRGB), mean CIE76 ΔE (float CIELab), Hasler–Süsstrunk colorfulness;
on people photos also the person pixels' hue angle (of their mean ab, degrees) and mean chroma, and the
same for skin pixels (Clothing Co-Parsing's skin label: person masks include the clothes). Conditions:
the gray input, each colorizer with no map, with the segmenter's predicted map and with the ground-truth
map (SIFT Flow labels; people: the person mask, the predicted map elsewhere). Reported: mean, median and a
bootstrap 95 % interval of the mean (colorfulness: of the ratio of means to the originals').
Segmentation (``core.training.segmenter.heldout_report``, the function the segmenter's card uses, on
every SIFT Flow and people photo of the split whatever --limit says): one confusion matrix accumulated
over all the split's SIFT Flow photos at their label resolution, unlabeled pixels not scored, IoU of each
class with a nonzero union, mIoU their mean (FCN's SIFT Flow score); person IoU on the people photos.
Contact sheets (gray | predicted map | colorized | original) for people and scenes go to --sheets (not
committed: they show dataset images). Timing: 352² and 24 MP (6000×4000), segment + colorize, with
whatever pipeline is on main.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary  # noqa: E402
from core.colorization import pipeline  # noqa: E402
from core.colorization.palette import render  # noqa: E402
from core.data import colorization as photos  # noqa: E402
from core.imaging.color import rgb_to_lab  # noqa: E402
from core.training.segmenter import heldout_report  # noqa: E402

BOOTSTRAP = 2000


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return 10 * np.log10(1 / max(mse, 1e-12))


def colorfulness(rgb_u8: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003): σ_rgyb + 0.3 μ_rgyb on 0–255 values."""
    r, g, b = (rgb_u8[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def person_colour(lab: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Hue angle (degrees, 0–360) of the mean ab of the masked pixels, and their mean chroma."""
    ab = lab[mask][:, 1:].astype(np.float64)
    a, b = ab.mean(0)
    return float(np.degrees(np.arctan2(b, a)) % 360), float(np.hypot(ab[:, 0], ab[:, 1]).mean())


def add(values: dict, condition: str, metric: str, value: float) -> None:
    values.setdefault(condition, {}).setdefault(metric, []).append(value)


def gray_rgb(lightness: np.ndarray) -> np.ndarray:
    lab = np.zeros(lightness.shape + (3,), np.float32)
    lab[..., 0] = lightness
    return pipeline.lab_to_image(lab, np.dtype(np.uint8), None)


def ratio_summary(out: list[float], ref: list[float], rng: np.random.Generator) -> dict:
    o, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if not len(o):
        return {"n": 0}
    pick = rng.integers(0, len(o), (BOOTSTRAP, len(o)))
    boot = o[pick].mean(1) / r[pick].mean(1)
    return {"ratio_of_means": round(float(o.mean() / r.mean()), 3),
            "median_ratio": round(float(np.median(o / np.maximum(r, 1e-6))), 3),
            "ci95": [round(float(np.quantile(boot, 0.025)), 3), round(float(np.quantile(boot, 0.975)), 3)],
            "n": len(o)}


def circular_summary(degrees: list[float]) -> dict:
    if not degrees:
        return {"n": 0}
    rad = np.radians(np.asarray(degrees))
    mean = float(np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())) % 360)
    return {"circular_mean": round(mean, 1), "median": round(float(np.median(degrees)), 1),
            "share_in_20_70": round(float(np.mean((np.asarray(degrees) >= 20) & (np.asarray(degrees) <= 70))), 3),
            "n": len(degrees)}


def time_pipeline(segmenter, colorizer, shape, repeats: int) -> dict:
    """Median wall and CPU seconds (CPU time is what the machine's other load does not inflate)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    image = (128 + 60 * np.sin(x / 97) * np.cos(y / 61) + rng.normal(0, 8, shape)).clip(0, 255).astype(np.uint8)
    image = np.repeat(image[..., None], 3, axis=2)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        lightness, _ = pipeline.image_lightness(image)
        ids, ids_small = pipeline.segment(lightness, segmenter)
        pipeline.colorize(image, colorizer, ids, lightness, ids_small)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall_s": round(float(np.median(wall)), 3), "cpu_s": round(float(np.median(cpu)), 3)}


def timing(segmenter, colorizer, threads: int) -> dict:
    return {
        "threads": threads, "cpu": platform.processor() or platform.machine(),
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "per_352x352": time_pipeline(segmenter, colorizer, (352, 352), 5),
        "per_24mp_6000x4000": time_pipeline(segmenter, colorizer, (4000, 6000), 1),
        "gpu": "none lent to this task",
    }


def tile(image: np.ndarray, side: int) -> np.ndarray:
    """Fit into side×side (aspect kept, white margins)."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    small = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                     Image.Resampling.BILINEAR))
    out = np.full((side, side, 3), 255, np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def contact_sheet(rows: list[list[np.ndarray]], path: Path, side: int = 160) -> None:
    columns = len(rows[0])
    sheet = np.full((len(rows) * (side + 4), columns * (side + 4), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet[i * (side + 4):i * (side + 4) + side, j * (side + 4):j * (side + 4) + side] = tile(im, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/datasets")
    p.add_argument("--split", default="heldout", help="heldout (reported) or select")
    p.add_argument("--limit", type=int, default=0, help="at most N photos per group (people, scenes)")
    p.add_argument("--sheets", default="runs/colorization/sheets")
    p.add_argument("--sheet-count", type=int, default=16)
    p.add_argument("--segmenter", default=pipeline.PRETRAINED_SEGMENTER_WEIGHTS,
                   help="weights id of the segmenter whose map the colorizers get")
    p.add_argument("--colorizer", default=pipeline.COLORIZER_WEIGHTS)
    p.add_argument("--ablation", nargs="*", default=["colorizer-siftflow"],
                   help="more colorizer weight ids to score the same way (the paper's U-Net by default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    segmenter = pipeline.load_segmenter(device, args.segmenter)
    segmenters = {args.segmenter: segmenter}
    for weight_id in pipeline.SEGMENTERS.values():
        if weight_id not in segmenters:
            segmenters[weight_id] = pipeline.load_segmenter(device, weight_id)
    colorizers = {weight_id: pipeline.load_colorizer(device, weight_id)
                  for weight_id in [args.colorizer, *[a for a in args.ablation if a != args.colorizer]]}
    classes = len(segmenter.classes)
    person_id = list(segmenter.classes).index("person")
    groups = {"people": photos.list_colour_photos(args.data, args.split, photos.PEOPLE),
              "scenes": photos.list_colour_photos(args.data, args.split, photos.SCENES)}
    if args.limit:  # an even spread over the sources, not the first source only
        groups = {g: [ps[i] for i in np.linspace(0, len(ps) - 1, min(args.limit, len(ps))).astype(int)]
                  for g, ps in groups.items()}
    result = {"data": args.data, "split": f"{args.split} (hash of the source group; checkpoints on select)",
              "weights": {"segmenter": args.segmenter, "colorizer": args.colorizer,
                          "ablation": [a for a in colorizers if a != args.colorizer]},
              "groups": {}}
    rng = np.random.default_rng(0)
    for group, listed in groups.items():
        values: dict[str, dict[str, list]] = {}
        sheet_rows = []
        sources: dict[str, int] = {}

        for index, photo in enumerate(listed):
            sources[photo.source] = sources.get(photo.source, 0) + 1
            rgb = photos.read_photo(photo)
            lab_ref = rgb_to_lab(rgb.astype(np.float32) / 255)
            lightness, _ = pipeline.image_lightness(rgb)
            ids, ids_small = pipeline.segment(lightness, segmenter)
            truth = photos.ground_truth_map(photo, ids, person_id)
            mask = photos.person_mask(photo)
            outputs = {"gray_input": (gray_rgb(lightness), None)}
            for weight_id, colorizer in colorizers.items():
                prefix = "" if weight_id == args.colorizer else weight_id + ":"
                for name, map_ids, small in (("predicted_map", ids, ids_small), ("no_map", None, None),
                                             ("ground_truth_map", truth, None)):
                    if name == "ground_truth_map" and truth is None:
                        continue
                    outputs[prefix + name] = pipeline.colorize(rgb, colorizer, map_ids, lightness, small)
            skin = photos.skin_mask(photo)
            regions = {name: m for name, m in (("person", mask), ("skin", skin)) if m is not None and m.any()}
            add(values, "original", "colorfulness", colorfulness(rgb))
            for region, pixels in regions.items():
                hue, chroma = person_colour(lab_ref, pixels)
                add(values, "original", f"{region}_hue_deg", hue)
                add(values, "original", f"{region}_chroma", chroma)
            for name, (out, _) in outputs.items():
                lab_shown = rgb_to_lab(out.astype(np.float32) / 255)  # what a person sees (gamut-clipped)
                add(values, name, "psnr", psnr(out, rgb))
                add(values, name, "delta_e", float(np.linalg.norm(lab_shown - lab_ref, axis=2).mean()))
                add(values, name, "colorfulness", colorfulness(out))
                for region, pixels in regions.items():
                    hue, chroma = person_colour(lab_shown, pixels)
                    add(values, name, f"{region}_hue_deg", hue)
                    add(values, name, f"{region}_chroma", chroma)
            if index < args.sheet_count or (len(listed) > args.sheet_count and index % max(
                    1, len(listed) // args.sheet_count) == 0 and len(sheet_rows) < 2 * args.sheet_count):
                sheet_rows.append([outputs["gray_input"][0], render(ids, classes), outputs["predicted_map"][0], rgb])
        report = {"photos": len(listed), "sources": sources, "conditions": {}}
        reference_cf = values["original"]["colorfulness"]
        for condition, metrics in values.items():
            entry = {}
            for metric, v in metrics.items():
                if metric.endswith("_hue_deg"):
                    entry[metric] = circular_summary(v)
                elif metric == "colorfulness" and condition != "original":
                    entry[metric] = summary(v, rng, BOOTSTRAP)
                    # images without a ground-truth map are left out of that condition: compare like with like
                    ref = reference_cf if len(v) == len(reference_cf) else [
                        c for c, p in zip(reference_cf, listed) if p.label is not None]
                    entry["colorfulness_ratio_to_original"] = ratio_summary(v, ref, rng)
                else:
                    entry[metric] = summary(v, rng, BOOTSTRAP)
            report["conditions"][condition] = entry
        c = report["conditions"]
        gray_de = np.asarray(values["gray_input"]["delta_e"])
        report["delta_e_gain_vs_gray"] = summary(list(gray_de - np.asarray(values["predicted_map"]["delta_e"])), rng,
                                                   BOOTSTRAP)
        report["delta_e_drop_predicted_vs_no_map"] = summary(
            list(np.asarray(values["no_map"]["delta_e"]) - np.asarray(values["predicted_map"]["delta_e"])), rng,
            BOOTSTRAP)
        report["summary"] = {
            "delta_e": {k: c[k]["delta_e"]["mean"] for k in c if "delta_e" in c[k]},
            "colorfulness_ratio": {k: c[k]["colorfulness_ratio_to_original"]["ratio_of_means"]
                                   for k in c if "colorfulness_ratio_to_original" in c[k]},
        }
        result["groups"][group] = report
        if sheet_rows:
            path = Path(args.sheets) / f"{group}.png"
            contact_sheet(sheet_rows, path)
            report["contact_sheet"] = str(path)
    # every SIFT Flow / people photo of the split, not the --limit sample: the card's function and images
    segmentation = heldout_report(args.data, segmenters, split=args.split)
    result["segmentation_definition"] = (
        f"{segmentation['siftflow_images']} SIFT Flow photos of the segmenter's {args.split} split (file-name "
        "hash, the colorization split's SIFT Flow photos exactly), one confusion matrix over all of them at "
        "the 256² label resolution, unlabeled pixels not scored; IoU per class with nonzero union, mIoU = "
        f"their mean; person IoU over {segmentation['people_images']} people photos (every pixel)")
    result["segmentation_siftflow"] = {weight_id: r["siftflow"] for weight_id, r in segmentation["segmenters"].items()}
    result["person_iou_people_photos"] = segmentation["segmenters"][args.segmenter]["people_person_iou"]
    if not args.no_timing:
        result["timing_cpu"] = timing(segmenter, colorizers[args.colorizer], args.threads)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
