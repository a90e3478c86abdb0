"""Train SA-AdjustNet for one style (and the context-free global colour-mapping baseline beside it).

    python -m core.training.sa_adjustnet --style pop-out --data ../shared/datasets \
        --out runs/sa_adjustnet/pop-out [--minutes 20] [--resume] [--export weights]

The backbone is the shared ImageNet EfficientNet-Lite0, frozen (variant ``lite0``), so its stage maps are
computed once: the first run renders the style's pairs (``core.data.adjustment_styles``) squashed to
context_size² (the backbone's view at inference too) and caches, per image and its mirror image, the
network input and target (u8) and the stride-4/8/16 maps (fp16) in ``<cache>/<style>-<split>.npz``; the
scene-parsing images (SIFT Flow's parse pool, independent of every effect) get the same. Training then runs
the heads on the cache: the stride-2 first-layer map is recomputed per batch (stem and one block, cheap)
from the cached input. Each step: 4 images (a random one of each mirrored pair), 2 048 random pixels per
image, Huber (δ = 0.04) on the Eq. 2 head, the weighted expected Huber loss of the map head (Eq. 7), and
λ · cross-entropy of the parsing head on 2 parse images (Eq. 9), Adam. Rotation is not augmented (the maps
are cached). Training stops after ``--minutes`` of wall-clock time or ``--max-steps`` (the learning rate
follows a cosine over the minutes); every ``--eval-every`` steps the model is measured on the *select*
split (never the bench's *report* split) with the argmax map, and the best is kept. ``--export DIR`` writes
the best checkpoint as ``sa-adjustnet-<style>.safetensors`` with each preset's measured effect, and
registers it in DIR's manifest.

``--finetune-stages N`` (1 or 2; default 0, frozen) fine-tunes the backbone's blocks behind the last N
hypercolumn taps at ``--backbone-lr-scale`` × the heads' rate (the paper: 0.5): those taps are recomputed
live, with gradients, from the cached map before them (N = 1: the stride-8 map feeds blocks 5–10, which
give the stride-16 map; N = 2: the stride-4 map feeds blocks 3–10), so the cache stays valid. The backbone's
batch norm keeps ImageNet's statistics (eval mode, as when frozen); its affine parameters are tuned. A
fine-tuned checkpoint is not exported: the shipped files hold no backbone weights and share the one
pretrained Lite0 with the other models.
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
from core.models.efficientnet_lite import FEATURE_STRIDES, LITE0_STAGES, load_pretrained
from core.models.sa_adjustnet import (
    LITE0_TAPS,
    VARIANTS,
    GlobalColorMapping,
    SAAdjustNet,
    export_tensors,
    huber,
    pixel_grid,
    preset_effects,
    scale_lab,
    total_loss,
    unscale_lab,
)
from core.weights import register_weights, save_tensors

BASELINE_LR = 1e-3  # the global colour mapping's Adam rate, on the same cosine schedule
PRESETS = {"pop-out": 2, "xpro": 4, "watercolor": 2}  # the paper's K per style
SOURCE_MAX_SIDE = 384  # photos are rendered at this size, then squashed to the cache's context_size²
MAP_KEYS = ("s4", "s8", "s16")
PARSE_BATCH, PARSE_PIXELS = 2, 2048


def weight_id(style: str) -> str:
    return f"sa-adjustnet-{style}"


# --- cache ------------------------------------------------------------------------------------


def _squash(array: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size, size), interpolation=interp)


def _to_u8(rgb: np.ndarray, size: int) -> np.ndarray:
    return (_squash(np.clip(rgb, 0, 1), size) * 255 + 0.5).astype(np.uint8)


def downscale(array: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    h, w = array.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def render_pair(style: str, rgb: np.ndarray, annotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(network input, target) sRGB float: for Watercolor the input is the brushed photo."""
    net_in = styles.network_input(style, rgb)
    if style == "watercolor":
        return net_in, styles.watercolor_colour(net_in, annotation)
    return net_in, styles.render(style, rgb, annotation)


