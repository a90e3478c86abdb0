"""Harmonization benchmark: every method side by side on synthetic and rendered composites with ground truth,
sheets of real composites, and time per image.

    python -m bench.harmonization --cache runs/harmonizer/cache256 [--sheets runs/bench/harmonization-sheets]

Sets:
* ``synthetic``: the *report* half of the cache's validation split (source photos disjoint from training;
  the other half picks checkpoints, see ``core.data.harmonization.validation_half``);
* ``rendered_gt``: ``../shared/datasets/harmonization/rendered-gt``, 15 rendered scenes with ground truth
  (a development set: it chooses the default method, it never trains anything), with a per-image table;
* ``--sheets``: ``harmonization/real-composites`` (no ground truth) as input | statistics | dih | default.

Metrics on the 0–255 scale, per image: MSE and PSNR over the whole image, fMSE over the foreground
(mask > 0.5); for each, the mean, the median and a bootstrap 95 % interval of the mean. Methods:
cut-and-paste (the input), statistics transfer, the paper's DIH with and without its scene-parsing
branch, and the learned colour transform: the default (two heads averaged), the head on the pretrained
prior alone and the head without it (colour statistics only). A method's weights
are a manifest id or a training checkpoint (``*.pt``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.stats import summary
from core.actions.harmonize import DEFAULT_METHOD
from core.data.harmonization import load_cache, validation_half
from core.harmonization.deep import harmonize_deep, load_model
from core.harmonization.statistics import harmonize_statistics
from core.harmonization.transform import DEFAULT_WEIGHTS as TRANSFORM_WEIGHTS
from core.harmonization.transform import harmonize_transform, load_harmonizer
from core.imaging.io import load_image, load_mask, mask_to_float, save_image
from core.models.harmonizer import HarmonizerConfig, WhiteBoxHarmonizer
from core.weights import Manifest

DATASETS = Path("../shared/datasets/harmonization")
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


def transform_model(spec: str) -> WhiteBoxHarmonizer:
    if spec.endswith(".pt"):
        from core.models.efficientnet_lite import load_pretrained

        state = torch.load(spec, map_location="cpu", weights_only=False)
        model = WhiteBoxHarmonizer(HarmonizerConfig.from_dict(state["config"]))
        model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("backbone.")},
                              strict=False)
        if model.backbone is not None:
            model.backbone = load_pretrained()
        return model.eval()
    return load_harmonizer(spec, Manifest.load())


def methods_from(args: argparse.Namespace) -> dict[str, Method]:
    methods: dict[str, Method] = {
        "cut_and_paste": lambda image, mask: image,
        "statistics": lambda image, mask: harmonize_statistics(image, mask, 1.0),
    }
    manifest = Manifest.load()
    for name, spec in (("dih", args.dih), ("dih_without_parsing", args.dih_nosem)):
        if spec and spec in manifest.entries:
            methods[name] = lambda image, mask, m=load_model(spec, manifest): harmonize_deep(image, mask, m)
    for name, specs in (("transform", args.transform), ("transform_prior_only", args.transform_prior),
                        ("transform_without_prior", args.transform_noprior)):
        specs = [s for s in specs.split(",") if s.endswith(".pt") or s in manifest.entries]
        if specs:
            methods[name] = lambda image, mask, m=[transform_model(s) for s in specs]: harmonize_transform(image,
                                                                                                          mask, m)
    return methods


def metrics(result: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    err = (result[..., :3].astype(np.float64) - target[..., :3].astype(np.float64)) ** 2
    mse = float(err.mean())
    fg = mask > 0.5
    return {"mse": mse, "psnr": float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))),
            "fmse": float(err[fg].mean()) if fg.any() else 0.0}


def score(samples, methods: dict[str, Method]) -> tuple[dict, list[dict]]:
    per_image = []
    for name, composite, target, mask in samples:
        row = {"image": name}
        for method_name, method in methods.items():
            row[method_name] = {k: round(v, 2) for k, v in metrics(method(composite, mask), target, mask).items()}
        per_image.append(row)
    table = {m: {k: summary([row[m][k] for row in per_image], np.random.default_rng(0), digits=2, count=False)
             for k in ("fmse", "mse", "psnr")} for m in methods}
    return table, per_image


def synthetic_samples(cache_dir: Path, count: int):
    val = load_cache(cache_dir, "val")
    report = np.nonzero(validation_half(cache_dir) == "report")[0][:count]
    for i in report:
        yield (f"val{i}", np.asarray(val["composite"][i]), np.asarray(val["target"][i]),
               mask_to_float(np.asarray(val["mask"][i])))


def rendered_samples(root: Path):
    for scene in sorted(p for p in root.iterdir() if (p / "composite.png").exists()):
        yield (scene.name, load_image(scene / "composite.png")[..., :3], load_image(scene / "real.png")[..., :3],
               mask_to_float(load_mask(scene / "mask.png")))


def sheets(out_dir: Path, methods: dict[str, Method], order: list[str]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    real = DATASETS / "real-composites"
    count = 0
    for path in sorted((real / "composites").glob("*.png")):
        mask_path = real / "masks" / path.name
        if not mask_path.exists():
            continue
        image = load_image(path)[..., :3]
        mask = mask_to_float(load_mask(mask_path))
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
        panels = []
        for name in order:
            panels += [methods[name](image, mask)[..., :3], gap]
        save_image(out_dir / path.name, np.concatenate(panels[:-1], axis=1))
        count += 1
    return {"folder": str(out_dir), "count": count, "panels": order}


def speed(methods: dict[str, Method], photo: Path) -> dict:
    base = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    out = {}
    for label, (height, width), repeat in (("512x512", (512, 512), 3), ("24MP_6000x4000", (4000, 6000), 1)):
        image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((height, width), np.float32)
        cv2.ellipse(mask, (width // 2, height // 2), (width // 4, height // 3), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 400))
        entry = {}
        for name, method in methods.items():
            method(image, mask)  # warm-up: first call allocates
            runs = []
            for _ in range(repeat):
                start = time.perf_counter()
                method(image, mask)
                runs.append(time.perf_counter() - start)
            entry[name] = round(float(np.median(runs)), 3)
        out[label] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/harmonizer/cache256"))
    parser.add_argument("--count", type=int, default=300, help="synthetic composites (report half)")
    parser.add_argument("--rendered", type=Path, default=DATASETS / "rendered-gt")
    parser.add_argument("--dih", default="dih-paper-small")
    parser.add_argument("--dih-nosem", default="dih-paper-small-nosem")
    parser.add_argument("--transform", default=",".join(TRANSFORM_WEIGHTS),
                        help="the default: comma-separated heads whose transforms are averaged")
    parser.add_argument("--transform-prior", default="harmonizer-lite0")
    parser.add_argument("--transform-noprior", default="harmonizer-statistics")
    parser.add_argument("--sheets", type=Path, help="folder for the real-composite sheets")
    parser.add_argument("--per-image", action="store_true", help="print the rendered-gt per-image table")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = methods_from(args)
    report: dict = {"default_method": DEFAULT_METHOD, "methods": list(methods)}
    if (args.cache / "val_composite.npy").exists():
        table, per_image = score(synthetic_samples(args.cache, args.count), methods)
        report["synthetic"] = {"count": len(per_image), **table}
    if args.rendered.is_dir():
        table, per_image = score(rendered_samples(args.rendered), methods)
        report["rendered_gt"] = {"count": len(per_image), **table}
        if args.per_image:
            report["rendered_gt_per_image"] = {row["image"]: {m: row[m]["fmse"] for m in methods}
                                               for row in per_image}
    if args.sheets:
        order = [m for m in ("cut_and_paste", "statistics", "dih", "transform") if m in methods]
        report["sheets"] = sheets(args.sheets, methods, order)
    if not args.no_speed:
        photo = sorted((DATASETS / "real-composites" / "composites").glob("*.png"))[0]
        timed = {k: v for k, v in methods.items() if k != "cut_and_paste"}
        report["cpu_seconds_per_image"] = speed(timed, photo)
        report["cpu"] = {"torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                         "load_average_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
