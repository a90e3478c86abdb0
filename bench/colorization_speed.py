"""Colorization speed at full resolution: segment + colorize + edge-aware upsampling, per stage, as JSON.

    python bench/colorization_speed.py [--threads 2] [--repeats 3] [--width 6000 --height 4000]

The photo is synthetic (smooth shapes with sharp edges and grain, gray, 8-bit), so nothing is read from
datasets; the timed path is the one the CLI and GIMP run (``core/actions/colorize.py``): L of the photo,
the pretrained segmenter's map, the colorizer's ab at model size from that map, guided upsampling and
Lab → RGB at full size. Each repeat reports wall and CPU seconds per stage and in total; the JSON also
gives the CPU, the thread count and the 1-minute load average before each repeat (the machine is shared,
so wall time depends on what else runs: report the load with the time).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.colorization import pipeline  # noqa: E402


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gray u8 H×W×3: a few discs and bands with sharp edges over a smooth gradient, plus grain."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    value = 90 + 60 * y + 20 * np.sin(7 * x)
    for _ in range(6):
        cy, cx, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
        value = np.where((y - cy) ** 2 + ((x - cx) * width / height) ** 2 < r * r, value + rng.uniform(-70, 70),
                         value)
    value = value + rng.normal(0, 4, (height, width)).astype(np.float32)
    gray = np.clip(value, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def time_stages(image: np.ndarray, segmenter: pipeline.Segmenter, colorizer: pipeline.Colorizer) -> dict:
    """Wall and CPU seconds of each stage of one colorization with the predicted map (the action's path).

    CPU seconds (all threads of this process) are what the other load on a shared machine inflates least."""
    marks = [(time.perf_counter(), time.process_time())]
    lightness, alpha = pipeline.image_lightness(image)
    marks.append((time.perf_counter(), time.process_time()))
    ids, ids_small = pipeline.segment(lightness, segmenter)
    marks.append((time.perf_counter(), time.process_time()))
    ab_small = pipeline.predict_ab(lightness, ids, colorizer, ids_small)
    marks.append((time.perf_counter(), time.process_time()))
    pipeline.combine(lightness, ab_small, out_dtype=image.dtype, alpha=alpha)
    marks.append((time.perf_counter(), time.process_time()))
    names = ("lightness", "segment", "colorize_model_size", "upsample_and_rgb")
    wall = {name: round(marks[i + 1][0] - marks[i][0], 3) for i, name in enumerate(names)}
    cpu = {name: round(marks[i + 1][1] - marks[i][1], 3) for i, name in enumerate(names)}
    return {"stages_wall_s": wall, "stages_cpu_s": cpu, "total_s": round(marks[-1][0] - marks[0][0], 3),
            "total_cpu_s": round(marks[-1][1] - marks[0][1], 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=6000)
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--segmenter", default=pipeline.PRETRAINED_SEGMENTER_WEIGHTS)
    p.add_argument("--colorizer", default=pipeline.COLORIZER_WEIGHTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    segmenter = pipeline.load_segmenter(device, args.segmenter)
    colorizer = pipeline.load_colorizer(device, args.colorizer)
    image = synthetic_photo(args.height, args.width)
    runs = []
    for _ in range(args.repeats):
        load = round(os.getloadavg()[0], 2)
        runs.append({"load_average_1min_before": load, **time_stages(image, segmenter, colorizer)})
    totals = [r["total_s"] for r in runs]
    cpu_totals = [r["total_cpu_s"] for r in runs]
    result = {"size": f"{args.width}x{args.height}", "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "segmenter": args.segmenter, "colorizer": args.colorizer,
              "segmenter_input": segmenter.input_size, "colorizer_input": colorizer.input_size,
              "total_s": {"min": min(totals), "median": round(float(np.median(totals)), 3), "max": max(totals)},
              "total_cpu_s": {"min": min(cpu_totals), "median": round(float(np.median(cpu_totals)), 3),
                              "max": max(cpu_totals)},
              "runs": runs}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
