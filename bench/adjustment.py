"""SA-AdjustNet on the report split of generated photos: per-pixel L2 distance in CIELab to the target.

    .venv/bin/python bench/adjustment.py [--data ../shared/datasets] [--styles pop-out xpro watercolor]
        [--limit 120] [--max-side 512] [--sheet-dir runs/sa_adjustnet/sheets] [--out bench/results/adjustment.json]

For every style, on the photos of the *report* split (``adjustment_styles.split_of``; never used for
training or for picking checkpoints, which used the *select* split): the input photo itself, the
context-free global colour mapping trained on the same pixels, SA-AdjustNet with the continuous context
(Eq. 2) and with the discrete semantic adjustment map (Eqs. 3–7), all from the committed weights, applied at
the photo's resolution (longest side ≤ --max-side), Watercolor's fixed brush applied first as at inference.
Per method: mean, median and a 95 % bootstrap interval of the per-image mean error, the ratio to the
input's error next to the paper's ratio, and how much better than the global mapping. The map: mean max p
(before the argmax), share of pixels with max p > 0.9, each preset's share of pixels and of images using it.
Time to adjust one 512×512 image (map head) on CPU, one thread. Contact sheets per style (input | map |
output | target) under --sheet-dir (not committed: dataset images). Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary  # noqa: E402
from core.actions.adjust import load_model  # noqa: E402
from core.data import adjustment_styles as styles  # noqa: E402
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch  # noqa: E402
from core.imaging.io import save_image  # noqa: E402
from core.models.sa_adjustnet import adjust_lab, apply_global  # noqa: E402
from core.training.sa_adjustnet import downscale, render_pair  # noqa: E402

# Nam & Kim, Table 1 (Lab L2 on Yan et al.'s retouched photos): input and SA-AdjustNet+Huber+MT(+S)
PAPER = {"pop-out": {"input": 13.86, "sa-adjustnet+huber+mt": 5.92, "sa-adjustnet+huber+mt+s": 5.86},
         "xpro": {"input": 19.71, "sa-adjustnet+huber+mt": 6.66, "sa-adjustnet+huber+mt+s": 7.03},
         "watercolor": {"input": 15.30, "sa-adjustnet+huber+mt": 6.75, "sa-adjustnet+huber+mt+s": 6.83}}
PAPER_RATIO = {"pop-out": 0.42, "xpro": 0.34, "watercolor": 0.44}  # the targets (best row / input)
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]], np.uint8)
METHODS = ("input", "global_baseline", "sa_adjustnet_eq2", "sa_adjustnet_map")


def lab_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm(dim=-1).mean())


def time_512(model, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    lab = rgb_to_lab_torch(torch.from_numpy(rng.random((512, 512, 3), dtype=np.float32)), dim=-1)
    adjust_lab(model, lab)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        adjust_lab(model, lab)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_style(style: str, data: str, limit: int, max_side: int, sheet_dir: Path | None) -> dict:
    model, baseline = load_model(style, torch.device("cpu"))
    samples = [s for s in styles.list_samples(data, style) if styles.split_of(s.key) == "report"]
    if len(samples) > limit:  # spread over the list (it is ordered by source)
        samples = [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))]
    errors = {m: [] for m in METHODS}
    presets = model.config.presets
    pixel_use, image_use = np.zeros(presets), np.zeros(presets)
    max_p, confident, pixels = 0.0, 0.0, 0
    sheet = []
    shown = lambda x: rgb_to_lab_torch(lab_to_rgb_torch(x, dim=-1), dim=-1)  # noqa: E731  what a user gets
    for i, sample in enumerate(samples):
        rgb, annotation = styles.load_sample(sample)
        rgb = downscale(rgb, max_side)
        annotation = downscale(annotation, max_side, nearest=True)
        net_in, target_rgb = render_pair(style, rgb, annotation)
        photo = rgb_to_lab_torch(torch.from_numpy(np.ascontiguousarray(rgb, np.float32)), dim=-1)
        lab = rgb_to_lab_torch(torch.from_numpy(np.ascontiguousarray(net_in, np.float32)), dim=-1)
        target = rgb_to_lab_torch(torch.from_numpy(np.ascontiguousarray(target_rgb, np.float32)), dim=-1)
        direct = adjust_lab(model, lab, head="direct")
        mapped, used, soft = adjust_lab(model, lab, return_map=True, return_probabilities=True)
        errors["input"].append(lab_distance(photo, target))
        errors["global_baseline"].append(lab_distance(shown(apply_global(baseline, lab)), target))
        errors["sa_adjustnet_eq2"].append(lab_distance(shown(direct), target))
        errors["sa_adjustnet_map"].append(lab_distance(shown(mapped), target))
        index = used.argmax(-1)
        counts = np.bincount(index.reshape(-1).numpy(), minlength=presets)
        pixel_use += counts
        image_use += counts > 0
        top = soft.max(-1).values
        max_p += float(top.sum())
        confident += float((top > 0.9).sum())
        pixels += top.numel()
        if sheet_dir is not None and i % max(1, len(samples) // 8) == 0 and len(sheet) < 8:
            row = [rgb, PALETTE[index.numpy() % len(PALETTE)] / 255.0, lab_to_rgb_torch(mapped, dim=-1).numpy(),
                   target_rgb]
            row = [downscale(np.asarray(x, np.float32), 256) for x in row]
            height = min(x.shape[0] for x in row)
            sheet.append(np.concatenate([x[:height] for x in row], 1))
    if sheet:
        width = max(r.shape[1] for r in sheet)
        sheet = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in sheet]
        sheet_dir.mkdir(parents=True, exist_ok=True)
        save_image(sheet_dir / f"contact-{style}.png", np.concatenate(sheet, 0))
    result = {"images": len(samples), "presets": presets}
    for method in METHODS:
        result[method] = summary(errors[method], np.random.default_rng(0), count=False)
    base = np.asarray(errors["input"])
    for method in METHODS[1:]:
        result[method]["ratio_to_input"] = round(float(np.mean(errors[method]) / base.mean()), 3)
    for method in ("sa_adjustnet_eq2", "sa_adjustnet_map"):
        result[method]["better_than_global_baseline"] = round(
            1 - float(np.mean(errors[method]) / np.mean(errors["global_baseline"])), 3)
    result["paper_ratio"] = PAPER_RATIO[style]
    result["paper_table1"] = PAPER[style]
    result["map"] = {"mean_max_p": round(max_p / max(pixels, 1), 3),
                     "share_max_p_over_0.9": round(confident / max(pixels, 1), 3),
                     "preset_pixel_share": [round(float(u), 3) for u in pixel_use / max(pixel_use.sum(), 1)],
                     "preset_image_share": [round(float(u) / max(len(samples), 1), 3) for u in image_use],
                     "every_preset_used": bool((pixel_use > 0).all())}
    result["preset_words"] = [e.get("words", "") for e in _effects(style)]
    result["seconds_per_512px_cpu_1_thread"] = round(time_512(model), 3)
    if style == "watercolor":  # the fixed brush before the network
        photo_512 = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
        start = time.perf_counter()
        styles.superpixel_brush(photo_512)
        result["seconds_brush_512px"] = round(time.perf_counter() - start, 3)
    return result


def _effects(style: str) -> list[dict]:
    from core.weights import Manifest

    return Manifest.load().entry(f"sa-adjustnet-{style}").config.get("preset_effects") or []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--styles", nargs="+", choices=styles.STYLES, default=list(styles.STYLES))
    parser.add_argument("--limit", type=int, default=120, help="report-split images per style at most")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--sheet-dir", type=Path, default=Path("runs/sa_adjustnet/sheets"))
    parser.add_argument("--out", type=Path, help="also write the JSON here (bench/results/adjustment.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"metric": "per-image mean per-pixel L2 distance in CIELab to the target (after sRGB), report split "
                        "of generated photos; mean, median, 95 % bootstrap interval of the mean",
              "cpu_threads": torch.get_num_threads()}
    previous = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    for style in styles.STYLES:
        if style in args.styles:
            report[style] = bench_style(style, args.data, args.limit, args.max_side, args.sheet_dir)
        elif style in previous:
            report[style] = previous[style]  # a style not re-run keeps its last measured numbers
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
