"""Train SA-AdjustNet for one style (and the context-free global colour-mapping baseline beside it).

    python -m core.training.sa_adjustnet --style pop-out --data ../shared/datasets \
        --out runs/sa_adjustnet/pop-out [--minutes 40] [--resume] [--export weights]

The first run renders the style's training pairs (``core.data.adjustment_styles``) once, squashed to
context_size² (the backbone's view at inference too), into ``<cache>/<style>-<size>.npz``; ``--paired DIR``
uses photos retouched by a person instead (Yan et al.'s paired-folder layout). Each step: 4 images,
random rotation ±10° with replicated borders and horizontal flip, 2 048 random pixels per image, Huber
loss (δ = 0.04) on both heads plus λ = 0.01 scene-parsing cross-entropy (Eq. 9), Adam. Training stops after
``--minutes`` of wall-clock time (the learning rate follows a cosine over that budget); checkpoints every
few minutes in ``--out`` keep training resumable. ``--export DIR`` writes the best checkpoint (by held-out
Lab error) as ``sa-adjustnet-<style>.safetensors`` and registers it in DIR's manifest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data import adjustment_styles as styles
from core.imaging.color import rgb_to_lab_torch
from core.imaging.io import load_image, to_float
from core.models.sa_adjustnet import (
    VARIANTS,
    GlobalColorMapping,
    SAAdjustNet,
    export_tensors,
    huber,
    scale_lab,
    total_loss,
    unscale_lab,
)
from core.weights import register_weights, save_tensors

BASELINE_LR = 1e-3  # the global colour mapping's Adam rate, on the same cosine schedule
PARSE_CLASSES = {"pop-out": 3, "watercolor": 3, "xpro": 34}  # label 0 = ignore in both
# Photos are rendered at this size for the cache (the effects scale with the image; the cache is 160²);
# Watercolor's NumPy SLIC is the slow part of the cache, so it renders smaller.
SOURCE_MAX_SIDE = {"pop-out": 384, "xpro": 384, "watercolor": 256}


def weight_id(style: str) -> str:
    return f"sa-adjustnet-{style}"


# --- cache ------------------------------------------------------------------------------------


def _squash(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size, size), interpolation=interp)


def _to_cache(rgb: np.ndarray, size: int) -> np.ndarray:
    return (_squash(np.clip(rgb, 0, 1), size) * 255 + 0.5).astype(np.uint8)


def downscale(array: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    h, w = array.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def build_cache(path: Path, style: str, datasets: str | None, paired: str | None, size: int,
                held_out: bool, log=print) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    inputs, targets, labels, names = [], [], [], []
    if paired:
        for name, src, dst in styles.read_paired_folder(paired, style):
            if styles.is_held_out(name) != held_out:
                continue
            rgb = downscale(to_float(load_image(src))[..., :3], SOURCE_MAX_SIDE.get(style, 384))
            out = to_float(load_image(dst))[..., :3]
            out = cv2.resize(out, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
            inputs.append(_to_cache(rgb, size)), targets.append(_to_cache(out, size))
            labels.append(np.zeros((size, size), np.uint8))
            names.append(name)
    else:
        samples = [s for s in styles.list_samples(datasets, style) if styles.is_held_out(s.key) == held_out]
        start = time.time()
        for i, sample in enumerate(samples):
            rgb, annotation = styles.load_sample(sample)
            rgb = downscale(rgb, SOURCE_MAX_SIDE[style])
            annotation = downscale(annotation, SOURCE_MAX_SIDE[style], nearest=True)
            inputs.append(_to_cache(rgb, size)), targets.append(_to_cache(styles.render(style, rgb, annotation), size))
            labels.append(_squash(styles.parse_labels(style, annotation), size, nearest=True))
            names.append(sample.name)
            if i % 100 == 0:
                log(f"cache {style} {'held-out' if held_out else 'train'}: {i}/{len(samples)} "
                    f"({time.time() - start:.0f} s)")
    data = {"inputs": np.stack(inputs), "targets": np.stack(targets), "labels": np.stack(labels),
            "names": np.array(names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


# --- batches ----------------------------------------------------------------------------------


def augment(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, labels: np.ndarray):
    """Rotation ±10° about the centre with replicated borders, and a horizontal flip half the time."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-10, 10)), 1.0)
    warp = dict(dsize=(w, h), borderMode=cv2.BORDER_REPLICATE)
    image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
    target = cv2.warpAffine(target, matrix, flags=cv2.INTER_LINEAR, **warp)
    labels = cv2.warpAffine(labels, matrix, flags=cv2.INTER_NEAREST, **warp)
    if rng.random() < 0.5:
        image, target, labels = image[:, ::-1], target[:, ::-1], labels[:, ::-1]
    return image, target, labels


