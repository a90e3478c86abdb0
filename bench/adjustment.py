"""SA-AdjustNet on held-out generated images: mean per-pixel L2 distance in CIELab to the target.

    .venv/bin/python bench/adjustment.py [--data ../shared/datasets] [--styles pop-out xpro watercolor]
        [--limit 40] [--max-side 512] [--sheet-dir runs/sa_adjustnet]

For every style: the input itself, the context-free global colour-mapping baseline, SA-AdjustNet without
the semantic adjustment map (Eq. 2 head) and with it (Eqs. 3–7 head), all from the committed weights,
applied at the photo's resolution (longest side ≤ --max-side). Held-out photos are those whose id hashes
into the held-out split (``core.data.adjustment_styles.is_held_out``), never seen in training. Also the
time to adjust one 512×512 image on CPU (and GPU when there is one), and a contact sheet per style
(input | predicted map | output | target) written under --sheet-dir (not committed: dataset images).
Prints one JSON object.
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

from core.actions.adjust import load_model  # noqa: E402
from core.data import adjustment_styles as styles  # noqa: E402
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch  # noqa: E402
from core.imaging.io import save_image  # noqa: E402
from core.models.sa_adjustnet import adjust_lab, apply_global  # noqa: E402
from core.training.sa_adjustnet import downscale  # noqa: E402

PAPER = {"pop-out": {"input": 13.86, "sa-adjustnet": 6.59, "sa-adjustnet+mt": 5.92, "sa-adjustnet+mt+s": 5.86},
         "xpro": {"input": 19.71, "sa-adjustnet": 6.97, "sa-adjustnet+mt": 6.66, "sa-adjustnet+mt+s": 7.03},
         "watercolor": {"input": 15.30, "sa-adjustnet": 6.81, "sa-adjustnet+mt": 6.75, "sa-adjustnet+mt+s": 6.83}}
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [128, 128, 128], [0, 0, 0]], np.uint8)


def lab_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm(dim=-1).mean())


def time_512(model, device: torch.device, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    rgb = torch.from_numpy(rng.random((512, 512, 3), dtype=np.float32))
    lab = rgb_to_lab_torch(rgb, dim=-1)
    model.to(device)
    adjust_lab(model, lab)  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        adjust_lab(model, lab)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    model.to("cpu")
    return float(np.median(times))


def bench_style(style: str, data: str, limit: int, max_side: int, sheet_dir: Path | None) -> dict:
    model, baseline = load_model(style, torch.device("cpu"))
    samples = [s for s in styles.list_samples(data, style) if styles.is_held_out(s.key)]
    # Spread the limit over the whole held-out list (DAVIS frames of one sequence are near-duplicates).
    if len(samples) > limit:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
    sums = {"input": 0.0, "global_baseline": 0.0, "sa_adjustnet_no_map": 0.0, "sa_adjustnet_map": 0.0}
    sheet = []
    for i, sample in enumerate(samples):
        rgb, annotation = styles.load_sample(sample)
        rgb = downscale(rgb, max_side)
        annotation = downscale(annotation, max_side, nearest=True)
        target_rgb = styles.render(style, rgb, annotation)
        lab = rgb_to_lab_torch(torch.from_numpy(rgb.copy()), dim=-1)
        target = rgb_to_lab_torch(torch.from_numpy(np.ascontiguousarray(target_rgb)), dim=-1)
        direct = adjust_lab(model, lab, head="direct")
        mapped, probabilities = adjust_lab(model, lab, head="map", return_map=True)
        # errors are measured on what a user gets: the output converted to sRGB (gamut-clipped) and back
        shown = lambda x: rgb_to_lab_torch(lab_to_rgb_torch(x, dim=-1), dim=-1)  # noqa: E731
        sums["input"] += lab_distance(lab, target)
        sums["global_baseline"] += lab_distance(shown(apply_global(baseline, lab)), target)
        sums["sa_adjustnet_no_map"] += lab_distance(shown(direct), target)
        sums["sa_adjustnet_map"] += lab_distance(shown(mapped), target)
        if sheet_dir is not None and i % max(1, len(samples) // 6) == 0 and len(sheet) < 6:
            index = probabilities.argmax(-1).numpy()
            row = [rgb, PALETTE[index % len(PALETTE)] / 255.0, lab_to_rgb_torch(mapped, dim=-1).numpy(), target_rgb]
            row = [downscale(np.asarray(x, np.float32), 256) for x in row]
            height = min(x.shape[0] for x in row)
            sheet.append(np.concatenate([x[:height] for x in row], 1))
    if sheet:
        width = max(r.shape[1] for r in sheet)
        sheet = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in sheet]
        save_image(sheet_dir / f"contact-{style}.png", np.concatenate(sheet, 0))
    result = {k: round(v / max(len(samples), 1), 3) for k, v in sums.items()}
    result["ratio_map_to_input"] = round(result["sa_adjustnet_map"] / max(result["input"], 1e-9), 3)
    result["images"] = len(samples)
    result["presets_used"] = model.config.presets
    result["seconds_per_512px_cpu"] = round(time_512(model, torch.device("cpu")), 3)
    if torch.cuda.is_available():
        result["seconds_per_512px_gpu"] = round(time_512(model, torch.device("cuda")), 4)
    result["paper_yan_et_al"] = PAPER[style]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--styles", nargs="+", choices=styles.STYLES, default=list(styles.STYLES))
    parser.add_argument("--limit", type=int, default=40, help="held-out images per style")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--sheet-dir", type=Path, default=Path("runs/sa_adjustnet"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"metric": "mean per-pixel L2 distance in CIELab to the target, held-out generated images",
              "cpu_threads": torch.get_num_threads()}
    for style in args.styles:
        report[style] = bench_style(style, args.data, args.limit, args.max_side, args.sheet_dir)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
