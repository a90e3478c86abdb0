"""Train Deep Image Harmonization on synthetic composites; one command, resumable.

    python -m core.training.dih --data ../shared/datasets --out runs/dih/small [--variant small] [--resume]
    python -m core.training.dih --out runs/dih/small --export dih-small      # best checkpoint → weights/

Composites are pre-rendered once into ``--cache`` (see core/data/harmonization.py) so that a 2-core
CPU spends its time on the network, not on JPEG decoding. The schedule is the paper's two stages:
``--steps`` of joint training (Eq. 3), then ``--stage2-steps`` of harmonization fine-tuning with the
scene-parsing decoder fixed. Checkpoints (``last.pt`` every few minutes, ``best.pt`` by validation
fMSE) and ``log.jsonl`` land in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from core.data.harmonization import IGNORE_LABEL, load_cache, render_cache
from core.models.dih import (
    VARIANTS,
    DeepHarmonization,
    DIHConfig,
    apply_affine,
    joint_loss,
    reconstruction_loss,
    region_statistics,
)
from core.weights import bundled_weights_dir, register_weights, save_tensors


def batch_from_cache(cache: dict[str, np.ndarray], indices: np.ndarray, size: int,
                     rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    """Resize cached samples to the model's input size; random crop and flip when ``rng`` is given."""
    comps, targets, masks, labels = [], [], [], []
    for i in indices:
        c, t, m, lab = (cache[k][i] for k in ("composite", "target", "mask", "labels"))
        if rng is not None:
            full = c.shape[0]
            side = int(full * rng.uniform(0.75, 1.0))
            y0, x0 = rng.integers(0, full - side + 1, 2)
            if (m[y0:y0 + side, x0:x0 + side] > 127).mean() > 0.02:  # keep the composite in view
                c, t, m, lab = (a[y0:y0 + side, x0:x0 + side] for a in (c, t, m, lab))
            if rng.random() < 0.5:
                c, t, m, lab = (a[:, ::-1] for a in (c, t, m, lab))
        comps.append(cv2.resize(np.ascontiguousarray(c), (size, size), interpolation=cv2.INTER_AREA))
        targets.append(cv2.resize(np.ascontiguousarray(t), (size, size), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(np.ascontiguousarray(m), (size, size), interpolation=cv2.INTER_AREA))
        labels.append(cv2.resize(np.ascontiguousarray(lab), (size, size), interpolation=cv2.INTER_NEAREST))

    def image(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0

    return {"composite": image(comps), "target": image(targets),
            "mask": torch.from_numpy(np.stack(masks)).float()[:, None] / 255.0,
            "labels": torch.from_numpy(np.stack(labels)).long()}


@torch.no_grad()
def evaluate(model: DeepHarmonization, cache: dict[str, np.ndarray], count: int, batch: int = 16) -> dict:
    """MSE / fMSE (0–255 pixel scale, as iHarmony4 reports them) at the model's resolution."""
    model.eval()
    size = model.config.resolution
    sums = {"mse": 0.0, "fmse": 0.0, "mse_input": 0.0, "fmse_input": 0.0}
    n = min(count, len(cache["composite"]))
    for start in range(0, n, batch):
        b = batch_from_cache(cache, np.arange(start, min(n, start + batch)), size, None)
        out = model(b["composite"], b["mask"])["image"].clamp(0, 1)
        out = b["composite"] + b["mask"] * (out - b["composite"])  # what the user gets
        for key, pred in (("", out), ("_input", b["composite"])):
            err = ((pred - b["target"]) * 255) ** 2
            sums["mse" + key] += float(err.mean(dim=(1, 2, 3)).sum())
            fg = (b["mask"] > 0.5).float()
            area = fg.sum(dim=(1, 2, 3)).clamp_min(1) * 3
            sums["fmse" + key] += float(((err * fg).sum(dim=(1, 2, 3)) / area).sum())
    model.train()
    return {k: v / n for k, v in sums.items()}


def pretrain_statistics_head(model: DeepHarmonization, cache: dict[str, np.ndarray], steps: int,
                             batch: int = 64, size: int = 64, lr: float = 1e-3, seed: int = 0) -> None:
    """Fit the global head's statistics MLP alone (no convolutions run): a global affine colour map
    is resolution-free, so 64² copies of the composites suffice and thousands of steps take minutes."""
    images = {k: [] for k in ("composite", "target", "mask")}
    for start in range(0, len(cache["composite"]), 256):
        b = batch_from_cache(cache, np.arange(start, min(start + 256, len(cache["composite"]))), size, None)
        for k in images:
            images[k].append((b[k] * 255).round().to(torch.uint8))
    data = {k: torch.cat(v) for k, v in images.items()}
    head = model.global_head
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    running = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data["composite"]), (batch,), generator=generator)
        comp, target, mask = (data[k][idx].float() / 255.0 for k in ("composite", "target", "mask"))
        if torch.rand(1, generator=generator).item() < 0.5:
            comp, target, mask = (t.flip(-1) for t in (comp, target, mask))
        mapped = apply_affine(head(region_statistics(comp, mask)), comp)
        output = comp + mask * (mapped - comp)
        loss = reconstruction_loss(output, target, mask, model.config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.item())
        if step % 250 == 0:
            print(json.dumps({"head_step": step, "rec": float(np.mean(running))}), flush=True)
            running = []