def u8_to_rgb(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def stage_maps(model: SAAdjustNet, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: [] for k in MAP_KEYS}
    for start in range(0, len(inputs), 16):
        _, stages = model.backbone_maps(u8_to_rgb(np.stack(inputs[start:start + 16])))
        for key, m in zip(MAP_KEYS, stages, strict=True):
            out[key].append(m.half().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _save(path: Path, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


def _load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def build_cache(path: Path, model: SAAdjustNet, style: str, datasets: str, split: str, size: int,
                mirror: bool, log=print) -> dict[str, np.ndarray]:
    if (cached := _load(path)) is not None:
        return cached
    inputs, targets, names = [], [], []
    samples = [s for s in styles.list_samples(datasets, style) if styles.split_of(s.key) == split]
    start = time.time()
    for i, sample in enumerate(samples):
        rgb, annotation = styles.load_sample(sample)
        rgb = downscale(rgb, SOURCE_MAX_SIDE)
        annotation = downscale(annotation, SOURCE_MAX_SIDE, nearest=True)
        net_in, target = render_pair(style, rgb, annotation)
        for flip in (False, True) if mirror else (False,):
            a, b = (net_in[:, ::-1], target[:, ::-1]) if flip else (net_in, target)
            inputs.append(_to_u8(np.ascontiguousarray(a), size)), targets.append(_to_u8(np.ascontiguousarray(b), size))
            names.append(sample.name + (" (mirrored)" if flip else ""))
        if i % 100 == 0:
            log(f"cache {style} {split}: {i}/{len(samples)} ({time.time() - start:.0f} s)")
    data = {"inputs": np.stack(inputs), "targets": np.stack(targets), "names": np.array(names),
            **stage_maps(model, inputs)}
    return _save(path, data)


def build_parse_cache(path: Path, model: SAAdjustNet, datasets: str, size: int, log=print) -> dict[str, np.ndarray]:
    if (cached := _load(path)) is not None:
        return cached
    inputs, labels = [], []
    for sample in styles.parse_samples(datasets):
        rgb, classes = styles.load_sample(sample)
        inputs.append(_to_u8(rgb, size))
        labels.append(_squash(classes, size, nearest=True))
    log(f"parse cache: {len(inputs)} SIFT Flow images")
    return _save(path, {"inputs": np.stack(inputs), "labels": np.stack(labels), **stage_maps(model, inputs)})


# --- batches ----------------------------------------------------------------------------------


def cached_stages(data: dict[str, np.ndarray], indices: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(data[k][indices]).float() for k in MAP_KEYS]


def tap_blocks(tuned: int) -> range:
    """Indices of the Lite0 blocks after the cached tap that feeds the last ``tuned`` taps, up to the last tap
    (empty when frozen)."""
    if not 0 <= tuned < len(LITE0_TAPS):
        raise ValueError(f"--finetune-stages must be 0 to {len(LITE0_TAPS) - 1} (the first tap is never "
                         f"recomputed: the cache holds no map before it), got {tuned}")
    stage_ends = np.cumsum([stage.repeats for stage in LITE0_STAGES]) - 1  # each stage's last block
    taps = [int(stage_ends[FEATURE_STRIDES[t]]) for t in LITE0_TAPS]
    return range(taps[-tuned - 1] + 1, taps[-1] + 1) if tuned else range(0)


def backbone_stages(model: SAAdjustNet, data: dict[str, np.ndarray], indices: np.ndarray,
                    tuned: int = 0) -> list[torch.Tensor]:
    """The hypercolumn's stage maps: cached, except the last ``tuned`` taps, recomputed (with gradients
    when the model trains) from the cached tap before them by the backbone's own blocks."""
    stages = cached_stages(data, indices)
    if not tuned:
        return stages
    backbone = model.backbone
    tap_ends = {backbone.stage_ends[FEATURE_STRIDES[t]]: i for i, t in enumerate(LITE0_TAPS)}
    x = stages[len(stages) - tuned - 1]
    for index in tap_blocks(tuned):
        x = backbone._blocks[index](x)
        if index in tap_ends:
            stages[tap_ends[index]] = x
    return stages


def sample_pixels(rng: np.random.Generator, n: int, size: int, pixels: int):
    ys = torch.from_numpy(rng.integers(0, size, (n, pixels)))
    xs = torch.from_numpy(rng.integers(0, size, (n, pixels)))
    grid = torch.stack([(xs + 0.5) * 2 / size - 1, (ys + 0.5) * 2 / size - 1], -1).float()
    return grid, ys * size + xs


def gather(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """N×C×S×S, N×P → N×P×C."""
    n, c = t.shape[:2]
    return torch.gather(t.reshape(n, c, -1), 2, flat[:, None].expand(n, c, flat.shape[1])).transpose(1, 2)


def make_batch(model: SAAdjustNet, data: dict[str, np.ndarray], indices: np.ndarray, rng: np.random.Generator,
               pixels: int, tuned: int = 0):
    """(encoded maps, sampled grid N×P×2, input Lab N×P×3 scaled, target change N×P×3 scaled)."""
    rgb = u8_to_rgb(data["inputs"][indices])
    with torch.no_grad():
        first = model.first_map(rgb)
    enc = model.encode_maps(first, backbone_stages(model, data, indices, tuned))
    size = rgb.shape[-1]
    grid, flat = sample_pixels(rng, len(indices), size, pixels)
    lab_in = gather(scale_lab(rgb_to_lab_torch(rgb), dim=1), flat)
    lab_out = gather(scale_lab(rgb_to_lab_torch(u8_to_rgb(data["targets"][indices])), dim=1), flat)
    return enc, grid, lab_in, lab_out - lab_in


def parse_batch(model: SAAdjustNet, data: dict[str, np.ndarray], rng: np.random.Generator, tuned: int = 0):
    indices = rng.integers(0, len(data["inputs"]), PARSE_BATCH)
    size = data["inputs"].shape[1]
    grid, flat = sample_pixels(rng, PARSE_BATCH, size, PARSE_PIXELS)
    labels = torch.gather(torch.from_numpy(data["labels"][indices]).long().reshape(PARSE_BATCH, -1), 1, flat)
    logits = model.parse_logits(model.context_map(backbone_stages(model, data, indices, tuned)), grid)
    return logits, torch.where(labels > 0, labels, -1)  # 0 = unlabeled, ignored


# --- evaluation -------------------------------------------------------------------------------


def lab_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-pixel L2 distance in CIELab units between scaled Lab tensors (channels last)."""
    return float((unscale_lab(pred) - unscale_lab(target)).norm(dim=-1).mean())


def spread(count: int, limit: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(limit, count)).round().astype(int))


@torch.no_grad()
def evaluate(model: SAAdjustNet, baseline: GlobalColorMapping, data: dict[str, np.ndarray],
             limit: int = 64, tuned: int = 0) -> dict[str, float]:
    """Mean per-pixel CIELab L2 error (Lab units) on cached images of a split, every pixel, the map head
    with its argmax map; also how often each preset is chosen."""
    model.eval()
    sums = {"input": 0.0, "baseline": 0.0, "direct": 0.0, "map": 0.0}
    use = torch.zeros(model.config.presets)
    picks = spread(len(data["inputs"]), limit)
    size = data["inputs"].shape[1]
    grid = pixel_grid(size, size).reshape(1, -1, 2)
    for i in picks:
        rgb = u8_to_rgb(data["inputs"][i:i + 1])
        enc = model.encode_maps(model.first_map(rgb), backbone_stages(model, data, np.array([i]), tuned))
        pixels = scale_lab(rgb_to_lab_torch(rgb), dim=1).reshape(1, 3, -1).transpose(1, 2)
        target = scale_lab(rgb_to_lab_torch(u8_to_rgb(data["targets"][i:i + 1])), dim=1)
        target = target.reshape(1, 3, -1).transpose(1, 2)
        out = model.heads(enc, grid, pixels)
        sums["input"] += lab_error(pixels, target)
        sums["baseline"] += lab_error(pixels + baseline(pixels), target)
        sums["direct"] += lab_error(pixels + out["direct"], target)
        sums["map"] += lab_error(pixels + out["map"], target)
        use += torch.bincount(out["probabilities"].argmax(-1).reshape(-1), minlength=model.config.presets)
    model.train()
    result = {k: v / max(len(picks), 1) for k, v in sums.items()}
    result["preset_share"] = [round(float(u), 3) for u in use / use.sum().clamp_min(1)]
    return result


# --- export -----------------------------------------------------------------------------------


def export(checkpoint: Path, directory: Path, style: str, select: dict[str, np.ndarray]) -> Path:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    best = ckpt.get("best") or {"model": ckpt["model"], "metrics": {}, "step": ckpt["step"]}
    config = ckpt["config"]
    if config.get("backbone_lr_scale", 0) > 0:
        raise SystemExit(f"{checkpoint} fine-tuned backbone blocks (--finetune-stages): SA-AdjustNet's weight "
                         "files hold no backbone and load the shared frozen Lite0, so it cannot be exported")
    model = SAAdjustNet(VARIANTS["lite0"].from_dict(config))
    model.backbone = load_pretrained()
    model.load_state_dict(best["model"], strict=False)
    labs = [rgb_to_lab_torch(u8_to_rgb(select["inputs"][i:i + 1])[0].permute(1, 2, 0), dim=-1)
            for i in spread(len(select["inputs"]), 24)]
    effects = preset_effects(model.eval(), labs)
    path = directory / f"{weight_id(style)}.safetensors"
    metadata = {"config": json.dumps(config), "style": style, "step": str(best.get("step", ckpt["step"])),
                "metrics": json.dumps(best.get("metrics", {}))}
    # SA-AdjustNet from its best select-split checkpoint; the baseline as last trained (its rate has decayed)
    save_tensors(path, export_tensors(best["model"], ckpt["baseline"]), metadata=metadata)
    register_weights(path, weight_id(style), model="sa_adjustnet",
                     config={"style": style, **config, "preset_effects": effects},
                     card=f"{weight_id(style)}.md", directory=directory)
    return path


# --- training ---------------------------------------------------------------------------------


def trained_state(model: SAAdjustNet, tuned_blocks: range, tuned: int) -> dict[str, torch.Tensor]:
    """The model's trained state plus the fine-tuned backbone blocks (the frozen rest lives in its own file)."""
    state = model.trained_state()
    if tuned:
        prefixes = tuple(f"backbone._blocks.{i}." for i in tuned_blocks)
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(prefixes)})
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", choices=styles.STYLES, required=True)
    parser.add_argument("--data", default="../shared/datasets",
                        help="datasets root (davis/, people/, harmonization/, siftflow/)")
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--cache", type=Path, default=Path("runs/sa_adjustnet/cache"))
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the variant's)")
    parser.add_argument("--parse-weight", type=float, help="λ of Eq. 9 (default: the variant's)")
    parser.add_argument("--finetune-stages", type=int, default=0,
                        help="fine-tune the backbone blocks behind the last N hypercolumn taps (0 = frozen, "
                             "1 = stride 16, 2 = strides 8 and 16), recomputed from the cache")
    parser.add_argument("--backbone-lr-scale", type=float, default=0.5,
                        help="the fine-tuned blocks' rate relative to the heads' (the paper: 0.5)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0 = no limit)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", type=Path,
                        help="write the best checkpoint to this weights folder and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.out / "checkpoint.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "log.txt", "a", buffering=1)

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, file=log_file)
        print(line, flush=True)

    config = replace(VARIANTS["lite0"], presets=PRESETS[args.style])
    if args.lr:
        config = replace(config, learning_rate=args.lr)
    if args.parse_weight is not None:
        config = replace(config, parse_weight=args.parse_weight)
    tuned = args.finetune_stages
    tuned_blocks = tap_blocks(tuned)  # also rejects a stage count the cache cannot serve
    if tuned:
        config = replace(config, backbone_lr_scale=args.backbone_lr_scale)
    torch.manual_seed(args.seed)
    model, baseline = SAAdjustNet(config), GlobalColorMapping()
    model.backbone = load_pretrained()
    size = config.context_size
    caches = {split: build_cache(args.cache / f"{args.style}-{split}-{size}.npz", model, args.style, args.data,
                                 split, size, mirror=split == "train", log=log) for split in ("train", "select")}
    train, select = caches["train"], caches["select"]
    if args.export:
        print(export(checkpoint, args.export, args.style, select))
        return 0
    parse = build_parse_cache(args.cache / f"parse-{size}.npz", model, args.data, size, log=log)
    log(f"style {args.style}: {len(train['inputs'])} training images (with mirrors), {len(select['inputs'])} "
        f"select, {len(parse['inputs'])} parse")

    tuned_params = [p for i in tuned_blocks for p in model.backbone._blocks[i].parameters()] if tuned else []
    for p in tuned_params:
        p.requires_grad_(True)
    heads = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in tuned_params)]
    # Each group's rate is the schedule's times its scale (the backbone's: the paper's lower rate).
    groups = [{"params": heads, "lr_scale": 1.0}]
    if tuned_params:
        groups.append({"params": tuned_params, "lr_scale": config.backbone_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=config.learning_rate)
    baseline_opt = torch.optim.Adam(baseline.parameters(), lr=BASELINE_LR)
    step, elapsed, best = 0, 0.0, None
    rng = np.random.default_rng(args.seed)
    if args.resume and checkpoint.exists():
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"], strict=False), baseline.load_state_dict(ckpt["baseline"])
        optimizer.load_state_dict(ckpt["optimizer"]), baseline_opt.load_state_dict(ckpt["baseline_optimizer"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt.get("best")
        rng = np.random.default_rng([args.seed, step])
        log(f"resumed at step {step}, {elapsed / 60:.1f} min")
    (args.out / "config.json").write_text(json.dumps({**config.to_dict(), "args": vars(args)}, default=str,
                                                     indent=2))
    budget = args.minutes * 60
    started, running = time.time() - elapsed, {}
    model.train()  # (the frozen backbone stays in eval mode: SAAdjustNet.train)
    while True:
        elapsed = time.time() - started
        lr = config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget))))
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        for group in baseline_opt.param_groups:
            group["lr"] = BASELINE_LR * lr / config.learning_rate
        indices = rng.integers(0, len(train["inputs"]), args.batch)
        enc, grid, lab_pixels, change = make_batch(model, train, indices, rng, config.sample_pixels, tuned)
        out = model.heads(enc, grid, lab_pixels, update_frequency=True)
        loss, parts = total_loss(model, out, change, parse_batch(model, parse, rng, tuned))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        base_loss = huber(baseline(lab_pixels), change, config.huber_delta)
        baseline_opt.zero_grad(set_to_none=True)
        base_loss.backward()
        baseline_opt.step()
        parts["baseline"] = base_loss.item()
        if "parse" in parts:
            parts["lambda_parse"] = config.parse_weight * parts["parse"]
        step += 1
        for k, v in parts.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if step % 100 == 0:
            freq = " ".join(f"{a:.2f}" for a in model.semantic.frequency.tolist())
            log(f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} "
                + " ".join(f"{k} {v:.5f}" for k, v in running.items()) + f" a_k {freq}")
        done = elapsed >= budget or (args.max_steps and step >= args.max_steps)
        if done or step % args.eval_every == 0:
            metrics = evaluate(model, baseline, select, tuned=tuned)
            log(f"select-split Lab L2 at step {step}: {json.dumps(metrics)}")
            if best is None or metrics["map"] < best["metrics"]["map"]:
                best = {"model": {k: v.clone() for k, v in trained_state(model, tuned_blocks, tuned).items()},
                        "metrics": metrics, "step": step}
            torch.save({"model": trained_state(model, tuned_blocks, tuned), "baseline": baseline.state_dict(),
                        "optimizer": optimizer.state_dict(), "baseline_optimizer": baseline_opt.state_dict(),
                        "step": step, "elapsed": time.time() - started, "config": config.to_dict(),
                        "best": best}, checkpoint.with_suffix(".part"))
            os.replace(checkpoint.with_suffix(".part"), checkpoint)
        if done:
            log(f"done: {step} steps in {elapsed / 60:.1f} min; best select map error "
                f"{best['metrics']['map']:.3f} at step {best['step']}")
            return 0


if __name__ == "__main__":
    sys.exit(main())
