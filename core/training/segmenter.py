"""Train the pretrained-backbone segmenter (core/models/segmenter.py) on gray photos; one command, resumable.

    python -m core.training.segmenter --data ../shared/datasets --out runs/segmenter [--resume]
    python -m core.training.segmenter --data ../shared/datasets --out runs/segmenter \
        --export segmenter-siftflow

The backbone is frozen, so the features of every training view (SIFT Flow photos and their mirror images,
people photos; ``core/data/segmentation.py``) are computed once, on the *gray* photo, and stored in
``--out``/cache in chunks (an interrupted run continues from the last chunk); the decoder then trains on
that cache. The loss is class-balanced cross-entropy over the 33 labelled classes (unlabeled pixels
carry none) plus, on the pixels of Clothing Co-Parsing photos outside the person, −log(1 − p(person)).
Every ``--eval-every`` steps the 'select' split is scored (SIFT Flow mIoU, person IoU on people photos);
``best.pt`` keeps the best, ``last.pt`` the latest. ``--backbone lite2`` reads the larger EfficientNet-Lite2
(converted into runs/lite2 by ``core.training.efficientnet_lite --variant lite2``) instead of the shipped
Lite0; its taps are wider, so it needs its own cache folder; ``--cache-only`` builds a cache and stops.
``--export`` writes the best decoder as fp16 weights, registers it, scores it and GridNet (the from-scratch
segmenter) on the 'heldout' split through the full-resolution pipeline, and writes the model card with those
numbers (a Lite0 segmenter only, until a larger backbone ships in weights/).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data import segmentation
from core.data.siftflow import read_classes
from core.models.efficientnet_lite import LITE_VARIANTS, load_pretrained, weight_id_of
from core.models.segmenter import TAPS, PretrainedSegmenter, SegmenterConfig, gray_to_rgb
from core.training.gridnet import class_weights, confusion, gray_input
from core.weights import Manifest, bundled_weights_dir, register_weights, save_tensors

PHOTOS_PER_CHUNK = 100
SELECT_PEOPLE_WEIGHT = 0.5  # checkpoint score: SIFT Flow mIoU + this × person IoU on people photos
ALWAYS_LISTED = ("steps", "batch", "lr", "width", "class_balance", "threads")  # in a card's recipe line
# the training options a card's recipe line gives when a run changed them (inference and export ones aside)
RECIPE_OPTIONS = ("backbone", "side", "label_side", "cache", "steps", "batch", "lr", "weight_decay", "width",
                  "dropout", "class_balance", "not_person_weight", "no_people", "lovasz", "lovasz_side", "init",
                  "tune_after", "backbone_lr_scale", "prior_adjustment", "eval_every", "seed", "minutes", "threads")


@dataclass
class FeatureCache:
    features: dict[str, torch.Tensor]  # tap → N×C×h×w float16
    labels: torch.Tensor  # N×S×S uint8 (class ids, UNLABELED, NOT_PERSON of core.data.segmentation)
    people: torch.Tensor  # N bool: the view comes from a people photo

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def cache_split(model: PretrainedSegmenter, photos: list[segmentation.LabelledPhoto], directory: Path,
                name: str, person_id: int, side: int, label_side: int, both_views: bool,
                log=print) -> FeatureCache:
    """Backbone features of the gray views of ``photos``, computed once in chunks and read back."""
    directory.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in range(0, len(photos), PHOTOS_PER_CHUNK):
        path = directory / f"{name}_{side}_{start:06d}.npz"
        chunks.append(path)
        if path.exists():
            continue
        chunk_started = time.perf_counter()
        views, people = [], []
        for photo in photos[start:start + PHOTOS_PER_CHUNK]:
            rgb, labels = segmentation.photo_labels(photo, person_id)
            # people photos are one view each: CCP's 1 000 look alike, SIFT Flow's scenes are the variety
            both = both_views and not photo.is_people
            for view in segmentation.square_views(rgb, labels, side, label_side, both):
                views.append(view)
                people.append(photo.is_people)
        out = {tap: [] for tap in TAPS}
        for b in range(0, len(views), 16):
            gray = gray_input(np.stack([v[0] for v in views[b:b + 16]]))
            # every tap, whatever this run tunes: one cache serves frozen and fine-tuned runs alike
            for tap, value in model.backbone.features(gray_to_rgb(gray), TAPS).items():
                out[tap].append(value.half().numpy())
        tmp = path.with_suffix(".part.npz")
        np.savez(tmp, labels=np.stack([v[1] for v in views]), people=np.array(people),
                 **{tap: np.concatenate(v) for tap, v in out.items()})
        tmp.replace(path)
        done = min(len(photos), start + PHOTOS_PER_CHUNK)
        log(json.dumps({"cached": name, "photos": done, "of": len(photos), "views": len(views),
                        "seconds": round(time.perf_counter() - chunk_started, 1)}))
    loaded = [np.load(p) for p in chunks]
    expected = model.backbone.tap_widths(TAPS)
    wrong_cache = SystemExit(f"The feature cache {directory} does not hold {model.config.backbone}'s taps "
                             f"({expected} channels): it was made with another backbone. Give each backbone its "
                             "own --cache folder.")
    try:
        features = {tap: torch.from_numpy(np.concatenate([c[tap] for c in loaded])) for tap in TAPS}
    except ValueError:  # chunks of two backbones: their channel counts differ
        raise wrong_cache from None
    if {tap: f.shape[1] for tap, f in features.items()} != expected:
        raise wrong_cache
    return FeatureCache(features, torch.from_numpy(np.concatenate([c["labels"] for c in loaded])),
                        torch.from_numpy(np.concatenate([c["people"] for c in loaded])))


def backbone_weights(spec: str) -> tuple[Manifest, str]:
    """``--backbone`` → (manifest, weight id) of a converted ImageNet EfficientNet-Lite file, loaded with its
    sha256 checked. "lite0": the shipped one in weights/; "lite2" (any variant name): the converter's default
    folder runs/<variant>; otherwise a folder holding a manifest.json, or a .safetensors file in one."""
    if spec == "lite0":
        return Manifest.load(), weight_id_of("lite0")
    path = Path("runs") / spec if spec in LITE_VARIANTS else Path(spec)
    folder = path.parent if path.suffix == ".safetensors" else path
    manifest = Manifest.load(folder)
    found = [e.id for e in manifest.entries.values() if e.model.startswith("efficientnet_")
             and (path.suffix != ".safetensors" or e.file == path.name)]
    if len(found) != 1:
        raise SystemExit(f"--backbone {spec}: {folder / 'manifest.json'} should register exactly one converted "
                         f"EfficientNet-Lite file{' named ' + path.name if path.suffix else ''}, found {found}. "
                         "Convert it with: python -m core.training.efficientnet_lite --variant lite2 --out "
                         f"{folder}")
    return manifest, found[0]


def batch_features(cache: FeatureCache, idx, taps: tuple[str, ...] = TAPS) -> dict[str, torch.Tensor]:
    return {tap: cache.features[tap][idx].float() for tap in taps}


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, person_id: int,
                      not_person_weight: float) -> torch.Tensor:
    """Class-weighted cross-entropy over the labelled classes + −log(1 − p(person)) on NOT_PERSON pixels.

    logits N×K×S×S (class 0 'unlabeled' is never predicted, so the softmax is over classes 1…K−1),
    labels N×S×S uint8. The sum is divided by the total weight of the supervised pixels.
    """
    scored = logits[:, 1:]
    target = labels.long() - 1
    known = (labels != segmentation.UNLABELED) & (labels != segmentation.NOT_PERSON)
    target = torch.where(known, target, torch.zeros_like(target))
    ce = F.cross_entropy(scored, target, reduction="none")
    class_weight = weights[labels.long().clamp_max(len(weights) - 1)]
    pixel_weight = torch.where(known, class_weight, torch.zeros_like(ce))
    total = (ce * pixel_weight).sum()
    norm = pixel_weight.sum()
    not_person = labels == segmentation.NOT_PERSON
    if not_person_weight > 0 and bool(not_person.any()):
        others = torch.cat([scored[:, :person_id - 1], scored[:, person_id:]], dim=1)
        # −log(1 − p) = logsumexp(all classes) − logsumexp(all but person), stable for any logits
        penalty = torch.logsumexp(scored, 1) - torch.logsumexp(others, 1)
        total = total + not_person_weight * penalty[not_person].sum()
        norm = norm + not_person_weight * not_person.sum()
    return total / norm.clamp_min(1.0)


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax (Berman, Rannen Triki, Blaschko, CVPR 2018): per class present in the batch, the
    Lovász extension of 1 − IoU evaluated at the pixels' errors |[y = c] − p_c|, averaged over classes.

    Cross-entropy weighs every pixel; mean IoU weighs every class, and a class's IoU falls as much from
    its few missed pixels as sky's from thousands, so this term pushes on exactly what the score counts.
    logits N×K×S×S (class 0 never predicted), labels N×S×S; only labelled scene pixels count.
    """
    known = (labels != segmentation.UNLABELED) & (labels != segmentation.NOT_PERSON)
    if not bool(known.any()):
        return logits.sum() * 0
    probabilities = logits[:, 1:].softmax(1).permute(0, 2, 3, 1)[known]
    target = labels[known].long() - 1
    losses = []
    for c in target.unique():
        foreground = (target == c).to(probabilities.dtype)
        errors, order = (foreground - probabilities[:, c]).abs().sort(descending=True)
        losses.append(errors @ _lovasz_jaccard_gradient(foreground[order]))
    return torch.stack(losses).mean()


