"""Semantic-driven colorization on the held-out split: segmentation and colorization numbers as JSON.

    python bench/colorization.py --data ../shared/datasets/siftflow/train [--limit N] [--sheet PATH]

Segmentation: pixel accuracy, mIoU and per-class IoU (person included) of the segmenter the colorization
uses (default: the pretrained-backbone one) and of GridNet from scratch, on the same images (unlabeled
pixels not scored).
Colorization against the original photos (PSNR on sRGB, mean CIE76 ΔE in float CIELab, Hasler–Süsstrunk
colorfulness) for: the gray input, the colorizer with the predicted map, with the ground-truth map, and
with no map (all unlabeled). Everything runs through the full-resolution pipeline the CLI and GIMP use.
Timing: one 352² image and one 24 MP image (6000×4000), segment + colorize, on this machine's CPU.
A contact sheet (gray | predicted map | colorized | original) is written to --sheet (not committed:
it shows dataset images).
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

from core.colorization import pipeline  # noqa: E402
from core.colorization.palette import render  # noqa: E402
from core.data.siftflow import list_pairs, load_pair  # noqa: E402
from core.imaging.color import rgb_to_lab  # noqa: E402
from core.training.gridnet import confusion, scores  # noqa: E402
from core.training.segmenter import per_class_iou  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return 10 * np.log10(1 / max(mse, 1e-12))


def delta_e(lab_ref: np.ndarray, rgb_u8: np.ndarray) -> float:
    return float(np.linalg.norm(rgb_to_lab(rgb_u8.astype(np.float32) / 255) - lab_ref, axis=2).mean())


def colorfulness(rgb_u8: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003): σ_rgyb + 0.3 μ_rgyb on 0–255 values."""
    r, g, b = (rgb_u8[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def gray_rgb(lightness: np.ndarray) -> np.ndarray:
    lab = np.zeros(lightness.shape + (3,), np.float32)
    lab[..., 0] = lightness
    return pipeline.lab_to_image(lab, np.dtype(np.uint8), None)


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


def contact_sheet(rows: list[list[np.ndarray]], path: Path) -> None:
    tile = rows[0][0].shape[0]
    sheet = np.full((len(rows) * (tile + 4), 4 * (tile + 4), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            sheet[i * (tile + 4):i * (tile + 4) + tile, j * (tile + 4):j * (tile + 4) + tile] = im
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/datasets/siftflow/train")
    p.add_argument("--limit", type=int, default=0, help="score only the first N validation images")
    p.add_argument("--sheet", default="runs/colorization/contact_sheet.png")
    p.add_argument("--sheet-count", type=int, default=12)
    p.add_argument("--segmenter", default=pipeline.PRETRAINED_SEGMENTER_WEIGHTS,
                   help="weights id of the segmenter whose map the colorizer gets")
    p.add_argument("--colorizer", default=pipeline.COLORIZER_WEIGHTS)
    p.add_argument("--ablation", default="", help="weights id of the no-instance-norm colorizer, if trained")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--timing-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    segmenter = pipeline.load_segmenter(device, args.segmenter)
    # every segmenter is scored on the same images; the colorizer gets the first one's map
    segmenters = {args.segmenter: segmenter}
    for weight_id in pipeline.SEGMENTERS.values():
        if weight_id not in segmenters:
            segmenters[weight_id] = pipeline.load_segmenter(device, weight_id)
    colorizer = pipeline.load_colorizer(device, args.colorizer)
    ablation = pipeline.load_colorizer(device, args.ablation) if args.ablation else None
    if args.timing_only:
        print(json.dumps({"timing_cpu": timing(segmenter, colorizer, args.threads)}, indent=2))
        return
    pairs = list_pairs(args.data, "val")
    if args.limit:
        pairs = pairs[:args.limit]
    classes = len(segmenter.classes)
    matrices = {weight_id: np.zeros((classes, classes), np.int64) for weight_id in segmenters}
    conditions = ["gray_input", "predicted_map", "ground_truth_map", "no_map"] + (
        ["ground_truth_map_no_instance_norm", "no_map_no_instance_norm"] if ablation else [])
    sums = {c: {"psnr": 0.0, "delta_e": 0.0, "colorfulness": 0.0} for c in conditions + ["original"]}
    sheet_rows = []
    for index, (image_path, label_path) in enumerate(pairs):
        rgb, labels = load_pair(image_path, label_path)
        lab_ref = rgb_to_lab(rgb.astype(np.float32) / 255)
        lightness, _ = pipeline.image_lightness(rgb)
        maps = {weight_id: pipeline.segment(lightness, other) for weight_id, other in segmenters.items()}
        for weight_id, (other_ids, _) in maps.items():
            matrices[weight_id] += confusion(other_ids.reshape(-1), labels.reshape(-1), classes)
        ids, ids_small = maps[args.segmenter]
        outputs = {
            "gray_input": gray_rgb(lightness),
            "predicted_map": pipeline.colorize(rgb, colorizer, ids, lightness, ids_small)[0],
            "ground_truth_map": pipeline.colorize(rgb, colorizer, labels, lightness)[0],
            "no_map": pipeline.colorize(rgb, colorizer, None, lightness)[0],
        }
        if ablation:
            outputs["ground_truth_map_no_instance_norm"] = pipeline.colorize(rgb, ablation, labels, lightness)[0]
            outputs["no_map_no_instance_norm"] = pipeline.colorize(rgb, ablation, None, lightness)[0]
        for name, out in outputs.items():
            sums[name]["psnr"] += psnr(out, rgb)
            sums[name]["delta_e"] += delta_e(lab_ref, out)
            sums[name]["colorfulness"] += colorfulness(out)
        sums["original"]["colorfulness"] += colorfulness(rgb)
        if index < args.sheet_count:
            sheet_rows.append([outputs["gray_input"], render(ids, classes), outputs["predicted_map"], rgb])
    n = len(pairs)
    result = {
        "data": str(args.data), "split": "val (10% held out by file-name hash)", "images": n,
        "weights": {"segmenter": args.segmenter, "colorizer": args.colorizer, "ablation": args.ablation or None},
        "segmentation": {**scores(matrices[args.segmenter]),
                         "per_class_iou": per_class_iou(matrices[args.segmenter], segmenter.classes)},
        "segmentation_by_segmenter": {
            weight_id: {**scores(m), "per_class_iou": per_class_iou(m, segmenter.classes)}
            for weight_id, m in matrices.items()},
        "colorization": {c: {k: round(v / n, 3) for k, v in m.items()} for c, m in sums.items()},
    }
    result["colorization"]["original"] = {"colorfulness": result["colorization"]["original"]["colorfulness"]}
    cz = result["colorization"]
    result["map_helps"] = {
        "psnr_gain_predicted_vs_no_map": round(cz["predicted_map"]["psnr"] - cz["no_map"]["psnr"], 3),
        "psnr_gain_ground_truth_vs_no_map": round(cz["ground_truth_map"]["psnr"] - cz["no_map"]["psnr"], 3),
        "delta_e_drop_predicted_vs_no_map": round(cz["no_map"]["delta_e"] - cz["predicted_map"]["delta_e"], 3),
        "delta_e_drop_ground_truth_vs_no_map": round(cz["no_map"]["delta_e"] - cz["ground_truth_map"]["delta_e"], 3),
    }
    if sheet_rows:
        contact_sheet(sheet_rows, Path(args.sheet))
        result["contact_sheet"] = args.sheet
    if not args.no_timing:
        result["timing_cpu"] = timing(segmenter, colorizer, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