def make_batch(data: dict[str, np.ndarray], indices: np.ndarray, rng: np.random.Generator, pixels: int,
               train: bool = True):
    """Scaled Lab images N×3×S×S, sampled grid N×P×2, input Lab N×P×3, target change N×P×3, labels N×P."""
    images, targets, labels = [], [], []
    for i in indices:
        x, y, lab = data["inputs"][i], data["targets"][i], data["labels"][i]
        if train:
            x, y, lab = augment(rng, x, y, lab)
        images.append(np.ascontiguousarray(x)), targets.append(np.ascontiguousarray(y))
        labels.append(np.ascontiguousarray(lab))
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    out = torch.from_numpy(np.stack(targets)).permute(0, 3, 1, 2).float() / 255
    lab_in, lab_out = scale_lab(rgb_to_lab_torch(rgb), dim=1), scale_lab(rgb_to_lab_torch(out), dim=1)
    n, _, h, w = lab_in.shape
    ys = torch.from_numpy(rng.integers(0, h, (n, pixels)))
    xs = torch.from_numpy(rng.integers(0, w, (n, pixels)))
    grid = torch.stack([(xs + 0.5) * 2 / w - 1, (ys + 0.5) * 2 / h - 1], -1).float()
    flat = ys * w + xs
    pick = lambda t: torch.gather(t.reshape(n, 3, -1), 2, flat[:, None].expand(n, 3, pixels)).transpose(1, 2)  # noqa: E731
    lab_pixels = pick(lab_in)
    change = pick(lab_out) - lab_pixels
    lab_t = torch.from_numpy(np.stack(labels)).long().reshape(n, -1)
    picked = torch.gather(lab_t, 1, flat)
    pixel_labels = torch.where(picked > 0, picked, -1)  # class ids as in the dataset; 0 (unlabeled) ignored
    return lab_in, grid, lab_pixels, change, pixel_labels


# --- evaluation -------------------------------------------------------------------------------