def _lovasz_jaccard_gradient(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss as the pixels, sorted by error, are counted wrong one by one."""
    total = foreground_sorted.sum()
    intersection = total - foreground_sorted.cumsum(0)
    union = total + (1 - foreground_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def predict(decoder, cache: FeatureCache, idx, label_side: int) -> torch.Tensor:
    # a decoder with its own late blocks recomputes strides 16 and 32 from the cached stride-8 map
    taps = (decoder.tuned_after,) if decoder.tuned_after else TAPS
    logits = decoder(batch_features(cache, idx, taps))
    return F.interpolate(logits, size=(label_side, label_side), mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(decoder, cache: FeatureCache, classes: int, person_id: int, batch: int = 64) -> dict:
    """SIFT Flow pixel accuracy / mIoU (labelled pixels) and person IoU on the people views."""
    decoder.eval()
    matrix = np.zeros((classes, classes), np.int64)
    inter = union = 0
    side = cache.labels.shape[-1]
    for start in range(0, len(cache), batch):
        idx = slice(start, start + batch)
        pred = (predict(decoder, cache, idx, side)[:, 1:].argmax(1) + 1).numpy()
        labels, people = cache.labels[idx].numpy(), cache.people[idx].numpy()
        scene = ~people
        matrix += confusion(pred[scene].reshape(-1), labels[scene].reshape(-1), classes)
        inter += int(((pred[people] == person_id) & (labels[people] == person_id)).sum())
        union += int(((pred[people] == person_id) | (labels[people] == person_id)).sum())
    decoder.train()
    return {**segmentation_scores(matrix), "people_person_iou": inter / max(union, 1)}


def cosine_lr(base: float, step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    classes = read_classes(args.data / "siftflow" / "classes.txt")
    person_id = classes.names.index("person")
    manifest, backbone_id = backbone_weights(args.backbone)
    backbone = load_pretrained(manifest, weight_id=backbone_id)
    config = SegmenterConfig(num_classes=classes.count, width=args.width, dropout=args.dropout,
                             tuned_after=args.tune_after, backbone=backbone.variant.name)
    model = PretrainedSegmenter(config)
    model.backbone.load_state_dict(backbone.state_dict())
    if args.tune_after:
        model.start_tuning_from_backbone()
    model.train()
    log = open(args.out / "log.jsonl", "a")

    def note(text: str) -> None:
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    started = time.perf_counter()
    cache_dir = args.cache or args.out / "cache"
    train_cache = cache_split(model, segmentation.list_photos(args.data, "train"), cache_dir, "train",
                              person_id, args.side, args.label_side, True, note)
    if args.no_people:  # the ablation reads the same cache
        keep = ~train_cache.people
        train_cache = FeatureCache({tap: f[keep] for tap, f in train_cache.features.items()},
                                   train_cache.labels[keep], train_cache.people[keep])
    select_cache = cache_split(model, segmentation.list_photos(args.data, "select"), cache_dir, "select",
                               person_id, args.side, args.label_side, False, note)
    note(json.dumps({"train_views": len(train_cache), "select_views": len(select_cache),
                     "cache_seconds": round(time.perf_counter() - started)}))
    if args.cache_only:
        return
    labelled = train_cache.labels[train_cache.labels != segmentation.NOT_PERSON].numpy()
    weights = class_weights(labelled, classes.count, args.class_balance)
    decoder = model.decoder
    if args.init and not (args.resume and (args.out / "last.pt").exists()):
        initial = torch.load(args.init, map_location="cpu", weights_only=False)["decoder"]
        # a frozen-backbone decoder has no late blocks: those keep the backbone's ImageNet weights
        missing, unexpected = decoder.load_state_dict(initial, strict=False)
        if unexpected or any(not k.startswith("late.") for k in missing):
            raise SystemExit(f"{args.init} does not match this decoder: missing {missing}, unexpected {unexpected}")
        note(json.dumps({"initialised_from": str(args.init)}))
    late = list(decoder.late.parameters()) if args.tune_after else []
    head = [p for p in decoder.parameters() if all(p is not q for q in late)]
    groups = [{"params": head, "rate_scale": 1.0}]
    if late:
        groups.append({"params": late, "rate_scale": args.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    step, best, elapsed = 0, -1.0, 0.0
    last = args.out / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, elapsed = state["step"], state["best"], state["elapsed_s"]
        note(json.dumps({"resumed_at": step}))
    generator = torch.Generator().manual_seed(args.seed + step)
    run_started, running = time.perf_counter(), []
    while step < args.steps and time.perf_counter() - run_started < args.minutes * 60:
        t0 = time.perf_counter()
        idx = torch.randint(0, len(train_cache), (args.batch,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = group["rate_scale"] * cosine_lr(args.lr, step, args.steps)
        logits = predict(decoder, train_cache, idx, args.label_side)
        labels = train_cache.labels[idx]
        loss = segmentation_loss(logits, labels, weights, person_id, args.not_person_weight)
        if args.lovasz > 0:
            # at a quarter of the pixels: one sort per class present, the batch's pixels pooled
            stride = max(1, args.label_side // args.lovasz_side)
            coarse = F.avg_pool2d(logits, stride) if stride > 1 else logits
            loss = loss + args.lovasz * lovasz_softmax(coarse, labels[:, ::stride, ::stride])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        elapsed += time.perf_counter() - t0
        running.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            metrics = evaluate(decoder, select_cache, classes.count, person_id)
            loss_mean = round(float(np.mean(running)), 4)
            note(json.dumps({"step": step, "loss": loss_mean, "train_s": round(elapsed),
                             **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}}))
            running = []
            score = metrics["mean_iou"] + SELECT_PEOPLE_WEIGHT * metrics["people_person_iou"]
            state = {"decoder": decoder.state_dict(), "step": step, "elapsed_s": elapsed, "metrics": metrics,
                     "config": config.to_dict(), "classes": list(classes.names), "args": _plain(vars(args)),
                     "train_views": len(train_cache), "select_views": len(select_cache),
                     "class_weights": weights.tolist()}
            if score > best:
                best = score
                torch.save(state, args.out / "best.pt")
            torch.save({**state, "optimizer": optimizer.state_dict(), "best": best}, last)
    if step >= args.steps and args.prior_adjustment:
        adjust_for_prior(args.out, train_cache, select_cache, classes.count, person_id,
                         tuple(args.prior_adjustment), note)


def adjust_for_prior(out: Path, train_cache: FeatureCache, select_cache: FeatureCache, classes: int,
                     person_id: int, strengths: tuple[float, ...], note=print) -> None:
    """Post-hoc logit adjustment of best.pt (Menon et al., ICLR 2021): class scores minus τ·log(class
    prior in training), τ picked on the select split and folded into the classifier's bias.

    Cross-entropy learns the training prior (here frequency × class weight), and how much of it the argmax
    should keep is a trade between frequent classes (sky, building) and rare ones (sign, pole) that mean
    IoU scores; τ = 0 keeps the network as trained, τ > 0 favours rare classes, τ < 0 frequent ones (on
    SIFT Flow τ < 0 won: the class-balanced loss had over-corrected). Done once after the last step;
    best.pt records the τ and the select scores of every τ tried.
    """
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    if "prior_adjustment" in state:
        return
    labels = train_cache.labels.reshape(-1).long()
    counts = torch.bincount(labels[labels < classes], minlength=classes).double()
    counts[0] = 0
    # the prior the weighted loss taught: class frequency × class weight; unseen classes get no boost
    effective = counts * torch.tensor(state["class_weights"], dtype=torch.float64)
    log_prior = torch.where(counts > 0, torch.log((effective / effective.sum()).clamp_min(1e-12)),
                            torch.zeros_like(effective)).float()
    config = SegmenterConfig.from_dict(state["config"])
    decoder = PretrainedSegmenter(config).decoder
    trained_bias = state["decoder"]["classifier.bias"].clone()
    results = {}
    for tau in strengths:
        state["decoder"]["classifier.bias"] = trained_bias - tau * log_prior
        decoder.load_state_dict(state["decoder"])
        results[tau] = evaluate(decoder, select_cache, classes, person_id)
        note(json.dumps({"prior_adjustment": tau, **results[tau]}))
    tau = max(strengths, key=lambda t: results[t]["mean_iou"] + SELECT_PEOPLE_WEIGHT * results[t][
        "people_person_iou"])
    state["decoder"]["classifier.bias"] = trained_bias - tau * log_prior
    state["metrics"] = results[tau]
    state["prior_adjustment"] = {"tau": tau, "select": {str(t): r for t, r in results.items()}}
    torch.save(state, out / "best.pt")


def _plain(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def export(args: argparse.Namespace) -> Path:
    """best.pt's decoder (with ``--ensemble-with``: and other runs' best decoders) → fp16 weights + manifest
    entry; held-out report; model card."""
    state = torch.load(args.out / "best.pt", map_location="cpu", weights_only=False)
    side = state["args"]["side"]
    # inference options, picked on the select split through the full pipeline (the card gives the numbers)
    config = replace(SegmenterConfig.from_dict(state["config"]), test_flip=args.test_flip,
                     test_scales=tuple(args.test_scales))
    members = [EnsembleMember(args.out, state, config)] + [
        ensemble_member(spec, state["classes"]) for spec in args.ensemble_with]
    for member in members:
        if member.config.backbone != "lite0":
            raise SystemExit(f"{member.folder / 'best.pt'} reads the {member.config.backbone} backbone, which "
                             "weights/ does not ship: register that backbone (and its card) in weights/ before "
                             "exporting a segmenter on it.")
    directory = bundled_weights_dir()
    meta = {"step": str(state["step"]), "select_metrics": json.dumps(state["metrics"])}
    if len(members) > 1:
        path = save_ensemble([m.state["decoder"] for m in members], [m.config for m in members],
                             [m.state["args"]["side"] for m in members], state["classes"], args.export,
                             directory, meta)
    else:
        path = save_decoder(state["decoder"], config, state["classes"], side, args.export, directory, meta)
    state["config"] = config.to_dict()
    print(json.dumps({"exported": str(path), "bytes": path.stat().st_size, "step": state["step"]}),
          flush=True)
    from core.colorization import pipeline

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    exported = pipeline.load_segmenter(device, args.export)
    select = heldout_report(args.data, {args.export: exported}, split="select") if len(members) > 1 else None
    report = heldout_report(args.data, {
        args.export: exported, pipeline.GRIDNET_WEIGHTS: pipeline.load_segmenter(device, pipeline.GRIDNET_WEIGHTS)})
    (args.out / "heldout.json").write_text(json.dumps(report, indent=2) + "\n")
    scales = " ".join(map(str, args.test_scales))
    flags = ("--test-flip " if args.test_flip else "") + f"--test-scales {scales}" + "".join(
        f" --ensemble-with {spec}" for spec in args.ensemble_with)
    (directory / f"{args.export}.md").write_text(model_card(args.export, state, path, report, flags,
                                                            members[1:], select))
    print(json.dumps({k: v["siftflow"]["mean_iou"] for k, v in report["segmenters"].items()}), flush=True)
    return path


@dataclass
class EnsembleMember:
    folder: Path  # the training run (--out) whose best.pt this is
    state: dict  # its best.pt
    config: SegmenterConfig  # with the test scales it runs at (relative to its own view side)


def ensemble_member(spec: str, classes: list[str]) -> EnsembleMember:
    """``FOLDER[:SCALE,SCALE...]`` → that run's best decoder and the input scales it averages, relative to
    the run's own view side (a decoder trained on 384² views at 1.0 reads the photo at 384²)."""
    folder, _, scales = spec.partition(":")
    path = Path(folder) / "best.pt"
    if not path.is_file():
        raise SystemExit(f"--ensemble-with {spec}: {path} does not exist (train that run first).")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["classes"] != classes:
        raise SystemExit(f"{path} was trained on other classes than the first member: it cannot join it.")
    own = tuple(float(s) for s in scales.split(",")) if scales else (1.0,)
    return EnsembleMember(Path(folder), state, replace(SegmenterConfig.from_dict(state["config"]), test_flip=False,
                                                       test_scales=own))


