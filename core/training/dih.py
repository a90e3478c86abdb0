"""Train Deep Image Harmonization on synthetic composites; one command, resumable.

    python -m core.training.dih --data ../shared/datasets --out runs/dih/small [--variant small] [--resume]
    python -m core.training.dih --out runs/dih/small --export dih-paper-small   # best checkpoint → weights/

Composites are pre-rendered once into ``--cache`` (see core/data/harmonization.py) so that a 2-core
CPU spends its time on the network, not on JPEG decoding. The schedule is the paper's (Sec. 3.3):

1. ``--steps`` of joint training (Eq. 3) on the composites whose photos have scene-parsing labels
   (the paper's stage one uses its labelled ADE20K subset);
2. ``--stage2-steps`` with the scene-parsing decoder fixed (weights and batch normalization) and
   λ2 = 0, on all composites, at ``--stage2-lr-scale`` times the learning rate.

A network without the parsing decoder runs the same schedule on all composites. ``log.jsonl`` gets
the validation numbers (fMSE mean and median; parsing pixel accuracy and mIoU against the "always
the most frequent class" baseline); ``best.pt`` is the final stage's checkpoint with the lowest
validation fMSE, ``last.pt`` is saved every few minutes and after every evaluation.
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

from core.data.harmonization import IGNORE_LABEL, load_cache, render_cache, validation_half
from core.models.dih import VARIANTS, DeepHarmonization, DIHConfig, joint_loss
from core.weights import bundled_weights_dir, register_weights, save_tensors

# Training views have a photo's aspect ratio, from 1:1 up to this (16:9 is 1.78), either way round:
# squashed to R×R they look like what core/harmonization/deep.py feeds the network from a photo.
MAX_TRAINING_ASPECT = 2.0
MIN_FG_IN_VIEW = 0.02  # a view must keep this fraction of foreground pixels, else the whole sample is used


def training_view(shape: tuple[int, int], mask: np.ndarray, rng: np.random.Generator,
                  tries: int = 4) -> tuple[slice, slice]:
    """A random rectangle of the sample with a photo-like aspect ratio that keeps the composite in view."""
    height, width = shape
    for _ in range(tries):
        long_side = rng.uniform(0.75, 1.0) * min(height, width)
        short_side = long_side / np.exp(rng.uniform(0.0, np.log(MAX_TRAINING_ASPECT)))
        h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        h, w = max(8, int(round(h))), max(8, int(round(w)))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        view = (slice(y0, y0 + h), slice(x0, x0 + w))
        if (mask[view] > 127).mean() > MIN_FG_IN_VIEW:
            return view
    return slice(0, height), slice(0, width)


def batch_from_cache(cache: dict[str, np.ndarray], indices: np.ndarray, size: int,
                     rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    """Squash cached samples to the model's R×R input as inference does (area resize of the whole
    view, aspect ratio not kept); with ``rng`` the view is a random photo-shaped rectangle, flipped."""
    comps, targets, masks, labels = [], [], [], []
    for i in indices:
        c, t, m, lab = (cache[k][i] for k in ("composite", "target", "mask", "labels"))
        if rng is not None:
            view = training_view(m.shape, m, rng)
            c, t, m, lab = (a[view] for a in (c, t, m, lab))
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


def labelled_samples(cache: dict[str, np.ndarray], chunk: int = 256) -> np.ndarray:
    """Indices of the samples with scene-parsing labels (SIFT Flow photos)."""
    labels = cache["labels"]
    found = [np.flatnonzero((np.asarray(labels[s:s + chunk]) != IGNORE_LABEL).reshape(-1, labels[0].size)
                            .any(axis=1)) + s for s in range(0, len(labels), chunk)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def class_frequencies(cache: dict[str, np.ndarray], classes: int, indices: np.ndarray) -> np.ndarray:
    """Pixel counts per parsing class over the given samples (every 4th pixel each way)."""
    counts = np.zeros(classes, np.int64)
    for i in indices:
        lab = np.asarray(cache["labels"][i][::4, ::4]).ravel()
        counts += np.bincount(lab[lab < classes], minlength=classes)
    return counts


def parsing_scores(confusion: np.ndarray) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the classes present in the ground truth (rows: truth)."""
    total = confusion.sum()
    present = confusion.sum(axis=1) > 0
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - np.diag(confusion)
    iou = np.diag(confusion)[present] / np.maximum(union[present], 1)
    return {"pixel_acc": float(np.trace(confusion) / max(total, 1)),
            "miou": float(iou.mean()) if present.any() else 0.0}


