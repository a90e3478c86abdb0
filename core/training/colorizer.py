"""Train the colorizer: the paper's two-stream U-Net, or the head on the frozen pretrained encoder.

Pretrained encoder (the default colorizer) on every colour photo in ../shared/datasets:

    python -m core.training.colorizer --backbone efficientnet-lite0 --data ../shared/datasets \
        --out runs/colorizer-lite --head bins --people-share 0.35 [--resume]
    python -m core.training.colorizer --data ../shared/datasets --out runs/colorizer-lite --tune-decoding
    python -m core.training.colorizer --out runs/colorizer-lite --export colorizer-lite0

The photos are split by source group (core.data.colorization): ``train`` trains, ``select`` picks the
checkpoint (bins head: lowest select loss with the segmenter's predicted map) and the decoding of the bins
(``--tune-decoding``, on select's full photos through the pipeline), ``heldout`` is left to the bench. Each photo
gives square views (``--side``², train: the first square and the last one mirrored); the frozen backbone's
features of the gray view, the segmenter's predicted map (the shipped segmenter through the pipeline, as
colorization predicts it) and the ground-truth map where labels exist are computed ONCE into ``--cache`` and the head
trains on the cache. Per sample the map is: none (``--drop-map``), the ground truth (half of the labelled
samples) or the prediction, so the colorizer works with no map, with a user's map and with the
segmenter's mistakes. ``--head bins`` learns a distribution over ab bins with class rebalancing
(``--rebalance`` λ, Zhang et al. 2016) and predicts the annealed mean; ``--head regression`` regresses ab
with Huber δ = 1 ab unit (Eq. 1), the ablation.

The paper's network (Ho et al.) on SIFT Flow, crops = the size it runs at (instance-norm statistics then
see the same bottleneck in training and inference):

    python -m core.training.colorizer --data ../shared/datasets/siftflow/train --out runs/colorizer \
        --size 160 --crop 128 [--resume]
    python -m core.training.colorizer --out runs/colorizer --export colorizer-siftflow
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.colorization.palette import class_colors
from core.colorization.pipeline import load_segmenter, segment
from core.data import colorization as photos
from core.data.siftflow import cached_arrays, find_classes, random_batch, read_classes
from core.imaging.color import lab_to_rgb_torch, rgb_to_lab_torch
from core.models.colorization_unet import (
    AB_SCALE,
    BIN_STEP,
    L_SCALE,
    ColorizationUNet,
    ColorizerConfig,
    ab_grid,
    decode_bins,
    lab_to_inputs,
)
from core.models.efficientnet_lite import load_pretrained
from core.training.gridnet import DEFAULT_DATA, cosine_lr, resume_or_start, save_checkpoint
from core.weights import bundled_weights_dir, register_weights, save_tensors

UNKNOWN = 255  # no ground-truth map for this view
# checkpoint choice on select: the bins head by its own objective (the temperature of its annealed mean,
# which trades ΔE for colourfulness, is picked afterwards); the regression head by ΔE
CRITERION = {"bins": "loss_predicted", "regression": "delta_e_predicted"}
TAP_SHAPES = {"stride4": (24, 4), "stride8": (40, 8), "stride16": (112, 16), "stride32": (320, 32)}


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


def colorfulness_torch(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk (2003) per image of N×3×H×W RGB in [0, 1], on the 0–255 scale."""
    r, g, b = (rgb[:, i].flatten(1) * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return torch.hypot(rg.std(1), yb.std(1)) + 0.3 * torch.hypot(rg.mean(1), yb.mean(1))


# ---------------------------------------------------------------- the paper's network on SIFT Flow

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


def train_paper(args: argparse.Namespace) -> None:
    out = Path(args.out)
    classes = read_classes(args.classes or find_classes(args.data))
    palette = torch.from_numpy(class_colors(classes.count).astype(np.float32) / 255)
    train_x, train_y, _ = cached_arrays(args.data, "train", args.size, args.cache, args.val_percent)
    # checkpoints are chosen on "select"; "heldout" stays for the reported numbers
    val_x, val_y, _ = cached_arrays(args.data, "select", args.size, args.cache, args.val_percent)
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    # checkpoints are picked on the centre crop at the size the pipeline runs the model at
    lo = (args.size - args.crop) // 2
    val_x = np.ascontiguousarray(np.asarray(val_x)[:, lo:lo + args.crop, lo:lo + args.crop])
    val_y = np.ascontiguousarray(np.asarray(val_y)[:, lo:lo + args.crop, lo:lo + args.crop])
    config = ColorizerConfig(width=args.width, instance_norm=not args.no_instance_norm)
    model = ColorizationUNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    out.mkdir(parents=True, exist_ok=True)
    progress = resume_or_start(out, args.resume, model, optimizer, args.seed, best_score=-float("inf"))
    step, elapsed, best_score, rng = progress.step, progress.elapsed, progress.best_score, progress.rng
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
                      "step": step, "elapsed_s": elapsed, "input_size": args.crop}
            score = -metrics["loss"]
            if score > best_score:
                best_score = score
                save_checkpoint(out / "best.pt", model=model.state_dict(), metrics=metrics, **common)
            save_checkpoint(out / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            best_score=best_score, **common)