def save_ensemble(decoder_states: list[dict[str, torch.Tensor]], configs: list[SegmenterConfig],
                  input_sizes: list[int], classes: list[str], weight_id: str, directory: Path,
                  metadata: dict[str, str] | None = None) -> Path:
    """Several decoders as one fp16 file (keys ``<member>.<decoder key>``, ``SegmenterEnsemble.decoders``'
    state), registered as model "segmenter-ensemble" with each member's config and input size (the
    first member's is the ensemble's)."""
    tensors = {f"{i}.{k}": v for i, state in enumerate(decoder_states) for k, v in state.items()}
    members = [dict(c.to_dict(), input_size=int(size)) for c, size in zip(configs, input_sizes, strict=True)]
    return _save_registered(tensors, "segmenter-ensemble", {"members": members, "classes": list(classes),
                                                             "input_size": int(input_sizes[0])},
                            weight_id, directory, metadata)


def save_decoder(decoder_state: dict[str, torch.Tensor], config: SegmenterConfig, classes: list[str],
                 input_size: int, weight_id: str, directory: Path,
                 metadata: dict[str, str] | None = None) -> Path:
    """The decoder as fp16 ``<directory>/<weight_id>.safetensors``, registered in that manifest (the frozen
    backbone is not repeated: it ships once as efficientnet-lite0-imagenet)."""
    return _save_registered(decoder_state, "segmenter", dict(config.to_dict(), classes=list(classes),
                                                              input_size=input_size),
                            weight_id, directory, metadata)