def _lab_image(rgb_u8: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(np.ascontiguousarray(rgb_u8)).permute(2, 0, 1)[None].float() / 255
    return scale_lab(rgb_to_lab_torch(rgb), dim=1)


def lab_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-pixel L2 distance in CIELab units between scaled Lab tensors (channels last)."""
    return float((unscale_lab(pred) - unscale_lab(target)).norm(dim=-1).mean())


@torch.no_grad()
def evaluate(model: SAAdjustNet, baseline: GlobalColorMapping, data: dict[str, np.ndarray],
             limit: int = 24) -> dict[str, float]:
    """Mean per-pixel CIELab L2 error (Lab units) on the cached held-out images, all pixels."""
    model.eval()
    sums = {"input": 0.0, "baseline": 0.0, "direct": 0.0, "map": 0.0}
    # spread over the held-out list: it is ordered by source, and DAVIS frames of a sequence are near-duplicates
    picks = np.unique(np.linspace(0, len(data["inputs"]) - 1, min(limit, len(data["inputs"]))).round().astype(int))
    count = len(picks)
    size = data["inputs"].shape[1]
    for i in picks:
        lab_in = _lab_image(data["inputs"][i])
        target = _lab_image(data["targets"][i])
        grid = torch.stack(torch.meshgrid((torch.arange(size) + 0.5) * 2 / size - 1,
                                          (torch.arange(size) + 0.5) * 2 / size - 1, indexing="ij")[::-1], -1)
        grid = grid.reshape(1, -1, 2)
        pixels = lab_in.reshape(1, 3, -1).transpose(1, 2)
        tgt = target.reshape(1, 3, -1).transpose(1, 2)
        out = model(lab_in, grid, pixels)
        sums["input"] += lab_error(pixels, tgt)
        sums["baseline"] += lab_error(pixels + baseline(pixels), tgt)
        sums["direct"] += lab_error(pixels + out["direct"], tgt)
        sums["map"] += lab_error(pixels + out["map"], tgt)
    model.train()
    return {k: v / max(count, 1) for k, v in sums.items()}


# --- export -----------------------------------------------------------------------------------


def export(checkpoint: Path, directory: Path, style: str) -> Path:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    best = ckpt.get("best") or {"model": ckpt["model"], "metrics": {}}
    config = ckpt["config"]
    path = directory / f"{weight_id(style)}.safetensors"
    metadata = {"config": json.dumps(config), "style": style, "step": str(best.get("step", ckpt["step"])),
                "metrics": json.dumps(best.get("metrics", {}))}
    # SA-AdjustNet from its best held-out checkpoint; the baseline as last trained (its rate has decayed)
    save_tensors(path, export_tensors(best["model"], ckpt["baseline"]), metadata=metadata)
    register_weights(path, weight_id(style), model="sa_adjustnet", config={"style": style, **config},
                     card=f"{weight_id(style)}.md", directory=directory)
    return path


# --- training ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", choices=styles.STYLES, required=True)
    parser.add_argument("--data", default="../shared/datasets",
                        help="datasets root (davis/, bsds500/, siftflow/)")
    parser.add_argument("--paired",
                        help="a folder of photos retouched by a person (input/ + output/) instead")
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--cache", type=Path, default=Path("runs/sa_adjustnet/cache"))
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="cpu-small")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the variant's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0 = no limit)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-minutes", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", type=Path,
                        help="write the best checkpoint to this weights folder and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.out / "checkpoint.pt"
    if args.export:
        print(export(checkpoint, args.export, args.style))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "log.txt", "a", buffering=1)

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, file=log_file)
        print(line, flush=True)

    config = replace(VARIANTS[args.variant], parse_classes=PARSE_CLASSES[args.style])
    if args.lr:
        config = replace(config, learning_rate=args.lr)
    tag = "paired" if args.paired else "gen"
    train = build_cache(args.cache / f"{args.style}-{tag}-{config.context_size}.npz", args.style, args.data,
                        args.paired, config.context_size, held_out=False, log=log)
    val = build_cache(args.cache / f"{args.style}-{tag}-{config.context_size}-val.npz", args.style, args.data,
                      args.paired, config.context_size, held_out=True, log=log)
    log(f"style {args.style}: {len(train['inputs'])} training, {len(val['inputs'])} held-out images")

    torch.manual_seed(args.seed)
    model, baseline = SAAdjustNet(config), GlobalColorMapping()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    baseline_opt = torch.optim.Adam(baseline.parameters(), lr=BASELINE_LR)
    step, elapsed, best = 0, 0.0, None
    rng = np.random.default_rng(args.seed)
    if args.resume and checkpoint.exists():
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"]), baseline.load_state_dict(ckpt["baseline"])
        optimizer.load_state_dict(ckpt["optimizer"]), baseline_opt.load_state_dict(ckpt["baseline_optimizer"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt.get("best")
        rng = np.random.default_rng([args.seed, step])
        log(f"resumed at step {step}, {elapsed / 60:.1f} min")
        if best is not None:  # re-measure the kept best the way this run measures, so they compare
            kept = SAAdjustNet(config)
            kept.load_state_dict(best["model"])
            best["metrics"] = evaluate(kept, baseline, val)
            log(f"best so far (step {best['step']}) re-measured: {json.dumps(best['metrics'])}")
    (args.out / "config.json").write_text(json.dumps({**config.to_dict(), "args": vars(args)}, default=str,
                                                     indent=2))

    budget = args.minutes * 60
    started, last_ckpt, running = time.time() - elapsed, time.time(), {}
    model.train()
    while True:
        elapsed = time.time() - started
        lr = config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        for group in baseline_opt.param_groups:
            group["lr"] = BASELINE_LR * lr / config.learning_rate
        indices = rng.integers(0, len(train["inputs"]), args.batch)
        lab_small, grid, lab_pixels, change, labels = make_batch(train, indices, rng, config.sample_pixels)
        out = model(lab_small, grid, lab_pixels, update_frequency=True)
        loss, parts = total_loss(out, change, labels, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        base_loss = huber(baseline(lab_pixels), change, config.huber_delta)
        baseline_opt.zero_grad(set_to_none=True)
        base_loss.backward()
        baseline_opt.step()
        parts["baseline"] = float(base_loss)
        step += 1
        for k, v in parts.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if step % 50 == 0:
            used = (model.semantic.frequency > 0.02).sum().item()
            log(f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} "
                + " ".join(f"{k} {v:.5f}" for k, v in running.items()) + f" presets-in-use {used}")
        done = elapsed >= budget or (args.max_steps and step >= args.max_steps)
        if done or time.time() - last_ckpt > args.checkpoint_minutes * 60:
            metrics = evaluate(model, baseline, val)
            rounded = {k: round(v, 3) for k, v in metrics.items()}
            log(f"held-out Lab L2 at step {step}: {json.dumps(rounded)}")
            if best is None or metrics["map"] < best["metrics"]["map"]:
                best = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                        "baseline": {k: v.clone() for k, v in baseline.state_dict().items()},
                        "metrics": metrics, "step": step}
            torch.save({"model": model.state_dict(), "baseline": baseline.state_dict(),
                        "optimizer": optimizer.state_dict(), "baseline_optimizer": baseline_opt.state_dict(),
                        "step": step, "elapsed": time.time() - started, "config": config.to_dict(),
                        "best": best}, checkpoint.with_suffix(".part"))
            os.replace(checkpoint.with_suffix(".part"), checkpoint)
            last_ckpt = time.time()
        if done:
            log(f"done: {step} steps in {elapsed / 60:.1f} min; best held-out map error "
                f"{best['metrics']['map']:.3f} at step {best['step']}")
            return 0


if __name__ == "__main__":
    sys.exit(main())
