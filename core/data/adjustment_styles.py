"""Training pairs for SA-AdjustNet: the three local effects of Yan et al. (*Automatic Photo Adjustment
Using Deep Neural Networks*, TOG 2016), generated deterministically from public datasets.

Yan et al.'s 115 retouched photos are not available here, so the effects are rebuilt as that paper
describes them, each a fixed, documented function of the photo and its annotation:

**Foreground Pop-Out** (``pop-out``): salient foreground objects gain contrast (×1.35 around the
foreground's mean L), brightness (+4 L) and saturation (chroma ×1.4); the background loses contrast
(×0.7 around its mean L), brightness (−6 L) and saturation (chroma ×0.45). The two are blended with the
object mask feathered by a Gaussian of σ = 1 % of the image diagonal. Masks: ``davis/train/masks``
(0/255 object masks) and ``bsds500`` segmentations, where the foreground is every segment of the first
annotator that covers ≥ 1 % of the image and touches ≤ 10 % of the image border (if none does, the
segment nearest the centre).

**Local Xpro** (``xpro``): a cross-processing look — per-channel sRGB curves: red and green S-curves,
blue compressed to [0.12, 0.88] (blue shadows, yellow highlights) — then a brightness / contrast /
colour profile per semantic class group of the ``siftflow`` labels (sky, vegetation, water,
built structures, terrain, living things and vehicles; unlabeled pixels keep the cross-processed
colour), blended with class masks feathered by σ = 0.5 % of the diagonal. See ``XPRO_PROFILES``.

**Watercolor** (``watercolor``): a superpixel brush — SLIC superpixels (region ≈ short side / 20,
compactness 10, 4 iterations, computed here in NumPy) whose mean Lab colour is laid over the photo at
65 % with darkened superpixel borders (pigment pooling, −10 L), then Foreground Pop-Out on top.

Splits are by a CRC32 hash of the image id (of the sequence name for DAVIS, whose frames are
near-duplicates): about 12 % of ids are held out for evaluation, the same on every machine.

``read_paired_folder`` reads photos already retouched by a person in the paired-folder layout of
Yan et al.'s release: ``<root>/{input,original,source}/<id>.*`` beside
``<root>/{output,target,retouched,<style>}/<id>.*``, matched by file stem (the folder names of the
original release could not be checked here, so the common ones are accepted).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.imaging.color import lab_to_rgb, rgb_to_lab
from core.imaging.io import load_image, load_mask, to_float
from core.protocol import bad_input

STYLES = ("pop-out", "xpro", "watercolor")
HELD_OUT_PERCENT = 12
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One source photo and its annotation: an object mask (pop-out, watercolor) or class labels (xpro)."""

    key: str  # split key: "<dataset>/<sequence>" for DAVIS, "<dataset>/<image id>" otherwise
    name: str
    image: Path
    annotation: Path
    kind: str  # "davis", "bsds", "siftflow"


def is_held_out(key: str) -> bool:
    return zlib.crc32(key.encode()) % 100 < HELD_OUT_PERCENT


# --- sources ----------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def list_samples(datasets: str | Path, style: str) -> list[Sample]:
    """Every usable photo for ``style`` under the datasets root (``../shared/datasets``)."""
    root = Path(datasets)
    samples: list[Sample] = []
    if style in ("pop-out", "watercolor"):
        for image in _images(root / "davis" / "train" / "images"):
            mask = root / "davis" / "train" / "masks" / (image.stem + ".png")
            if mask.exists():
                sequence = image.stem.rsplit("_", 1)[0]
                samples.append(Sample("davis/" + sequence, image.stem, image, mask, "davis"))
        for split in ("train", "val"):
            for image in _images(root / "bsds500" / split / "images"):
                seg = root / "bsds500" / split / "segments" / (image.stem + ".png")
                if seg.exists():
                    samples.append(Sample("bsds/" + image.stem, image.stem, image, seg, "bsds"))
    elif style == "xpro":
        for image in _images(root / "siftflow" / "train" / "images"):
            labels = root / "siftflow" / "train" / "labels" / (image.stem + ".png")
            if labels.exists():
                samples.append(Sample("siftflow/" + image.stem, image.stem, image, labels, "siftflow"))
    else:
        raise bad_input(f"Unknown style '{style}'; choose one of {', '.join(STYLES)}.")
    if not samples:
        raise bad_input(f"No source photos for style '{style}' under {root} (expected davis/, bsds500/ or "
                        "siftflow/ as described in datasets/README.md).")
    return samples