@torch.no_grad()
def evaluate(model: DeepHarmonization, cache: dict[str, np.ndarray], count: int, batch: int = 16,
             baseline_class: int | None = None) -> dict:
    """Validation at the model's resolution: MSE and fMSE (0–255 scale, per image, as iHarmony4 reports
    them) of the network's output and of the input; with a parsing decoder, its pixel accuracy and
    mIoU on the labelled samples, and those of always predicting ``baseline_class``."""
    was_training = model.training
    model.eval()
    size, classes = model.config.resolution, model.config.parsing_classes
    n = min(count, len(cache["composite"]))
    per_image = {"mse": [], "fmse": [], "mse_input": [], "fmse_input": []}
    confusion = np.zeros((classes, classes), np.int64)
    baseline = np.zeros((classes, classes), np.int64)
    for start in range(0, n, batch):
        b = batch_from_cache(cache, np.arange(start, min(n, start + batch)), size, None)
        outputs = model(b["composite"], b["mask"])
        # The harmonized image as the network gives it: a residual network has already applied its
        # correction through the soft mask, so compositing again would scale the change by mask².
        out = outputs["image"].clamp(0, 1)
        fg = (b["mask"] > 0.5).float()
        area = fg.sum(dim=(1, 2, 3)).clamp_min(1) * 3
        for key, pred in (("", out), ("_input", b["composite"])):
            err = ((pred - b["target"]) * 255) ** 2
            per_image["mse" + key] += err.mean(dim=(1, 2, 3)).tolist()
            per_image["fmse" + key] += ((err * fg).sum(dim=(1, 2, 3)) / area).tolist()
        if outputs["parsing"] is not None:
            truth = b["labels"].numpy().ravel()
            known = truth < classes
            guess = outputs["parsing"].argmax(dim=1).numpy().ravel()
            confusion += np.bincount(truth[known] * classes + guess[known],
                                     minlength=classes * classes).reshape(classes, classes)
            baseline[:, baseline_class or 0] += np.bincount(truth[known], minlength=classes)
    model.train(was_training)
    result = {k: float(np.mean(v)) for k, v in per_image.items()}
    result["fmse_median"] = float(np.median(per_image["fmse"]))
    result["fmse_input_median"] = float(np.median(per_image["fmse_input"]))
    if confusion.sum():
        result.update({f"parsing_{k}": v for k, v in parsing_scores(confusion).items()})
        result["parsing_pixels"] = int(confusion.sum())
        if baseline_class is not None:
            result.update({f"parsing_baseline_{k}": v for k, v in parsing_scores(baseline).items()})
    return result


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
    # Checkpoints are picked on the "select" half of validation; the other half is the bench's report.
    select = np.nonzero(validation_half(cache_dir) == "select")[0]
    val_cache = {k: np.asarray(v[select]) for k, v in val_cache.items()}

    config = VARIANTS[args.variant]
    if args.resolution:
        config = replace(config, resolution=args.resolution)
    if args.paper_loss:
        config = replace(config, residual=False, fg_normalized=False)
    if args.lambda_cro is not None:
        config = replace(config, lambda_cro=args.lambda_cro)
    state = None
    if args.resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        config = DIHConfig.from_dict(state["config"])
    torch.manual_seed(args.seed)  # the same command gives the same weights (on one thread)
    model = DeepHarmonization(config)
    optimizer = torch.optim.Adam(_trainable(model), lr=args.lr)
    step, best, stage2_started = 0, float("inf"), False
    rng = np.random.default_rng(args.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        step, best = state["step"], state["best"]
        if step >= args.steps and args.stage2_steps:
            model.freeze_parsing()
            optimizer = torch.optim.Adam(_trainable(model), lr=args.lr * args.stage2_lr_scale)
            stage2_started = True
        # A checkpoint from the end of stage one holds the optimizer over all parameters; stage two
        # starts a fresh one over the parameters it trains, as an uninterrupted run does.
        if state.get("stage", 1) == (2 if stage2_started else 1):
            optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a resumed run may change the learning rate
            group["lr"] = args.lr * (args.stage2_lr_scale if stage2_started else 1.0)
        rng = np.random.default_rng(args.seed + step)
        print(f"resumed at step {step} (best val fMSE {best:.1f})", flush=True)

    everything = np.arange(len(train_cache["composite"]))
    labelled = labelled_samples(train_cache) if config.semantic else everything
    if config.semantic and not len(labelled):
        raise SystemExit(f"No training sample in {cache_dir} has scene-parsing labels (SIFT Flow photos); "
                         "render the cache from a datasets root that has siftflow/train.")
    baseline_class = None
    if config.semantic:
        baseline_class = int(np.argmax(class_frequencies(train_cache, config.parsing_classes, labelled)))
    (out / "config.json").write_text(json.dumps({"model": config.to_dict(), "args": _jsonable(vars(args)),
                                                 "labelled_train_samples": int(len(labelled)),
                                                 "baseline_class": baseline_class}, indent=2))
    total = args.steps + args.stage2_steps
    final_stage_start = args.steps if args.stage2_steps else 0
    last_save, t0, running = time.monotonic(), time.monotonic(), []
    model.train()
    while step < total:
        if step >= args.steps and args.stage2_steps and not stage2_started:
            model.freeze_parsing()
            optimizer = torch.optim.Adam(_trainable(model), lr=args.lr * args.stage2_lr_scale)
            stage2_started = True
            print("stage 2: parsing decoder fixed", flush=True)
        pool = everything if stage2_started else labelled
        indices = pool[rng.integers(0, len(pool), args.batch)]
        b = batch_from_cache(train_cache, indices, config.resolution, rng)
        labels = b["labels"] if (b["labels"] != IGNORE_LABEL).any() else None
        outputs = model(b["composite"], b["mask"])
        loss, parts = joint_loss(outputs, b["target"], b["mask"], labels, config,
                                 lambda_cro=0.0 if stage2_started else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append((parts["rec"], parts["cro"]))
        if step % args.log_every == 0:
            rec, cro = np.mean(running, axis=0)
            print(json.dumps({"step": step, "rec": float(rec), "cro": float(cro),
                              "s_per_step": (time.monotonic() - t0) / args.log_every}), flush=True)
            running, t0 = [], time.monotonic()
        if step % args.eval_every == 0 or step == total or step == args.steps:
            metrics = evaluate(model, val_cache, args.val_count, baseline_class=baseline_class)
            metrics.update(step=step, stage=2 if stage2_started else 1)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            print(json.dumps(metrics), flush=True)
            if step > final_stage_start and metrics["fmse"] < best:
                best = metrics["fmse"]
                _save(out / "best.pt", model, optimizer, step, best, config, stage2_started)
            last_save = 0.0  # save last.pt right after an evaluation too
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 or step == total:
            _save(out / "last.pt", model, optimizer, step, best, config, stage2_started)
            last_save = time.monotonic()


def _trainable(model: DeepHarmonization) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _save(path: Path, model, optimizer, step: int, best: float, config: DIHConfig, stage2: bool) -> None:
    tmp = path.with_suffix(".part")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "best": best, "config": config.to_dict(), "stage": 2 if stage2 else 1}, tmp)
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
    parser.add_argument("--lambda-cro", type=float, help="override the variant's Eq. 3 λ2")
    parser.add_argument("--steps", type=int, default=3000, help="stage 1 (joint) steps")
    parser.add_argument("--stage2-steps", type=int, default=3000,
                        help="stage 2 steps (parsing decoder fixed, λ2 = 0, lower learning rate)")
    parser.add_argument("--stage2-lr-scale", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0 if sys.stdout.isatty() else 1,
                        help="torch threads (1 by default when not on a terminal, i.e. in the background)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--val-count", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=50)
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