def _save_registered(tensors: dict[str, torch.Tensor], model: str, config: dict, weight_id: str, directory: Path,
                     metadata: dict[str, str] | None) -> Path:
    """``tensors`` (BatchNorm counters left out) as fp16 ``<directory>/<weight_id>.safetensors``, registered
    in that folder's manifest with ``model`` and ``config`` and the card ``<weight_id>.md``."""
    path = Path(directory) / f"{weight_id}.safetensors"
    kept = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    save_tensors(path, kept, half=True, metadata={"model": model, **(metadata or {})})
    register_weights(path, weight_id, model, config, card=f"{weight_id}.md", directory=directory)
    return path


def segmentation_scores(matrix: np.ndarray, names: tuple[str, ...] | list[str] | None = None) -> dict:
    """The SIFT Flow score as FCN (Long et al., CVPR 2015) reports it, the one definition every number of
    this segmenter uses (training's select split, the card's held-out split, the colorization bench).

    ``matrix``: one confusion matrix (rows: truth, columns: prediction) accumulated over *all* images of
    the split at the label resolution, unlabeled pixels (id 0) not scored. IoU = TP / (TP + FP + FN) of
    each labelled class whose union is nonzero (in the ground truth or predicted), mean IoU = their
    mean; pixel accuracy = correct / scored pixels. Per-image averages or a subset of the images give
    other numbers (a 87-image subset of the 243 held-out photos read 0.370 where all 243 read 0.334).
    With ``names``, also the per-class IoU by name.
    """
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    scored = union > 0
    scored[0] = False  # 'unlabeled' is neither scored nor predicted
    iou = tp[scored] / union[scored]
    result = {"pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)),
              "mean_iou": float(iou.mean()) if iou.size else 0.0, "classes_scored": int(scored.sum())}
    if names is not None:
        result["per_class_iou"] = {names[c]: round(float(tp[c] / union[c]), 4) for c in np.flatnonzero(scored)}
    return result


