"""Train GridNet segmentation of gray photos (Ho et al.'s first stage).

    python -m core.training.gridnet --data ../shared/datasets/siftflow/train --out runs/gridnet [--resume]
    python -m core.training.gridnet --out runs/gridnet --export gridnet-siftflow   # best checkpoint → weights/

Images are decoded once into a .npy cache (``--cache``), resized to ``--size`` and randomly cropped to
``--crop`` with flips. Every ``--val-every`` steps the select split is scored (pixel accuracy, mIoU) and
``last.pt``/``best.pt`` are written to ``--out``; ``--resume`` continues from ``last.pt``. Training stops
after ``--steps`` in total or ``--minutes`` in this run, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data.siftflow import cached_arrays, find_classes, random_batch, read_classes
from core.imaging.color import rgb_to_lab_torch
from core.models.gridnet import GridNet, GridNetConfig
from core.weights import bundled_weights_dir, register_weights, save_tensors

DEFAULT_DATA = "../shared/datasets/siftflow/train"


def gray_input(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 RGB → B×1×H×W: CIELab L scaled to [-1, 1] (what a gray photo gives)."""
    rgb = torch.as_tensor(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255
    return rgb_to_lab_torch(rgb)[:, :1] / 50 - 1


def cosine_lr(base: float, step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".part")
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class Progress:
    """Where a training run stands; ``state`` is the checkpoint it resumed from (None for a fresh run)."""
    step: int
    elapsed: float
    best_score: float
    rng: np.random.Generator
    state: dict | None = None


def resume_or_start(out: Path, resume: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    seed: int, best_score: float) -> Progress:
    """Loads ``out/last.pt`` into model and optimizer when ``resume`` asks and it exists, else a fresh start.
    The random stream is re-seeded with the step so a resumed run does not replay the batches it already saw."""
    if not (resume and (out / "last.pt").exists()):
        return Progress(0, 0.0, best_score, np.random.default_rng(seed))
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resumed at step {state['step']}")
    return Progress(state["step"], state["elapsed_s"], state["best_score"],
                    np.random.default_rng([seed, state["step"]]), state)


def confusion(pred: np.ndarray, true: np.ndarray, classes: int) -> np.ndarray:
    valid = true > 0  # unlabeled pixels are not scored
    return np.bincount(true[valid].astype(np.int64) * classes + pred[valid],
                       minlength=classes * classes).reshape(classes, classes)


def scores(matrix: np.ndarray) -> dict:
    """Pixel accuracy and mean IoU over the labeled classes that occur in the ground truth."""
    tp = np.diag(matrix).astype(np.float64)
    present = matrix.sum(1) > 0
    present[0] = False
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = tp[present] / np.maximum(union[present], 1)
    return {"pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)),
            "mean_iou": float(iou.mean()) if iou.size else 0.0,
            "classes_scored": int(present.sum())}


def class_weights(labels: np.ndarray, classes: int, power: float) -> torch.Tensor:
    """Cross-entropy weights (median frequency / frequency) ** power over the labeled classes.

    power 0 is the plain loss, 1 is Eigen & Fergus' median-frequency balancing; in between keeps the
    frequent classes (sky, tree, building) accurate while rare ones (sign, boat, bird) still get a gradient
    large enough to be learned, which is what mean IoU rewards. Unseen classes get weight 1.
    """
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=classes)[:classes].astype(np.float64)
    counts[0] = 0  # unlabeled carries no loss
    seen = counts > 0
    freq = counts / counts.sum()
    weights = np.ones(classes)
    weights[seen] = (np.median(freq[seen]) / freq[seen]) ** power
    return torch.tensor(np.clip(weights, 0.1, 10.0), dtype=torch.float32)


def predict_labels(model: GridNet, gray: torch.Tensor) -> torch.Tensor:
    """Most likely labeled class (id 0, 'unlabeled', is never predicted)."""
    logits = model(gray)
    logits[:, 0] = -float("inf")
    return logits.argmax(1)


@torch.no_grad()
def evaluate(model: GridNet, images: np.ndarray, labels: np.ndarray, classes: int, batch: int = 16) -> dict:
    model.eval()
    matrix = np.zeros((classes, classes), np.int64)
    for i in range(0, len(images), batch):
        pred = predict_labels(model, gray_input(images[i:i + batch])).numpy()
        matrix += confusion(pred.reshape(-1), np.asarray(labels[i:i + batch]).reshape(-1), classes)
    model.train()
    return scores(matrix)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="split folder with images/ and labels/")
    p.add_argument("--classes", default=None, help="classes.txt (default: beside --data)")
    p.add_argument("--out", default="runs/gridnet")
    p.add_argument("--cache", default="runs/colorization/cache")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--size", type=int, default=128, help="images are resized to size×size")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=6000, help="total steps (cosine schedule length)")
    p.add_argument("--minutes", type=float, default=1e9, help="stop this run after so many minutes")
    p.add_argument("--width", type=float, default=0.5, help="depth multiplier; 1.0 = paper (26 MB fp16)")
    p.add_argument("--total-dropout", type=float, default=0.1)
    p.add_argument("--class-balance", type=float, default=0.5,
                   help="loss weight power on median/class frequency (0 = plain cross-entropy, 1 = median freq.)")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-percent", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", metavar="ID", help="write best.pt as weights/<ID>.safetensors and register it")
    return p.parse_args(argv)