# ---------------------------------------------------------------- the pretrained encoder's head

@dataclass
class ViewCache:
    """One split's views: RGB, predicted and ground-truth maps, the frozen encoder's features."""
    rgb: np.ndarray  # N×S×S×3 uint8
    predicted: np.ndarray  # N×S×S uint8 class ids
    truth: np.ndarray  # N×S×S uint8 class ids, UNKNOWN where the photo has no labels
    features: dict[str, np.ndarray]  # tap → N×C×h×w float16
    source: np.ndarray  # N int8 index into photos.SOURCES

    def __len__(self) -> int:
        return len(self.rgb)


def _views(split: str) -> tuple[bool, ...]:
    return (False, True) if split == "train" else (False,)


def build_cache(data: str, split: str, side: int, directory: Path, backbone_model: ColorizationUNet,
                segmenter, person_id: int, limit: int = 0) -> ViewCache:
    """Compute the split's views once (1 thread: ~50 ms a view); reopen them read-only afterwards."""
    directory = directory / f"{split}-{side}"
    done = directory / "done.json"
    if not done.exists():
        listed = photos.list_colour_photos(data, split)
        if limit:
            listed = listed[:limit]
        count = len(listed) * len(_views(split))
        directory.mkdir(parents=True, exist_ok=True)

        def new(name, shape, dtype):
            return np.lib.format.open_memmap(directory / f"{name}.npy", "w+", dtype, (count, *shape))

        rgb_out, pred_out = new("rgb", (side, side, 3), np.uint8), new("predicted", (side, side), np.uint8)
        truth_out, source_out = new("truth", (side, side), np.uint8), new("source", (), np.int8)
        feats_out = {tap: new(tap, (c, -(-side // s), -(-side // s)), np.float16)
                     for tap, (c, s) in TAP_SHAPES.items()}
        names = list(photos.SOURCES)
        index, started = 0, time.time()
        for n, photo in enumerate(listed):
            rgb = photos.read_photo(photo)
            raw_label = np.zeros(rgb.shape[:2], np.uint8)
            for last in _views(split):
                view, _ = photos.square_view(rgb, [raw_label], side, last)
                lab = rgb_to_lab_torch(torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255)
                gray = (lab[:, :1] / L_SCALE - 1).expand(-1, 3, -1, -1)
                with torch.no_grad():
                    features = backbone_model.backbone_features(gray)
                # the map as colorization gets it at inference: the shipped segmenter (one decoder or an
                # ensemble) through the pipeline, on this view's L
                predicted, _ = segment(lab[0, 0].numpy(), segmenter)
                truth = _view_truth(photo, rgb, predicted, side, last, person_id)
                rgb_out[index], pred_out[index], source_out[index] = view, predicted, names.index(photo.source)
                truth_out[index] = UNKNOWN if truth is None else truth
                for tap in TAP_SHAPES:
                    feats_out[tap][index] = features[tap][0].numpy().astype(np.float16)
                index += 1
            if n % 200 == 0:
                print(f"cache {split}: {n}/{len(listed)} photos, {time.time() - started:.0f} s", flush=True)
        for array in (rgb_out, pred_out, truth_out, source_out, *feats_out.values()):
            array.flush()
        done.write_text(json.dumps({"views": count, "photos": len(listed), "side": side}))

    def load(name):
        return np.load(directory / f"{name}.npy", mmap_mode="r")

    return ViewCache(load("rgb"), load("predicted"), load("truth"), {tap: load(tap) for tap in TAP_SHAPES},
                     load("source"))


def _view_truth(photo, rgb, predicted_view, side, last, person_id):
    """The ground-truth map of the view (None without labels); people photos: mask + prediction."""
    if photo.label is None:
        return None
    if photo.label_kind == "classes":
        full = photos.ground_truth_map(photo, np.zeros(rgb.shape[:2], np.uint8), person_id)
        return photos.square_view(rgb, [full], side, last)[1][0]
    mask = photos.person_mask(photo).astype(np.uint8)
    mask_view = photos.square_view(rgb, [mask], side, last)[1][0]
    rest = np.where(predicted_view == person_id, 0, predicted_view)
    return np.where(mask_view > 0, person_id, rest).astype(np.uint8)


@dataclass
class BinCoding:
    centers: torch.Tensor  # Q×2 ab
    lookup: torch.Tensor  # 529 grid cells → nearest kept bin
    weights: torch.Tensor  # Q rebalancing weights, E_prior[w] = 1


def bin_coding(train: ViewCache, rebalance: float, sample_views: int = 2000) -> BinCoding:
    """The ab bins the training photos use, and Zhang et al.'s rebalancing weights
    w ∝ ((1 − λ) p̃ + λ/Q)⁻¹ with p̃ the Gaussian-smoothed (σ = 5 ab) bin frequency."""
    grid = ab_grid()
    counts = torch.zeros(len(grid))
    step = max(1, len(train) // sample_views)
    for i in range(0, len(train), step * 64):
        idx = np.arange(i, min(len(train), i + step * 64), step)
        rgb = torch.from_numpy(np.asarray(train.rgb[idx])).permute(0, 3, 1, 2).float() / 255
        cells = _grid_cells(rgb_to_lab_torch(rgb)[:, 1:])
        counts += torch.bincount(cells.reshape(-1), minlength=len(grid)).float()
    kept = counts > 0
    centers = grid[kept]
    distance = torch.cdist(grid, centers)
    lookup = distance.argmin(1)
    prior = counts[kept] / counts.sum()
    smooth = torch.exp(-torch.cdist(centers, centers) ** 2 / (2 * 5.0 ** 2))
    prior = smooth @ prior
    prior = prior / prior.sum()
    weights = 1 / ((1 - rebalance) * prior + rebalance / len(centers))
    weights = weights / (prior * weights).sum()
    return BinCoding(centers, lookup, weights)


def _grid_cells(ab: torch.Tensor) -> torch.Tensor:
    """N×2×H×W ab → N×H×W index of the nearest 10-unit grid cell (ab_grid's order)."""
    axis = int(round(220 / BIN_STEP)) + 1
    ia = ((ab[:, 0] + 110) / BIN_STEP).round().clamp(0, axis - 1).long()
    ib = ((ab[:, 1] + 110) / BIN_STEP).round().clamp(0, axis - 1).long()
    return ia * axis + ib


def soft_targets(ab: torch.Tensor, coding: BinCoding, bins: int, pool: int) -> torch.Tensor:
    """N×2×H×W ab → N×Q×(H/pool)×(W/pool): each output cell's fraction of pixels per bin."""
    n, _, h, w = ab.shape
    q = coding.lookup[_grid_cells(ab)]  # N×H×W
    hs, ws = h // pool, w // pool
    ys = torch.arange(h)[:, None] // pool
    xs = torch.arange(w)[None, :] // pool
    cell = (ys * ws + xs).expand(h, w)
    flat = (torch.arange(n)[:, None, None] * bins + q) * (hs * ws) + cell
    counts = torch.zeros(n * bins * hs * ws)
    counts.index_add_(0, flat.reshape(-1), torch.ones(flat.numel()))
    return counts.view(n, bins, hs, ws) / (pool * pool)


def _batch(cache: ViewCache, idx: np.ndarray, classes: int, rng: np.random.Generator | None,
           drop_map: float, truth_share: float, condition: str = "train"):
    """Cached views → (features, L/50−1 at stride 4, map fractions at stride 4, Lab at full size)."""
    idx = np.sort(idx)
    features = {tap: torch.from_numpy(np.asarray(cache.features[tap][idx])).float() for tap in TAP_SHAPES}
    rgb = torch.from_numpy(np.asarray(cache.rgb[idx])).permute(0, 3, 1, 2).float() / 255
    lab = rgb_to_lab_torch(rgb)
    predicted = torch.from_numpy(np.asarray(cache.predicted[idx])).long()
    truth = torch.from_numpy(np.asarray(cache.truth[idx])).long()
    has_truth = (truth != UNKNOWN).flatten(1).all(1)
    if condition == "train":
        draw = torch.from_numpy(rng.random((len(idx), 2)))
        use_truth = has_truth & (draw[:, 0] < truth_share)
        ids = torch.where(use_truth[:, None, None], truth.clamp_max(classes - 1), predicted)
        no_map = draw[:, 1] < drop_map
    else:
        ids = truth.clamp_max(classes - 1) if condition == "truth" else predicted
        no_map = torch.full((len(idx),), condition == "none")
    ids = ids.masked_fill(no_map[:, None, None], 0)
    size4 = features["stride4"].shape[-2:]
    onehot = F.one_hot(ids, classes).permute(0, 3, 1, 2).float()
    onehot4 = F.adaptive_avg_pool2d(onehot, size4)
    lightness4 = F.adaptive_avg_pool2d(lab[:, :1] / L_SCALE - 1, size4)
    return features, lightness4, onehot4, lab


@torch.no_grad()
def evaluate_views(model: ColorizationUNet, cache: ViewCache, classes: int, batch: int = 32,
                   coding: BinCoding | None = None) -> dict:
    """Mean ΔE (CIE76) and colorfulness ratio to the originals, per map condition, on cached views;
    with ``coding`` also the training objective (predicted map)."""
    model.eval()
    result = {}
    if coding is not None:
        losses = []
        for i in range(0, len(cache), batch):
            features, lightness4, onehot4, lab = _batch(cache, np.arange(i, min(len(cache), i + batch)), classes,
                                                        None, 0, 0, "predicted")
            losses.append(objective(model, model.decode(features, lightness4, onehot4), lab, coding).item()
                          * len(lab))
        result["loss_predicted"] = sum(losses) / len(cache)
    labelled = np.flatnonzero(np.asarray(cache.truth[:, 0, 0]) != UNKNOWN)
    for condition, indices in (("predicted", np.arange(len(cache))), ("none", np.arange(len(cache))),
                               ("truth", labelled)):
        de, cf, cf_ref = [], [], []
        for i in range(0, len(indices), batch):
            features, lightness4, onehot4, lab = _batch(cache, indices[i:i + batch], classes, None, 0, 0,
                                                        condition)
            ab = model.to_ab(model.decode(features, lightness4, onehot4))
            ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False).clamp(-1, 1)
            out = torch.cat([lab[:, :1], ab * AB_SCALE], 1)
            rgb_out = lab_to_rgb_torch(out).clamp(0, 1)
            back = rgb_to_lab_torch(rgb_out)  # ΔE of the displayable image, as the bench measures it
            de.append((back - lab).norm(dim=1).flatten(1).mean(1))
            cf.append(colorfulness_torch(rgb_out))
            cf_ref.append(colorfulness_torch(lab_to_rgb_torch(lab).clamp(0, 1)))
        if de:
            result[f"delta_e_{condition}"] = float(torch.cat(de).mean())
            result[f"colorfulness_ratio_{condition}"] = float(torch.cat(cf).mean() / torch.cat(cf_ref).mean())
    model.train()
    return result


def objective(model: ColorizationUNet, output: torch.Tensor, lab: torch.Tensor, coding: BinCoding) -> torch.Tensor:
    """bins: rebalanced cross-entropy against each stride-4 cell's bin fractions; regression: Eq. 1's
    Huber (δ in ab units) against the cell's mean ab."""
    if model.config.head == "bins":
        target = soft_targets(lab[:, 1:], coding, len(coding.centers), 4)
        weight = torch.einsum("nqhw,q->nhw", target, coding.weights)
        return (weight * -(target * F.log_softmax(output, 1)).sum(1)).mean()
    return model.loss(output, F.avg_pool2d(lab[:, 1:], 4) / AB_SCALE)


def people_pools(cache: ViewCache) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the people photos' views and of all the others."""
    people = np.isin(np.asarray(cache.source), [list(photos.SOURCES).index(s) for s in photos.PEOPLE])
    return np.flatnonzero(people), np.flatnonzero(~people)


def draw_batch(pools: tuple[np.ndarray, np.ndarray], batch: int, people_share: float,
               rng: np.random.Generator) -> np.ndarray:
    """A batch of view indices; with ``people_share`` > 0 that share of it comes from people photos (they are
    a fifth of the views but most of what a user colorizes), the rest from the other photos."""
    people, others = pools
    if people_share <= 0 or not len(people):
        return rng.choice(len(people) + len(others), batch, replace=False)
    count = min(len(people), int(round(batch * people_share)))
    return np.concatenate([rng.choice(people, count, replace=False),
                           rng.choice(others, batch - count, replace=False)])


def start_from(model: ColorizationUNet, checkpoint: Path) -> None:
    """Fine-tune from a checkpoint's weights (fresh optimizer and schedule); its ab bins must be these."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    if "ab_centers" in state and not torch.equal(state["ab_centers"], model.ab_centers):
        raise SystemExit(f"{checkpoint} was trained on other ab bins; --init needs the same training data.")
    model.load_state_dict(state)
    print(f"started from {checkpoint}")


def train_pretrained(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = load_segmenter(torch.device("cpu"))
    classes = list(segmenter.classes)
    person_id = classes.index("person")
    probe = ColorizationUNet(ColorizerConfig(backbone=args.backbone, map_classes=len(classes))).eval()
    probe.backbone.load_state_dict(load_pretrained().state_dict(), strict=False)
    cache_dir = Path(args.cache)
    train_cache = build_cache(args.data, "train", args.side, cache_dir, probe, segmenter, person_id, args.limit)
    select_cache = build_cache(args.data, "select", args.side, cache_dir, probe, segmenter, person_id,
                               args.limit)
    coding = bin_coding(train_cache, args.rebalance)
    config = ColorizerConfig(backbone=args.backbone, map_classes=len(classes), head=args.head,
                             ab_bins=len(coding.centers) if args.head == "bins" else 0)
    model = ColorizationUNet(config)
    model.backbone.load_state_dict(probe.backbone.state_dict())
    if args.head == "bins":
        model.ab_centers.copy_(coding.centers)
        model.ab_log_weights.copy_(coding.weights.log())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.lr)
    progress = resume_or_start(out, args.resume, model, optimizer, args.seed, best_score=-float("inf"))
    if progress.state is None and args.init:
        start_from(model, Path(args.init))
    step, elapsed, best_score, rng = progress.step, progress.elapsed, progress.best_score, progress.rng
    if progress.state is not None and progress.state.get("criterion") != CRITERION[args.head]:
        best_score = -float("inf")  # checkpoints picked by another measure before: start afresh
    train_pools = people_pools(train_cache)
    print(f"{len(train_cache)} train / {len(select_cache)} select views, {len(coding.centers)} ab bins, "
          f"{sum(p.numel() for p in trainable) / 1e6:.2f} M trained parameters", flush=True)
    log = open(out / "log.jsonl", "a")
    started, running = time.time(), []
    model.train()
    while step < args.steps:
        out_of_time = (time.time() - started) >= args.minutes * 60
        if out_of_time and step % args.val_every == 0:
            break  # just checkpointed
        t0 = time.time()
        idx = draw_batch(train_pools, args.batch, args.people_share, rng)
        features, lightness4, onehot4, lab = _batch(train_cache, idx, len(classes), rng, args.drop_map,
                                                    args.truth_share)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, step, args.steps)
        loss = objective(model, model.decode(features, lightness4, onehot4), lab, coding)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.time() - t0
        running.append(loss.item())
        if step % args.val_every == 0 or step == args.steps or out_of_time:
            metrics = evaluate_views(model, select_cache, len(classes), coding=coding)
            record = {"step": step, "train_loss": float(np.mean(running)), "elapsed_s": round(elapsed), **metrics}
            running = []
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            common = {"config": config.to_dict(), "classes": classes, "args": vars(args), "step": step,
                      "elapsed_s": elapsed, "input_size": args.side, "criterion": CRITERION[args.head],
                      "data": {"train_views": len(train_cache), "select_views": len(select_cache)}}
            score = -metrics[CRITERION[args.head]]
            if score > best_score:
                best_score = score
                save_checkpoint(out / "best.pt", model=model.state_dict(), metrics=metrics, **common)
            save_checkpoint(out / "last.pt", model=model.state_dict(), optimizer=optimizer.state_dict(),
                            best_score=best_score, **common)
            if out_of_time:
                break


def closest_colourful_enough(rows: list[dict], delta_e_key: str, min_colorfulness: float) -> dict:
    """The decoding sweep's rule: the lowest ``delta_e_key`` among the rows whose people photos keep
    ``min_colorfulness`` of the originals' colourfulness; when none does, the most colourful row."""
    enough = [row for row in rows if row["people_colorfulness_ratio"] >= min_colorfulness]
    if enough:
        return min(enough, key=lambda row: row[delta_e_key])
    return max(rows, key=lambda row: row["people_colorfulness_ratio"])


@dataclass
class SelectPhoto:
    """One select photo as the decoding sweep needs it: bin scores once, references for the metrics."""
    people: bool
    lightness: np.ndarray  # H×W CIELab L
    lab: torch.Tensor  # 3×H×W original
    colourfulness: float
    skin: np.ndarray | None  # H×W bool (Clothing Co-Parsing's skin label)
    scores: torch.Tensor  # 1×Q×h×w bin scores at stride 4 with the predicted map
    model_shape: tuple[int, int]


def decoding_grid(args: argparse.Namespace) -> list[dict]:
    """The annealed means of --temperatures × --prior-corrections, then the chroma-bonus decodings."""
    rows = [{"temperature": t, "prior_correction": a, "chroma_bonus": None}
            for t in args.temperatures for a in args.prior_corrections]
    return rows + [{"temperature": args.temperatures[-1], "prior_correction": a, "chroma_bonus": b}
                   for a in args.prior_corrections for b in args.chroma_bonuses]


def tune_decoding(args: argparse.Namespace) -> None:
    """Pick the bins head's decoding on the select split's full photos (never the reported split), through
    the pipeline the bench and GIMP use: the shipped segmenter's predicted map, the model at its size, the
    guided upsampling, ΔE of the displayable 8-bit result. The bin scores are computed once per photo;
    each setting only decodes them. Rule: the lowest mean of the people and scene photos' mean ΔE among
    the settings that keep the people photos' colourfulness ≥ --min-colorfulness of the originals'."""
    from core.colorization import pipeline

    out, device = Path(args.out), torch.device("cpu")
    best = torch.load(out / "best.pt", map_location=device, weights_only=False)
    model = ColorizationUNet(ColorizerConfig.from_dict(best["config"]))
    model.load_state_dict(best["model"])
    colorizer = pipeline.Colorizer(model.eval(), tuple(best["classes"]), best["input_size"], device)
    segmenter = pipeline.load_segmenter(device)
    listed = photos.list_colour_photos(args.data, "select")
    scenes = [p for p in listed if not p.is_people]
    listed = [p for p in listed if p.is_people] + scenes[::max(1, args.scene_step)]
    if args.limit:  # a quick check: the first people photos and the first scenes
        listed = listed[:args.limit] + listed[-args.limit:]
    selected = []
    for photo in listed:
        rgb = photos.read_photo(photo)
        skin = photos.skin_mask(photo)
        scale = min(1.0, args.tune_side / max(rgb.shape[:2]))
        if scale < 1:  # the model sees ~192² either way; the metrics need no more pixels than this
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
            skin = None if skin is None else np.asarray(Image.fromarray(skin).resize(size, Image.Resampling.NEAREST))
        lightness = pipeline.image_lightness(rgb)[0]
        ids, ids_small = pipeline.segment(lightness, segmenter)
        gray, semantic = pipeline.model_inputs(lightness, ids, colorizer, ids_small)
        with torch.no_grad():
            scores = model.scores(gray, semantic)
        rgb_t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        selected.append(SelectPhoto(photo.is_people, lightness, rgb_to_lab_torch(rgb_t)[0],
                                    float(colorfulness_torch(rgb_t)[0]), skin, scores, tuple(gray.shape[-2:])))
    print(f"{len(selected)} select photos ({sum(p.people for p in selected)} people)", flush=True)
    rows = []
    for setting in decoding_grid(args):
        row = dict(setting, **decoded_metrics(selected, model, setting))
        print(json.dumps(row), flush=True)
        rows.append(row)
    chosen = closest_colourful_enough(rows, "delta_e_groups", args.min_colorfulness)
    best["config"] = dict(best["config"], **{k: chosen[k] for k in ("temperature", "prior_correction",
                                                                    "chroma_bonus")})
    best["decoding_sweep"] = {"rows": rows, "chosen": chosen, "min_colorfulness": args.min_colorfulness,
                              "photos": len(selected), "scene_step": args.scene_step}
    save_checkpoint(out / "best.pt", **best)
    print(f"chosen: {json.dumps(chosen)}")


@torch.no_grad()
def decoded_metrics(selected: list[SelectPhoto], model: ColorizationUNet, setting: dict) -> dict:
    """Mean ΔE and colourfulness ratio per group (people, scenes), skin hue and chroma, for one decoding."""
    from core.colorization import pipeline

    sums: dict[str, list] = {}
    for photo in selected:
        ab = decode_bins(photo.scores, model.ab_centers, model.ab_log_weights, setting["temperature"],
                         setting["prior_correction"], setting["chroma_bonus"])
        ab = (F.interpolate(ab, size=photo.model_shape, mode="bilinear", align_corners=False) / AB_SCALE)
        ab_small = ab.clamp(-1, 1)[0].permute(1, 2, 0).numpy() * AB_SCALE
        _, shown = pipeline.combine(photo.lightness, ab_small, out_dtype=np.dtype(np.uint8))
        rgb = torch.from_numpy(shown).permute(2, 0, 1)[None].float() / 255
        lab = rgb_to_lab_torch(rgb)[0]
        group = "people" if photo.people else "scenes"
        sums.setdefault(group + "_delta_e", []).append(float((lab - photo.lab).norm(dim=0).mean()))
        sums.setdefault(group + "_cf", []).append(float(colorfulness_torch(rgb)[0]))
        sums.setdefault(group + "_cf_ref", []).append(photo.colourfulness)
        if photo.skin is not None and photo.skin.any():
            a, b = lab[1:, torch.from_numpy(photo.skin)].double()
            sums.setdefault("skin_hue", []).append(float(torch.atan2(b.mean(), a.mean())))
            sums.setdefault("skin_chroma", []).append(float(torch.hypot(a, b).mean()))
    result = {}
    for group in ("people", "scenes"):
        result[f"{group}_delta_e"] = round(float(np.mean(sums[group + "_delta_e"])), 3)
        result[f"{group}_colorfulness_ratio"] = round(float(np.sum(sums[group + "_cf"]) /
                                                            np.sum(sums[group + "_cf_ref"])), 3)
    result["delta_e_groups"] = round((result["people_delta_e"] + result["scenes_delta_e"]) / 2, 3)
    if "skin_hue" in sums:
        hue = np.asarray(sums["skin_hue"])
        result["skin_hue_deg"] = round(float(np.degrees(np.arctan2(np.sin(hue).mean(), np.cos(hue).mean())) % 360), 1)
        result["skin_chroma"] = round(float(np.mean(sums["skin_chroma"])), 2)
    return result


def export(out: Path, weight_id: str, directory: Path | None = None) -> Path:
    """best.pt → fp16 weights file + manifest entry; the model card is written by hand from the bench.
    A frozen pretrained backbone is not copied: the pipeline loads its own verified file (the file the
    training cached the features with)."""
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    path = Path(directory or bundled_weights_dir()) / f"{weight_id}.safetensors"
    meta = {"model": "colorizer", "config": json.dumps(best["config"]), "metrics": json.dumps(best["metrics"]),
            "step": str(best["step"])}
    state = best["model"]
    if best["config"].get("backbone"):
        state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    save_tensors(path, state, metadata=meta)
    config = dict(best["config"], classes=best["classes"],
                  input_size=best.get("input_size", best["args"].get("crop")))
    register_weights(path, weight_id, "colorizer", config, card=f"{weight_id}.md", directory=directory)
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB) step {best['step']}: {best['metrics']}")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="", choices=["", "efficientnet-lite0"],
                   help="'' = the paper's U-Net; efficientnet-lite0 = head on the frozen pretrained encoder")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="paper: SIFT Flow split folder; pretrained: the datasets folder (../shared/datasets)")
    p.add_argument("--classes", default=None, help="classes.txt (default: beside --data)")
    p.add_argument("--out", default="runs/colorizer")
    p.add_argument("--cache", default="runs/colorization/cache")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--size", type=int, default=160, help="paper: images are resized to size×size")
    p.add_argument("--crop", type=int, default=128, help="paper: training crop = the size it runs at")
    p.add_argument("--side", type=int, default=192, help="pretrained: view side = the size it runs at")
    p.add_argument("--head", default="bins", choices=["bins", "regression"])
    p.add_argument("--rebalance", type=float, default=0.5, help="λ of the bins' class rebalancing")
    p.add_argument("--truth-share", type=float, default=0.5, help="labelled samples given the true map")
    p.add_argument("--limit", type=int, default=0, help="pretrained: at most so many photos per split")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=4000, help="total steps (cosine schedule length)")
    p.add_argument("--minutes", type=float, default=1e9, help="stop this run after so many minutes")
    p.add_argument("--width", type=float, default=0.5, help="paper: depth multiplier; 1.0 = 28 MB fp16")
    p.add_argument("--no-instance-norm", action="store_true", help="paper: no IN on the gray stream")
    p.add_argument("--drop-map", type=float, default=0.15)
    p.add_argument("--people-share", type=float, default=0.0,
                   help="pretrained: share of each batch drawn from people photos (0: uniform over views)")
    p.add_argument("--init", default="", help="pretrained: fine-tune from this checkpoint's weights")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-percent", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.3, 0.38, 0.5, 0.65, 0.8, 1.0])
    p.add_argument("--prior-corrections", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--min-colorfulness", type=float, default=0.7,
                   help="decoding sweep: people photos' colourfulness ratio to keep on select")
    p.add_argument("--tune-decoding", action="store_true",
                   help="pretrained bins head: pick T, prior correction and chroma bonus of best.pt on select's "
                        "full photos through the pipeline")
    p.add_argument("--chroma-bonuses", type=float, nargs="*", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                   help="decoding sweep: chroma bonuses λ tried at the last --temperatures value")
    p.add_argument("--scene-step", type=int, default=3, help="decoding sweep: every n-th select scene photo")
    p.add_argument("--tune-side", type=int, default=512, help="decoding sweep: photos reduced to this long side")
    p.add_argument("--export", metavar="ID", help="write best.pt as weights/<ID>.safetensors and register it")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.export:
        export(Path(args.out), args.export)
        return
    if args.tune_decoding:
        tune_decoding(args)
        return
    torch.manual_seed(args.seed)
    if args.backbone:
        train_pretrained(args)
    else:
        train_paper(args)


if __name__ == "__main__":
    main()