def train(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache_dir: Path = args.cache
    if not (cache_dir / "info.json").exists():
        if args.data is None:
            raise SystemExit(f"No cache at {cache_dir}; pass --data to render one.")
        render_cache(args.data, cache_dir, args.cache_size, args.cache_train, args.cache_val, args.seed)
    train_cache, val_cache = load_cache(cache_dir, "train"), load_cache(cache_dir, "val")

    config = VARIANTS[args.variant]
    if args.resolution:
        config = replace(config, resolution=args.resolution)
    if args.paper_loss:
        config = replace(config, residual=False, fg_normalized=False)
    state = None
    if args.resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        config = DIHConfig.from_dict(state["config"])
    model = DeepHarmonization(config)
    optimizer = torch.optim.Adam(_param_groups(model, args.lr), betas=(0.9, 0.999))
    step, best, stage2_done = 0, float("inf"), False
    rng = np.random.default_rng(args.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        step, best = state["step"], state["best"]
        if step >= args.steps:
            model.freeze_parsing()
            optimizer = _stage2_optimizer(model, args)
            stage2_done = True
        optimizer.load_state_dict(state["optimizer"])
        lr = args.lr * (args.stage2_lr_scale if step >= args.steps else 1.0)
        for group, fresh in zip(optimizer.param_groups, _param_groups(model, lr), strict=True):
            group["lr"] = fresh["lr"]  # a resumed run may change the learning rate
        rng = np.random.default_rng(args.seed + step)
        print(f"resumed at step {step} (best val fMSE {best:.1f})", flush=True)
    if state is None and config.global_head and args.head_steps:
        pretrain_statistics_head(model, train_cache, args.head_steps, seed=args.seed)
        metrics = dict(evaluate(model, val_cache, args.val_count), step=0, stage="head pre-training")
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        print(json.dumps(metrics), flush=True)
        best = metrics["fmse"]  # joint training has to beat the pre-trained head to replace it
        _save(out / "best.pt", model, optimizer, step, best, config)
        _save(out / "last.pt", model, optimizer, step, best, config)
    (out / "config.json").write_text(json.dumps({"model": config.to_dict(), "args": _jsonable(vars(args))},
                                                indent=2))
    total = args.steps + args.stage2_steps
    last_save, t0, running = time.monotonic(), time.monotonic(), []
    model.train()
    while step < total:
        if step == args.steps and not stage2_done and args.stage2_steps:
            model.freeze_parsing()
            optimizer = _stage2_optimizer(model, args)
            stage2_done = True
            print("stage 2: parsing decoder fixed", flush=True)
        indices = rng.integers(0, len(train_cache["composite"]), args.batch)
        b = batch_from_cache(train_cache, indices, config.resolution, rng)
        labels = b["labels"] if (b["labels"] != IGNORE_LABEL).any() else None
        outputs = model(b["composite"], b["mask"])
        loss, parts = joint_loss(outputs, b["target"], b["mask"], labels, config,
                                 lambda_cro=0.0 if step >= args.steps else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(parts["rec"])
        if step % args.log_every == 0:
            print(json.dumps({"step": step, "rec": float(np.mean(running)), "cro": parts["cro"],
                              "s_per_step": (time.monotonic() - t0) / args.log_every}), flush=True)
            running, t0 = [], time.monotonic()
        if step % args.eval_every == 0 or step == total:
            metrics = evaluate(model, val_cache, args.val_count)
            metrics["step"] = step
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(json.dumps(metrics), flush=True)
            if metrics["fmse"] < best:
                best = metrics["fmse"]
                _save(out / "best.pt", model, optimizer, step, best, config)
            last_save = 0.0  # save last.pt right after an evaluation too
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or step == total:
            _save(out / "last.pt", model, optimizer, step, best, config)
            last_save = time.monotonic()


def _stage2_optimizer(model: DeepHarmonization, args: argparse.Namespace) -> torch.optim.Optimizer:
    return torch.optim.Adam(_param_groups(model, args.lr * args.stage2_lr_scale))


def _param_groups(model: DeepHarmonization, lr: float) -> list[dict]:
    """The pre-trained statistics head moves ten times slower than the rest, so the joint run's
    small, noisy batches refine it instead of undoing it."""
    head = {id(p) for p in model.global_head.parameters()} if model.global_head is not None else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in head], "lr": lr}]
    if head:
        groups.append({"params": [p for p in params if id(p) in head], "lr": lr * 0.1})
    return groups