def bsds_foreground(segments: np.ndarray) -> np.ndarray:
    """Salient objects of a BSDS segmentation: segments covering ≥ 1 % of the image and touching ≤ 10 % of
    the image border; if none qualifies, the segment closest to the image centre."""
    h, w = segments.shape
    border = np.concatenate([segments[0], segments[-1], segments[1:-1, 0], segments[1:-1, -1]])
    ids, areas = np.unique(segments, return_counts=True)
    border_ids, border_counts = np.unique(border, return_counts=True)
    touch = dict(zip(border_ids.tolist(), (border_counts / border.size).tolist(), strict=True))
    chosen = [i for i, a in zip(ids.tolist(), areas.tolist(), strict=True)
              if a >= 0.01 * h * w and touch.get(i, 0) <= 0.1]
    if not chosen:
        ys, xs = np.mgrid[0:h, 0:w]
        dist = ((ys - h / 2) / h) ** 2 + ((xs - w / 2) / w) ** 2
        counts = np.bincount(segments.ravel())
        means = np.bincount(segments.ravel(), weights=dist.ravel()) / np.maximum(counts, 1)
        present = counts > 0
        chosen = [int(np.argmin(np.where(present, means, np.inf)))]
    return np.isin(segments, chosen).astype(np.float32)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(sRGB float H×W×3, annotation: object mask float H×W or class ids uint8 H×W)."""
    rgb = to_float(load_image(sample.image))[..., :3]
    if sample.kind == "davis":
        annotation = (load_mask(sample.annotation) > 127).astype(np.float32)
    elif sample.kind == "bsds":
        from PIL import Image

        segments = np.asarray(Image.open(sample.annotation)).astype(np.int64)
        annotation = bsds_foreground(segments)
    else:
        from PIL import Image

        annotation = np.asarray(Image.open(sample.annotation)).astype(np.uint8)
    if annotation.shape[:2] != rgb.shape[:2]:
        interp = cv2.INTER_NEAREST
        annotation = cv2.resize(annotation, (rgb.shape[1], rgb.shape[0]), interpolation=interp)
    return rgb, annotation


# --- effects ---------------------------------------------------------------------------------


def _feather(mask: np.ndarray, fraction: float) -> np.ndarray:
    h, w = mask.shape[:2]
    sigma = max(0.5, fraction * float(np.hypot(h, w)))
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def _tone(lab: np.ndarray, weight: np.ndarray, contrast: float, brightness: float, chroma: float,
          da: float = 0.0, db: float = 0.0) -> np.ndarray:
    """Contrast around the region's weighted mean L, brightness offset, chroma gain and a/b shift."""
    mean_l = float((lab[..., 0] * weight).sum() / max(float(weight.sum()), 1e-6))
    out = np.empty_like(lab)
    out[..., 0] = mean_l + contrast * (lab[..., 0] - mean_l) + brightness
    out[..., 1] = lab[..., 1] * chroma + da
    out[..., 2] = lab[..., 2] * chroma + db
    return out


