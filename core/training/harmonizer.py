"""Train the white-box harmonizer (core/models/harmonizer.py) on synthetic composites; one command, resumable.

    python -m core.training.harmonizer --data ../shared/datasets --out runs/harmonizer/prior [--resume]
    python -m core.training.harmonizer --out runs/harmonizer/prior --export harmonizer-lite0   # → weights/

The backbone is frozen, so each composite's description (pooled features + colour statistics) is
computed once and stored in ``--out``; training then only fits the head, which needs the composite's
pixels at 64² (the transform is global, so the loss at 64² ranks transforms as the full image does).
Composites come from the pre-rendered cache of core/data/harmonization.py (rendered into ``--cache``
if absent), whose validation split (other source photos) picks the checkpoint: ``best.pt`` by
validation fMSE. ``--no-backbone`` trains the ablation without the pretrained prior.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data.harmonization import load_cache, render_cache, validation_half
from core.models.efficientnet_lite import load_pretrained
from core.models.harmonizer import HarmonizerConfig, WhiteBoxHarmonizer, apply_transform, foreground_mse
from core.weights import Manifest, bundled_weights_dir, register_weights, save_tensors

LOSS_SIZE = 64


def describe_split(model: WhiteBoxHarmonizer, cache: dict[str, np.ndarray], path: Path, batch: int = 16,
                   limit: int | None = None, log=print) -> dict[str, np.ndarray]:
    """Descriptions and 64² pixels of the first ``limit`` cached composites (all by default), saved to
    ``path``; resumable by chunks of 800."""
    n = min(len(cache["composite"]), limit or len(cache["composite"]))
    parts = sorted(path.parent.glob(path.stem + ".part*.npz"))
    done = sum(len(np.load(p)["description"]) for p in parts)
    chunk = 50 * batch
    for start in range(done, n, chunk):
        stop = min(n, start + chunk)
        out = {"description": [], "composite": [], "target": [], "mask": []}
        for b0 in range(start, stop, batch):
            idx = slice(b0, min(stop, b0 + batch))
            comp = torch.from_numpy(np.array(cache["composite"][idx])).permute(0, 3, 1, 2).float() / 255
            mask = torch.from_numpy(np.array(cache["mask"][idx])).float()[:, None] / 255
            with torch.no_grad():
                out["description"].append(model.describe(comp, mask).numpy())
            for key in ("composite", "target", "mask"):
                out[key] += [cv2.resize(np.asarray(a), (LOSS_SIZE, LOSS_SIZE), interpolation=cv2.INTER_AREA)
                             for a in cache[key][idx]]
        np.savez(path.parent / f"{path.stem}.part{start:07d}.npz", **{k: np.stack(v) if k != "description"
                                                                      else np.concatenate(v) for k, v in out.items()})
        log(json.dumps({"described": stop, "of": n, "file": path.name}))
    parts = sorted(path.parent.glob(path.stem + ".part*.npz"))
    loaded = [np.load(p) for p in parts]
    merged = {k: np.concatenate([p[k] for p in loaded]) for k in ("description", "composite", "target", "mask")}
    np.savez(path, **merged)
    for p in parts:
        p.unlink()
    return merged


def load_described(model: WhiteBoxHarmonizer, cache_dir: Path, out: Path, split: str,
                   limit: int | None = None) -> dict[str, torch.Tensor]:
    tag = "prior" if model.config.use_backbone else "statistics"
    path = out / f"described_{split}_{tag}.npz"
    cache = load_cache(cache_dir, split)
    wanted = min(len(cache["composite"]), limit or len(cache["composite"]))
    if path.exists():
        data = dict(np.load(path))
        if len(data["description"]) != wanted:  # described for another cache or --describe-limit
            raise SystemExit(f"{path} holds {len(data['description'])} descriptions, this run wants {wanted}: "
                             "delete it (or use another --out) to describe again.")
    else:
        data = describe_split(model, cache, path, limit=limit)
    return {"description": torch.from_numpy(data["description"]).float(),
            "composite": torch.from_numpy(data["composite"]).permute(0, 3, 1, 2).float() / 255,
            "target": torch.from_numpy(data["target"]).permute(0, 3, 1, 2).float() / 255,
            "mask": torch.from_numpy(data["mask"]).float()[:, None] / 255}


def transformed(model: WhiteBoxHarmonizer, data: dict[str, torch.Tensor], idx) -> torch.Tensor:
    params = model.predictor(data["description"][idx])
    comp, mask = data["composite"][idx], data["mask"][idx]
    return comp + mask * (apply_transform(params, comp, model.config.curve_knots) - comp)


@torch.no_grad()
def evaluate(model: WhiteBoxHarmonizer, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-image fMSE on the 0–255 scale (foreground = mask > 0.5) at 64²; mean and median."""
    model.eval()
    output = transformed(model, data, slice(None))
    model.train()
    fg = (data["mask"] > 0.5).float()
    area = fg.sum(dim=(1, 2, 3)).clamp_min(1) * 3

    def fmse(x):
        return (((x - data["target"]) * 255) ** 2 * fg).sum(dim=(1, 2, 3)) / area

    ours, given = fmse(output), fmse(data["composite"])
    return {"fmse": float(ours.mean()), "fmse_median": float(ours.median()),
            "fmse_input": float(given.mean()), "fmse_input_median": float(given.median())}


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.out / "cache256"
    if not (cache / "val_composite.npy").exists():
        render_cache(args.data, cache, 256, args.train_count, args.val_count, seed=args.seed)
    config = replace(HarmonizerConfig(), use_backbone=not args.no_backbone, dropout=args.dropout, hidden=args.hidden)
    model = WhiteBoxHarmonizer(config)
    if config.use_backbone:
        model.backbone = load_pretrained(Manifest.load())
    model.train()
    train_data = load_described(model, cache, args.out, "train", args.describe_limit)
    val_data = load_described(model, cache, args.out, "val")
    select = torch.from_numpy(validation_half(cache) == "select")
    val_data = {k: v[select] for k, v in val_data.items()}  # the other half is the bench's
    mean, std = train_data["description"].mean(0), train_data["description"].std(0).clamp_min(1e-4)
    model.predictor.description_mean.copy_(mean)
    model.predictor.description_std.copy_(std)
    optimizer = torch.optim.AdamW(model.predictor.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    step, best = 0, float("inf")
    last = args.out / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state["best"]
    generator = torch.Generator().manual_seed(args.seed + step)
    n = len(train_data["description"])
    log = open(args.out / "log.jsonl", "a")
    started, running = time.perf_counter(), []
    while step < args.steps:
        idx = torch.randint(0, n, (args.batch,), generator=generator)
        output = transformed(model, train_data, idx)
        loss = foreground_mse(output, train_data["target"][idx], train_data["mask"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        running.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            metrics = evaluate(model, val_data)
            record = {"step": step, "train_loss": float(np.mean(running)), **metrics,
                      "seconds": round(time.perf_counter() - started, 1)}
            running = []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "best": best, "config": config.to_dict()}
            if metrics["fmse"] < best:
                best = state["best"] = metrics["fmse"]
                torch.save(state, args.out / "best.pt")
            torch.save(state, last)


def export(out: Path, weight_id: str, checkpoint: str = "best.pt", directory: Path | None = None) -> Path:
    """The head and its description standardization, fp16 (the frozen backbone ships once, separately)."""
    state = torch.load(out / checkpoint, map_location="cpu", weights_only=False)
    prefix = "predictor."
    tensors = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    directory = directory or bundled_weights_dir()
    path = directory / f"{weight_id}.safetensors"
    save_tensors(path, tensors, half=True, metadata={"step": str(state["step"])})
    register_weights(path, weight_id, "harmonizer", state["config"], card=f"{weight_id}.md", directory=directory)
    print(json.dumps({"exported": str(path), "step": state["step"], "val_fmse": state["best"],
                      "bytes": path.stat().st_size}))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="pre-rendered composites (default: OUT/cache256)")
    parser.add_argument("--train-count", type=int, default=8000)
    parser.add_argument("--val-count", type=int, default=600)
    parser.add_argument("--describe-limit", type=int, help="train on the first N cached composites only")
    parser.add_argument("--no-backbone", action="store_true", help="ablation: colour statistics only")
    parser.add_argument("--dropout", type=float, default=HarmonizerConfig.dropout)
    parser.add_argument("--hidden", type=int, default=HarmonizerConfig.hidden)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", metavar="WEIGHT_ID", help="export best.pt into weights/ and stop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export:
        export(args.out, args.export)
    else:
        train(args)


if __name__ == "__main__":
    main()