def _save(path: Path, model, optimizer, step: int, best: float, config: DIHConfig) -> None:
    tmp = path.with_suffix(".part")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "best": best, "config": config.to_dict()}, tmp)
    tmp.replace(path)


def _jsonable(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def export(out: Path, weight_id: str, checkpoint: str = "best.pt", directory: Path | None = None) -> Path:
    """Write the checkpoint's network as fp16 tensors into weights/ and register it in the manifest."""
    state = torch.load(out / checkpoint, map_location="cpu", weights_only=False)
    config = DIHConfig.from_dict(state["config"])
    model = DeepHarmonization(config)
    model.load_state_dict(state["model"])
    tensors = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    directory = Path(directory or bundled_weights_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{weight_id}.safetensors"
    save_tensors(path, tensors, half=True, metadata={"model": "dih", "step": str(state["step"]),
                                                     "config": json.dumps(config.to_dict())})
    register_weights(path, weight_id, model="dih", config=config.to_dict(), card=f"{weight_id}.md",
                     directory=directory)
    print(json.dumps({"id": weight_id, "file": str(path), "bytes": path.stat().st_size, "step": state["step"],
                      "val_fmse": state["best"]}))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="datasets root (siftflow, davis, bsds500, harmonization) "
                                                  "or an iHarmony4 folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log)")
    parser.add_argument("--cache", type=Path, default=Path("runs/dih/cache256"))
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--cache-train", type=int, default=5000)
    parser.add_argument("--cache-val", type=int, default=400)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="small")
    parser.add_argument("--resolution", type=int, default=0, help="override the variant's input size")
    parser.add_argument("--paper-loss", action="store_true",
                        help="direct RGB output and image-normalized L_rec, as in the paper")
    parser.add_argument("--head-steps", type=int, default=3000,
                        help="steps pre-training the global head's statistics MLP (global_head variants)")
    parser.add_argument("--steps", type=int, default=6000, help="stage 1 (joint) steps")
    parser.add_argument("--stage2-steps", type=int, default=1500,
                        help="stage 2 steps (parsing decoder fixed, lower learning rate)")
    parser.add_argument("--stage2-lr-scale", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0 if sys.stdout.isatty() else 1,
                        help="torch threads (1 by default when not on a terminal, i.e. in the background)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-count", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", metavar="ID", help="export --out's best checkpoint as weights/ID")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint file name for --export")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export:
        export(args.out, args.export, args.checkpoint)
    else:
        train(args)


if __name__ == "__main__":
    main()
