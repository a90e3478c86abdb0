"""Train the two-stream colorization U-Net (Ho et al.'s second stage) on photos with semantic maps.

    python -m core.training.colorizer --data ../shared/datasets/siftflow/train --out runs/colorizer [--resume]
    python -m core.training.colorizer --out runs/colorizer --export colorizer-siftflow
    python -m core.training.colorizer --out runs/colorizer-noin --no-instance-norm   # Fig. 5 ablation

Targets are float CIELab from core.imaging.color, scaled to [-1, 1]; the map stream reads the ground-truth
label map in its palette rendering. With probability ``--drop-map`` a sample gets an empty map (all
unlabeled), so the network also colorizes when no map is given and the bench can measure what the map adds.
Checkpoints, resume and stopping work as in core.training.gridnet.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from core.colorization.palette import class_colors
from core.data.siftflow import cached_arrays, find_classes, random_batch, read_classes
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch
from core.models.colorization_unet import AB_SCALE, ColorizationUNet, ColorizerConfig, lab_to_inputs
from core.training.gridnet import DEFAULT_DATA, cosine_lr, export, save_checkpoint


def batch_tensors(images: np.ndarray, labels: np.ndarray, palette: torch.Tensor):
    """uint8 RGB B×H×W×3 and ids B×H×W → gray input, map input, ab target, Lab."""
    rgb = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    lab = rgb_to_lab_torch(rgb)
    gray, ab = lab_to_inputs(lab)
    semantic = palette[torch.as_tensor(np.ascontiguousarray(labels)).long()].permute(0, 3, 1, 2)
    return gray, semantic.contiguous(), ab, lab


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def evaluate(model: ColorizationUNet, images: np.ndarray, labels: np.ndarray, palette: torch.Tensor,
             batch: int = 16) -> dict:
    """Loss and RGB PSNR with the ground-truth map and with no map."""
    model.eval()
    sums = {"loss": 0.0, "psnr": 0.0, "loss_no_map": 0.0, "psnr_no_map": 0.0}
    for i in range(0, len(images), batch):
        gray, semantic, ab, lab = batch_tensors(images[i:i + batch], labels[i:i + batch], palette)
        rgb = lab_to_rgb_torch(lab)
        for suffix, sem in (("", semantic), ("_no_map", torch.zeros_like(semantic))):
            pred = model(gray, sem)
            out = lab_to_rgb_torch(torch.cat([lab[:, :1], pred * AB_SCALE], 1))
            sums["loss" + suffix] += model.loss(pred, ab).item() * len(gray)
            sums["psnr" + suffix] += psnr(out, rgb).sum().item()
    model.train()
    return {k: v / len(images) for k, v in sums.items()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="split folder with images/ and labels/")
    p.add_argument("--classes", default=None, help="classes.txt (default: beside --data)")
    p.add_argument("--out", default="runs/colorizer")
    p.add_argument("--cache", default="runs/colorization/cache")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--size", type=int, default=128, help="images are resized to size×size")
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps", type=int, default=4000, help="total steps (cosine schedule length)")
    p.add_argument("--minutes", type=float, default=1e9, help="stop this run after so many minutes")
    p.add_argument("--width", type=float, default=0.5, help="depth multiplier; 1.0 = paper (28 MB fp16)")
    p.add_argument("--no-instance-norm", action="store_true", help="ablation: no IN on the gray stream")
    p.add_argument("--drop-map", type=float, default=0.15)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-percent", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", metavar="ID", help="write best.pt as weights/<ID>.safetensors and register it")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.export:
        export(out, args.export, "colorizer")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes = read_classes(args.classes or find_classes(args.data))
    palette = torch.from_numpy(class_colors(classes.count).astype(np.float32) / 255)
    train_x, train_y, _ = cached_arrays(args.data, "train", args.size, args.cache, args.val_percent)
    val_x, val_y, _ = cached_arrays(args.data, "val", args.size, args.cache, args.val_percent)
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    config = ColorizerConfig(width=args.width, instance_norm=not args.no_instance_norm)
    model = ColorizationUNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, elapsed, best_score = 0, 0.0, -float("inf")
    rng = np.random.default_rng(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    if args.resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, best_score = state["step"], state["elapsed_s"], state["best_score"]
        rng = np.random.default_rng([args.seed, step])
        print(f"resumed at step {step}")
    print(f"{len(train_x)} train / {len(val_x)} val images, {classes.count} classes, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    log = open(out / "log.jsonl", "a")
    started, running = time.time(), []
    model.train()
    while step < args.steps and (time.time() - started) < args.minutes * 60:
        t0 = time.time()
        images, labels = random_batch(train_x, train_y, args.batch, args.crop, rng)
        gray, semantic, ab, _ = batch_tensors(images, labels, palette)
        drop = torch.from_numpy(rng.random(args.batch) < args.drop_map).view(-1, 1, 1, 1)
        semantic = semantic.masked_fill(drop, 0.0)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, step, args.steps)
        loss = model.loss(model(gray, semantic), ab)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.time() - t0
        running.append(loss.item())
        if step % args.val_every == 0 or step == args.steps:
            metrics = evaluate(model, val_x, val_y, palette)
            record = {"step": step, "train_loss": float(np.mean(running)), "elapsed_s": round(elapsed), **metrics}
            running = []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            common = {"config": config.to_dict(), "classes": list(classes.names), "args": vars(args),
                      "step": step, "elapsed_s": elapsed}
            score = -metrics["loss"]
            if score > best_score:
                best_score = score
                save_checkpoint(out / "best.pt", model=model.state_dict(), metrics=metrics, **common)
            save_checkpoint(out / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            best_score=best_score, **common)


if __name__ == "__main__":
    main()