def export(out: Path, weight_id: str, kind: str) -> Path:
    """best.pt → fp16 weights file + manifest entry + model card written from the run's record."""
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    directory = bundled_weights_dir()
    path = directory / f"{weight_id}.safetensors"
    meta = {"model": kind, "config": json.dumps(best["config"]), "classes": json.dumps(best["classes"]),
            "input_size": str(best["args"]["size"]), "metrics": json.dumps(best["metrics"])}
    save_tensors(path, best["model"], metadata=meta)
    config = dict(best["config"], classes=best["classes"], input_size=best["args"]["size"])
    register_weights(path, weight_id, kind, config, card=f"{weight_id}.md")
    card = directory / f"{weight_id}.md"
    if not card.exists():
        card.write_text(model_card(weight_id, kind, best, path))
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB) step {best['step']}: {best['metrics']}")
    return path


def model_card(weight_id: str, kind: str, best: dict, path: Path) -> str:
    args = best["args"]
    command = (f"python -m core.training.{kind} --data {args['data']} --out {args['out']} "
               f"--size {args['size']} --crop {args['crop']} --batch {args['batch']} --steps {args['steps']} "
               f"--width {args['width']} --class-balance {args.get('class_balance', 0.0)} [--resume]\n"
               f"python -m core.training.{kind} --out {args['out']} "
               f"--export {weight_id}")
    return (f"# {weight_id}\n\nModel: `{kind}` ({path.stat().st_size / 1e6:.1f} MB fp16), config "
            f"`{json.dumps(best['config'])}`.\n\n## Data and terms\nSIFT Flow (Liu, Yuen, Torralba, CVPR 2009;"
            " LabelMe images), 2 488 outdoor 256×256 photos with 33 classes; ~10% held out by file-name hash "
            "for validation. Research use; these weights inherit the dataset's terms.\n\n## Recipe\n```\n"
            f"{command}\n```\nSteps: {best['step']} (batch {args['batch']}), training time "
            f"{best['elapsed_s'] / 60:.0f} min on a shared 2-core CPU, 1 thread, no GPU.\n\n"
            f"## Validation metrics (held-out split, {args['size']}² inputs)\n```\n"
            f"{json.dumps(best['metrics'], indent=2)}\n```\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.export:
        export(out, args.export, "gridnet")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes = read_classes(args.classes or find_classes(args.data))
    train_x, train_y, _ = cached_arrays(args.data, "train", args.size, args.cache, args.val_percent)
    # checkpoints are chosen on "select"; "heldout" stays for the reported numbers
    val_x, val_y, _ = cached_arrays(args.data, "select", args.size, args.cache, args.val_percent)
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    config = GridNetConfig(num_classes=classes.count, width=args.width, total_dropout=args.total_dropout)
    model = GridNet(config)
    weights = class_weights(train_y, classes.count, args.class_balance)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    out.mkdir(parents=True, exist_ok=True)
    progress = resume_or_start(out, args.resume, model, optimizer, args.seed, best_score=-1.0)
    step, elapsed, best_score, rng = progress.step, progress.elapsed, progress.best_score, progress.rng
    print(f"{len(train_x)} train / {len(val_x)} val images, {classes.count} classes, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    log = open(out / "log.jsonl", "a")
    started, running = time.time(), []
    model.train()
    while step < args.steps and (time.time() - started) < args.minutes * 60:
        t0 = time.time()
        images, labels = random_batch(train_x, train_y, args.batch, args.crop, rng)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, step, args.steps)
        logits = model(gray_input(images))
        # unlabeled pixels carry no supervision (the standard SIFT Flow protocol)
        loss = F.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)), weight=weights, ignore_index=0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.time() - t0
        running.append(loss.item())
        if step % args.val_every == 0 or step == args.steps:
            metrics = evaluate(model, val_x, val_y, classes.count)
            record = {"step": step, "loss": float(np.mean(running)), "elapsed_s": round(elapsed), **metrics}
            running = []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            common = {"config": config.to_dict(), "classes": list(classes.names), "args": vars(args),
                      "step": step, "elapsed_s": elapsed}
            score = metrics["mean_iou"] + metrics["pixel_accuracy"]
            if score > best_score:
                best_score = score
                save_checkpoint(out / "best.pt", model=model.state_dict(), metrics=metrics, **common)
            save_checkpoint(out / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            best_score=best_score, **common)


if __name__ == "__main__":
    main()