def pop_out(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    soft = _feather(mask, 0.01)[..., None]
    fg = _tone(lab, soft[..., 0], contrast=1.35, brightness=4.0, chroma=1.4)
    bg = _tone(lab, 1 - soft[..., 0], contrast=0.7, brightness=-6.0, chroma=0.45)
    out = soft * fg + (1 - soft) * bg
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    return lab_to_rgb(out)


# (contrast, brightness ΔL, chroma gain, Δa, Δb) per class group; SIFT Flow ids from classes.txt.
XPRO_PROFILES: dict[str, tuple[tuple[int, ...], tuple[float, float, float, float, float]]] = {
    "sky": ((28, 16, 31), (1.1, -8.0, 1.4, -4.0, -10.0)),
    "vegetation": ((32, 15, 14, 19), (1.15, 5.0, 1.3, -8.0, 8.0)),
    "water": ((25, 21), (1.2, -3.0, 1.3, -6.0, -12.0)),
    "built": ((6, 22, 26, 1, 2, 5, 10, 12, 13, 20, 27, 29, 30, 33), (1.3, 0.0, 0.7, 3.0, 6.0)),
    "terrain": ((17, 23, 24, 11), (1.25, 3.0, 1.2, 6.0, 10.0)),
    "living-and-vehicles": ((18, 3, 9, 4, 7, 8), (1.1, 8.0, 1.15, 4.0, 2.0)),
}


def cross_process(rgb: np.ndarray) -> np.ndarray:
    """Cross-processing curves in sRGB: S-curves on red and green, blue range compressed."""
    def s_curve(x, k):
        return np.clip(x + k * x * (1 - x) * (2 * x - 1), 0, 1)

    out = np.empty_like(rgb)
    out[..., 0] = s_curve(rgb[..., 0], 0.9)
    out[..., 1] = s_curve(rgb[..., 1], 0.5)
    out[..., 2] = 0.12 + 0.76 * rgb[..., 2]
    return out


def local_xpro(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(cross_process(rgb))
    out = lab.copy()
    remaining = np.ones(labels.shape, np.float32)
    for ids, profile in XPRO_PROFILES.values():
        weight = _feather(np.isin(labels, ids).astype(np.float32), 0.005)
        if float(weight.max()) <= 1e-3:
            continue
        toned = _tone(lab, weight, *profile)
        out += weight[..., None] * (toned - lab)
        remaining -= weight
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    return lab_to_rgb(out)


def slic(lab: np.ndarray, region: int, compactness: float = 10.0, iterations: int = 4) -> np.ndarray:
    """SLIC superpixels (Achanta et al., TPAMI 2012) in Lab: each pixel joins the nearest of the 3×3
    neighbouring grid centres in colour + scaled position. Returns H×W int labels."""
    h, w = lab.shape[:2]
    gh, gw = max(1, round(h / region)), max(1, round(w / region))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cell_y = np.minimum((ys * gh / h).astype(np.int64), gh - 1)
    cell_x = np.minimum((xs * gw / w).astype(np.int64), gw - 1)
    cy = ((np.arange(gh) + 0.5) * h / gh).astype(np.int64)
    cx = ((np.arange(gw) + 0.5) * w / gw).astype(np.int64)
    feats = np.concatenate([ys[..., None], xs[..., None], lab], -1).reshape(-1, 5)
    centers = np.concatenate([np.repeat(cy, gw)[:, None], np.tile(cx, gh)[:, None],
                              lab[cy][:, cx].reshape(-1, 3)], 1).astype(np.float32)
    spatial = (compactness / region) ** 2
    labels = (cell_y * gw + cell_x).ravel()
    for _ in range(iterations):
        best = np.full(h * w, np.inf, np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                idx = (np.clip(cell_y + dy, 0, gh - 1) * gw + np.clip(cell_x + dx, 0, gw - 1)).ravel()
                c = centers[idx]
                d = ((feats[:, 2:] - c[:, 2:]) ** 2).sum(1)
                d += spatial * ((feats[:, :2] - c[:, :2]) ** 2).sum(1)
                better = d < best
                best[better], labels[better] = d[better], idx[better]
        counts = np.bincount(labels, minlength=gh * gw)
        for ch in range(5):
            sums = np.bincount(labels, weights=feats[:, ch], minlength=gh * gw)
            centers[:, ch] = np.where(counts > 0, sums / np.maximum(counts, 1), centers[:, ch])
    return labels.reshape(h, w)


def superpixel_brush(rgb: np.ndarray) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    region = max(4, min(rgb.shape[:2]) // 20)
    labels = slic(lab, region)
    counts = np.maximum(np.bincount(labels.ravel()), 1)
    means = np.stack([np.bincount(labels.ravel(), weights=lab[..., c].ravel()) / counts
                      for c in range(3)], -1)
    painted = 0.65 * means[labels] + 0.35 * lab
    edges = np.zeros(labels.shape, np.float32)
    edges[:-1] += labels[:-1] != labels[1:]
    edges[:, :-1] += labels[:, :-1] != labels[:, 1:]
    edges = cv2.GaussianBlur(np.minimum(edges, 1), (0, 0), 1.0)
    painted[..., 0] = np.clip(painted[..., 0] - 10.0 * edges, 0, 100)
    return lab_to_rgb(painted.astype(np.float32))


def watercolor(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return pop_out(superpixel_brush(rgb), mask)


def render(style: str, rgb: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """The target photo (sRGB float H×W×3) of ``style`` for ``rgb`` and its annotation."""
    effects: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "pop-out": pop_out, "xpro": local_xpro, "watercolor": watercolor}
    if style not in effects:
        raise bad_input(f"Unknown style '{style}'; choose one of {', '.join(STYLES)}.")
    return effects[style](rgb.astype(np.float32), annotation)


def parse_labels(style: str, annotation: np.ndarray) -> np.ndarray:
    """Labels of the multi-task scene-parsing head: foreground/background for the object-mask effects,
    SIFT Flow classes for Local Xpro (0 = unlabeled, ignored by the loss)."""
    if style == "xpro":
        return annotation.astype(np.uint8)
    return (annotation > 0.5).astype(np.uint8) + 1  # 1 = background, 2 = foreground; 0 stays "ignore"


def pairs(datasets: str | Path, style: str, held_out: bool) -> Iterator[tuple[Sample, np.ndarray, np.ndarray,
                                                                                np.ndarray]]:
    """(sample, input sRGB, target sRGB, parse labels) for the train (held_out=False) or held-out split."""
    for sample in list_samples(datasets, style):
        if is_held_out(sample.key) != held_out:
            continue
        rgb, annotation = load_sample(sample)
        yield sample, rgb, render(style, rgb, annotation), parse_labels(style, annotation)


def read_paired_folder(root: str | Path, style: str | None = None) -> list[tuple[str, Path, Path]]:
    """(id, input, retouched) triples from a paired folder (Yan et al.'s layout, see module docstring)."""
    root = Path(root)
    inputs = next((root / n for n in ("input", "original", "source") if (root / n).is_dir()), None)
    names = ("output", "target", "retouched") + ((style,) if style else ())
    outputs = next((root / n for n in names if (root / n).is_dir()), None)
    if inputs is None or outputs is None:
        raise bad_input(f"{root} does not hold paired folders: expected input/ (or original/, source/) and "
                        f"output/ (or target/, retouched/{', ' + style + '/' if style else ''}).")
    targets = {p.stem: p for p in _images(outputs)}
    found = [(p.stem, p, targets[p.stem]) for p in _images(inputs) if p.stem in targets]
    if not found:
        raise bad_input(f"No file in {inputs} has a partner of the same name in {outputs}.")
    return found
