"""Harmonization benchmark: quality on held-out synthetic composites, speed at 512² and 24 MP.

    python -m bench.harmonization --cache runs/dih/cache256 [--count 400] [--sheets DIR]

Held-out composites are the validation split of the pre-rendered cache (source photos disjoint
from training; see core/data/harmonization.py). Metrics on the 0–255 scale over whole images
(MSE, PSNR) and the foreground (fMSE), averaged per image, as iHarmony4 reports them. Methods:
cut-and-paste (the input), statistics transfer, DIH without and with the semantic branch (each
through the full-resolution path of core/harmonization/deep.py). ``--sheets`` renders the real
composites as input | statistics | deep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data.harmonization import load_cache
from core.harmonization.deep import harmonize_deep, load_model
from core.harmonization.statistics import harmonize_statistics
from core.imaging.io import load_image, load_mask, mask_to_float, save_image
from core.models.dih import DeepHarmonization, DIHConfig
from core.weights import Manifest

REAL = Path("../shared/datasets/harmonization/real-composites")


def model_from(spec: str) -> DeepHarmonization:
    """A weights id from the manifest, or a training checkpoint (``*.pt``)."""
    if spec.endswith(".pt"):
        state = torch.load(spec, map_location="cpu", weights_only=False)
        model = DeepHarmonization(DIHConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        return model.eval()
    return load_model(spec, Manifest.load())


def metrics(result: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    err = (result.astype(np.float64) - target.astype(np.float64)) ** 2
    mse = float(err.mean())
    fg = mask > 0.5
    fmse = float(err[fg].mean()) if fg.any() else 0.0
    psnr = float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
    return {"mse": mse, "psnr": psnr, "fmse": fmse}


def quality(cache_dir: Path, count: int, methods: dict) -> dict:
    val = load_cache(cache_dir, "val")
    n = min(count, len(val["composite"]))
    sums = {name: {"mse": 0.0, "psnr": 0.0, "fmse": 0.0} for name in methods}
    for i in range(n):
        composite, target = np.asarray(val["composite"][i]), np.asarray(val["target"][i])
        mask = mask_to_float(np.asarray(val["mask"][i]))
        for name, method in methods.items():
            for key, value in metrics(method(composite, mask), target, mask).items():
                sums[name][key] += value
    return {"count": n, "size": int(val["composite"].shape[1]),
            "methods": {name: {k: round(v / n, 2) for k, v in s.items()} for name, s in sums.items()}}


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up (first call allocates and initializes)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def speed(methods: dict, photo: Path) -> dict:
    base = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    out = {}
    for label, (height, width), repeat in (("512x512", (512, 512), 3), ("24MP_6000x4000", (4000, 6000), 1)):
        image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((height, width), np.float32)
        cv2.ellipse(mask, (width // 2, height // 2), (width // 4, height // 3), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 400))
        entry = {}
        for name, method in methods.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            seconds = _timed(lambda method=method, image=image, mask=mask: method(image, mask), repeat)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            entry[name] = {"seconds": round(seconds, 3), "peak_rss_growth_mb": round((after - before) / 1024, 1)}
        out[label] = entry
    return out


def sheets(out_dir: Path, deep, statistics) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted((REAL / "composites").glob("*.png")):
        mask_path = REAL / "masks" / path.name
        if not mask_path.exists():
            continue
        image = load_image(path)[..., :3]
        mask = mask_to_float(load_mask(mask_path))
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        panels = [image, statistics(image, mask), deep(image, mask)]
        gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
        save_image(out_dir / path.name, np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/dih/cache256"))
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--semantic", default="dih-small", help="weights id or checkpoint of DIH with semantics")
    parser.add_argument("--nosem", default="dih-small-nosem", help="weights id or checkpoint without semantics")
    parser.add_argument("--sheets", type=Path, help="folder for the real-composite comparison sheets")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = {"dih_without_semantics": model_from(args.nosem), "dih_with_semantics": model_from(args.semantic)}
    methods = {
        "cut_and_paste": lambda image, mask: image,
        "statistics": lambda image, mask: harmonize_statistics(image, mask, 1.0),
        **{name: (lambda image, mask, m=model: harmonize_deep(image, mask, m)) for name, model in models.items()},
    }
    report = {"held_out_synthetic": quality(args.cache, args.count, methods),
              "models": {name: {"resolution": m.config.resolution, "semantic": m.config.semantic,
                                "parameters": sum(p.numel() for p in m.parameters())}
                         for name, m in models.items()}}
    if not args.no_speed:
        photo = next(iter(sorted((REAL / "composites").glob("*.png"))), None) or sorted(
            Path("../shared/datasets/davis/train/images").glob("*.jpg"))[0]
        timed = {"statistics": methods["statistics"], "deep": methods["dih_with_semantics"]}
        report["cpu_seconds_per_image"] = speed(timed, photo)
        report["cpu"] = {"torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                         "load_average_1min": round(os.getloadavg()[0], 2)}
    if args.sheets:
        report["sheets"] = {"folder": str(args.sheets),
                            "count": sheets(args.sheets, methods["dih_with_semantics"], methods["statistics"])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