def per_class_iou(matrix: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """IoU of each scored class (``segmentation_scores``' definition) by name."""
    return segmentation_scores(matrix, names)["per_class_iou"]


def heldout_report(data_root: str | Path, segmenters: dict, limit: int = 0, split: str = "heldout") -> dict:
    """Each segmenter through the full-resolution pipeline on the 'heldout' photos (or another split):
    SIFT Flow pixel accuracy, mIoU and per-class IoU (``segmentation_scores``: one confusion matrix over all
    the split's SIFT Flow photos at their 256² label resolution); person IoU on the people photos of the
    split (every pixel scored, accumulated over the photos). The colorization bench reports these too."""
    from core.colorization import pipeline

    photos = segmentation.list_photos(data_root, split)
    scene = [p for p in photos if not p.is_people][:limit or None]
    people = [p for p in photos if p.is_people][:limit or None]
    result = {"split": f"{split} (10% of each source by file-name hash; the SIFT Flow test split is not in "
                       "../shared/datasets)", "siftflow_images": len(scene), "people_images": len(people),
              "segmenters": {}}
    for name, segmenter in segmenters.items():
        names = segmenter.classes
        person_id = names.index("person")
        matrix = np.zeros((len(names), len(names)), np.int64)
        started = time.perf_counter()
        for photo in scene:
            rgb, labels = segmentation.photo_labels(photo, person_id)
            ids, _ = pipeline.segment(pipeline.image_lightness(rgb)[0], segmenter)
            matrix += confusion(ids.reshape(-1), labels.reshape(-1), len(names))
        seconds = time.perf_counter() - started
        siftflow = segmentation_scores(matrix, names)
        inter = total = 0
        for photo in people:
            rgb, labels = segmentation.photo_labels(photo, person_id)
            ids, _ = pipeline.segment(pipeline.image_lightness(rgb)[0], segmenter)
            inter += int(((ids == person_id) & (labels == person_id)).sum())
            total += int(((ids == person_id) | (labels == person_id)).sum())
        result["segmenters"][name] = {
            "siftflow": {**{k: round(v, 4) if isinstance(v, float) else v for k, v in siftflow.items()},
                         "seconds_per_image": round(seconds / max(1, len(scene)), 3)},
            "people_person_iou": round(inter / max(total, 1), 4)}
    return result


def training_command(args: dict) -> str:
    """The training command line of a run, from its recorded arguments: every training option that differs
    from its default (and the always-listed ones), so the line reproduces the run."""
    defaults = vars(parse_args([]))
    flags = [f"--data {args['data']} --out {args['out']}"]
    for name in RECIPE_OPTIONS:
        value = args.get(name, defaults[name])
        if (name == "lovasz_side" and not args.get("lovasz")) or (
                name == "backbone_lr_scale" and not args.get("tune_after")):
            continue
        if value in (None, "", False) or (name not in ALWAYS_LISTED and str(value) == str(defaults[name])):
            continue
        option = "--" + name.replace("_", "-")
        if value is True:
            flags.append(option)
        else:
            flags.append(f"{option} {' '.join(map(str, value)) if isinstance(value, list | tuple) else value}")
    return "python -m core.training.segmenter " + " ".join(flags) + " [--resume]"


def recipe_commands(state: dict) -> list[str]:
    """The commands that trained this checkpoint: those of the runs it was initialised from (``--init``,
    followed while their checkpoints are on disk), then its own."""
    init = state["args"].get("init")
    earlier = []
    if init and Path(init).is_file():
        earlier = recipe_commands(torch.load(init, map_location="cpu", weights_only=False))
    return earlier + [training_command(state["args"])]


def member_text(number: int, member: EnsembleMember) -> str:
    """One line of a card on an ensemble member: how it was trained, how it was picked, how it runs."""
    args, state = member.state["args"], member.state
    tuned = (f"own late blocks after {args['tune_after']} fine-tuned at {args['backbone_lr_scale']} × its rate"
             if args.get("tune_after") else "frozen backbone")
    metrics = state["metrics"]
    return (f"- Member {number} (`{member.folder}`): decoder on {args['side']}² views ({tuned}), loss at "
            f"{args['label_side']}², lr {args['lr']}, {args['steps']} steps, best select score at step "
            f"{state['step']}, τ = {state.get('prior_adjustment', {}).get('tau', 0.0)}; select (cached views) "
            f"mIoU {metrics['mean_iou']:.4f}, person IoU {metrics['people_person_iou']:.4f}; "
            f"{state['elapsed_s'] / 60:.1f} min of step time; reads the photo at about {args['side']}² "
            f"(`test_scales` {list(member.config.test_scales)}).")


def model_card(weight_id: str, state: dict, path: Path, report: dict, export_flags: str = "",
               members: list[EnsembleMember] | tuple = (), select: dict | None = None) -> str:
    args, ours = state["args"], report["segmenters"][weight_id]
    others = {k: v for k, v in report["segmenters"].items() if k != weight_id}
    rows = ["| class | " + " | ".join([weight_id, *others]) + " |", "|---|" + "---|" * (1 + len(others))]
    for name in ours["siftflow"]["per_class_iou"]:
        values = [ours["siftflow"]["per_class_iou"][name]] + [o["siftflow"]["per_class_iou"].get(name, 0.0)
                                                               for o in others.values()]
        rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    summary = ["| segmenter | pixel accuracy | mIoU | person IoU (SIFT Flow) | person IoU (people photos) | "
               "s / 256² image |", "|---|---|---|---|---|---|"]
    for name, r in report["segmenters"].items():
        s = r["siftflow"]
        summary.append(f"| {name} | {s['pixel_accuracy']:.3f} | {s['mean_iou']:.3f} | "
                       f"{s['per_class_iou'].get('person', 0.0):.3f} | {r['people_person_iou']:.3f} | "
                       f"{s['seconds_per_image']:.2f} |")
    tried = state.get("prior_adjustment", {"tau": 0.0, "select": {}})
    adjustment = f"τ = {tried['tau']}" + "".join(
        f"; τ {t}: mIoU {r['mean_iou']:.3f}, pixel acc. {r['pixel_accuracy']:.3f}"
        for t, r in tried["select"].items())
    # each run once, in training order (a member started from another member's run lists that run first)
    command = "\n".join(dict.fromkeys([
        *recipe_commands(state), *(line for m in members for line in recipe_commands(m.state)),
        f"python -m core.training.segmenter --data {args['data']} --out {args['out']} "
        f"--export {weight_id} {export_flags}".rstrip()]))
    lovasz_text = (f", plus {args['lovasz']} × the Lovász-softmax IoU term at {args['lovasz_side']}²"
                   if args.get("lovasz") else "")
    if args.get("init"):
        lovasz_text += f"; the decoder started from `{args['init']}` (fine-tuning)"
    if args.get("tune_after"):
        lovasz_text += (f"; the backbone blocks after the {args['tune_after']} tap (the segmenter's own copy, "
                        f"from ImageNet's weights, BatchNorm statistics kept) trained at "
                        f"{args['backbone_lr_scale']} × the decoder's rate, from the cached {args['tune_after']} "
                        "features")
        backbone_text = (f"the frozen ImageNet EfficientNet-Lite0 (`efficientnet-lite0-imagenet`, shipped once, "
                         f"loaded beside this file) up to its {args['tune_after']} tap on the gray photo replicated "
                         "to RGB, then this segmenter's own fine-tuned copy of the later blocks (strides 16 and "
                         "32; other models keep the frozen ones), and a trained FPN-style decoder (strides 8/16/32 "
                         "+ image-level context → class scores at stride 8, bilinear to the input size). This file "
                         "holds the late blocks and the decoder")
    else:
        backbone_text = ("the frozen ImageNet EfficientNet-Lite0 (`efficientnet-lite0-imagenet`, shipped once, "
                         "loaded beside this file) on the gray photo replicated to RGB, and a trained FPN-style "
                         "decoder (strides 8/16/32 + image-level context → class scores at stride 8, bilinear to "
                         "the input size). This file holds the decoder only")
    kind, ensemble_text, whose = "segmenter", "", ""
    decoder_name, of_member = ("member 1's", " of member 1") if members else ("the exported", "")
    features_intro = "Member 1's training: backbone" if members else "Backbone"
    if members:
        whose = "member 1: "  # the recipe text below describes member 1; the others have a line each
        kind = "segmenter-ensemble"
        backbone_text = (f"an ensemble of {1 + len(members)} decoders on the one frozen backbone, their class "
                         "probabilities averaged (`SegmenterEnsemble`; each member's own test scales averaged "
                         f"first). Member 1 (`{args['out']}`): {backbone_text}; the other members' decoders too")
        ensemble_text = "\n\n" + "\n".join(member_text(k, m) for k, m in enumerate(members, start=2))
        if select:
            scored = select["segmenters"][weight_id]
            ensemble_text += (f"\nThe ensemble through the full pipeline on the select split: SIFT Flow mIoU "
                              f"{scored['siftflow']['mean_iou']:.4f}, pixel accuracy "
                              f"{scored['siftflow']['pixel_accuracy']:.4f}, person IoU on people photos "
                              f"{scored['people_person_iou']:.4f}.")
    return f"""# {weight_id}

Semantic segmentation of a gray photo (`core/models/segmenter.py`, model `{kind}`): {backbone_text}:
{path.stat().st_size / 1e6:.2f} MB fp16, {whose}config `{json.dumps(state['config'])}`, input about
{args['side']}² pixels (aspect kept). The default segmenter of `segment` and of colorization's predicted
map; GridNet from scratch (`gridnet-siftflow`) stays selectable (`--segmenter gridnet`).

## Data and terms
- SIFT Flow (Liu, Yuen, Torralba, CVPR 2009; LabelMe images; research use): 256² outdoor photos, 33 classes.
- People (person class only): Clothing Co-Parsing (`people/ccp`, Yang, Luo, Lin, CVPR 2014; Apache-2.0
  repository, street-fashion web photos, research use) — its pixels outside the person are taught *not
  person*; COCO train2017 photos with people (`people/coco128-seg`; annotations CC BY 4.0, images under
  their Flickr licences) — pixels outside the coarse polygons carry no label.
- The ImageNet backbone's terms (`efficientnet-lite0-imagenet.md`). These weights inherit all of them:
  research use.

Splits by a hash of each file name: 10 % **heldout** (reported below; SIFT Flow's are the 243 images the
colorization bench calls validation; the standard 200-image SIFT Flow test split is not in
`../shared/datasets`), 10 % **select** (picks the checkpoint), 80 % train. Training views: every train
photo in gray, SIFT Flow's also mirrored; people photos once (the top square of a portrait):
{state['train_views']} views; select {state['select_views']} views.

## Recipe
```
{command}
```
{features_intro} features of every view cached once (`--cache`); training reads the cache:
AdamW lr {args['lr']}
(cosine), weight decay {args['weight_decay']}, batch {args['batch']}, {args['steps']} steps, loss at
{args['label_side']}², cross-entropy weighted by (median / class frequency)^{args['class_balance']}
clipped to [0.1, 10], plus −log(1 − p(person)) on Clothing Co-Parsing's non-person pixels (weight
{args['not_person_weight']}){lovasz_text}.
Best select score (SIFT Flow mIoU + {SELECT_PEOPLE_WEIGHT} × people person IoU) at step {state['step']};
then the logit adjustment (class scores − τ·log training prior, folded into the classifier's bias)
with τ picked on select: {adjustment}.
Select scores of {decoder_name} decoder: `{json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in state['metrics'].items()})}`.
Decoder training time {state['elapsed_s'] / 60:.1f} min (step time, after the feature cache) on
{platform.machine()} CPU shared with other work, {args['threads']} thread(s), no GPU.
Inference{of_member}: config `test_flip` {state['config'].get('test_flip', False)}, `test_scales`
{list(state['config'].get('test_scales', [1.0]))} (scores averaged over the mirrored and rescaled photo).{ensemble_text}

## Held-out metrics (full-resolution pipeline, `pipeline.segment`)
{report['siftflow_images']} SIFT Flow photos at their 256² label resolution; mIoU as FCN reports SIFT Flow
(`segmentation_scores`): one confusion matrix accumulated over all {report['siftflow_images']} photos,
unlabeled pixels not scored, IoU of each class with a nonzero union (in the truth or predicted), mIoU their
mean. The colorization bench reports the same function on the same photos. {report['people_images']} people
photos: person IoU against their masks, every pixel scored, accumulated over the photos.

{chr(10).join(summary)}

Per-class IoU on the held-out SIFT Flow photos (classes with a nonzero union):

{chr(10).join(rows)}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"),
                   help="folder holding siftflow/, people/ccp and people/coco128-seg")
    p.add_argument("--out", type=Path, default=Path("runs/segmenter"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cache-only", action="store_true",
                   help="build (or complete) the feature cache of the train and select splits, then stop")
    p.add_argument("--cache", type=Path, help="feature cache folder (default: --out/cache); runs of one "
                                              "backbone share one")
    p.add_argument("--backbone", default="lite0",
                   help="ImageNet EfficientNet-Lite to read: lite0 (the shipped one), lite2 (converted into "
                        "runs/lite2 by core.training.efficientnet_lite --variant lite2), or a folder / "
                        ".safetensors file with its manifest.json")
    p.add_argument("--side", type=int, default=256, help="views are side² (the model's input size)")
    p.add_argument("--label-side", type=int, default=128, help="the loss is computed at this size")
    p.add_argument("--width", type=int, default=96, help="decoder channels")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=1e9, help="stop this run after so many minutes")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--class-balance", type=float, default=0.5,
                   help="loss weight power on median/class frequency (0 = plain cross-entropy)")
    p.add_argument("--not-person-weight", type=float, default=1.0)
    p.add_argument("--no-people", action="store_true", help="ablation: SIFT Flow only")
    p.add_argument("--lovasz", type=float, default=0.0, help="weight of the Lovász-softmax (IoU) term")
    p.add_argument("--lovasz-side", type=int, default=64, help="the Lovász term is computed at this size")
    p.add_argument("--init", type=Path, help="start the decoder from this checkpoint's (fine-tuning)")
    p.add_argument("--tune-after", choices=["", "stride8"], default="",
                   help="fine-tune the backbone blocks after this tap (a copy the segmenter ships), from the "
                        "cached tap; default: frozen backbone")
    p.add_argument("--backbone-lr-scale", type=float, default=0.2,
                   help="the tuned backbone blocks' learning rate as a fraction of the decoder's")
    p.add_argument("--prior-adjustment", type=float, nargs="*", default=[-1.0, -0.75, -0.5, -0.25, 0.0, 0.5],
                   help="logit-adjustment strengths τ tried on the select split after training (none: skip)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-flip", action="store_true",
                   help="export: the model averages its scores over the photo and its mirror image")
    p.add_argument("--test-scales", type=float, nargs="+", default=[1.0],
                   help="export: input scales whose scores the model averages (1 = --side²)")
    p.add_argument("--ensemble-with", nargs="+", default=[], metavar="FOLDER[:SCALES]",
                   help="export: also these runs' best decoders, their class probabilities averaged with "
                        "--out's; each reads the photo at its own --side (SCALES: comma-separated input scales "
                        "relative to that side, default 1)")
    p.add_argument("--export", metavar="WEIGHT_ID",
                   help="export best.pt into weights/, score it on the heldout split, write the card")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
