"""Training pairs for SA-AdjustNet: the three local effects of Yan et al. (*Automatic Photo Adjustment
Using Deep Neural Networks*, TOG 2016), generated deterministically from public datasets.

Yan et al.'s 115 retouched photos are not available here, so the effects are rebuilt as that paper
describes them, each a fixed, documented function of the photo and its annotation:

**Foreground Pop-Out** (``pop-out``): salient foreground objects gain contrast (×1.35 around the
foreground's mean L), brightness (+4 L) and saturation (chroma ×1.4); the background loses contrast
(×0.7 around its mean L), brightness (−6 L) and saturation (chroma ×0.45). The two are blended with the
object mask feathered by a Gaussian of σ = 1 % of the image diagonal. Foregrounds are real object masks
drawn by people: ``davis/train/masks`` (DAVIS 2016 objects), ``people/coco128-seg/masks`` (people in COCO
scenes), ``people/ccp/masks`` (street-fashion photos; a third of them, picked by hash, so one source does
not swamp the others) and ``harmonization/photos-with-masks`` (HFlickr objects).

**Local Xpro** (``xpro``): a cross-processing look — per-channel sRGB curves: red and green S-curves,
blue compressed to [0.12, 0.88] (blue shadows, yellow highlights) — then a brightness / contrast /
colour profile per semantic class group of the ``siftflow`` labels (sky, vegetation, water,
built structures, terrain, living things and vehicles; unlabeled pixels keep the cross-processed
colour), blended with class masks feathered by σ = 0.5 % of the diagonal. See ``XPRO_PROFILES``.

**Watercolor** (``watercolor``): a superpixel brush — SLIC superpixels (region ≈ short side / 20,
compactness 10, 4 iterations, computed here in NumPy on a copy of at most 512 px) whose mean Lab colour
is laid over the photo at 65 % with darkened superpixel borders (pigment pooling, −10 L) — then a colour
wash of its own on the same object masks as Pop-Out: the object keeps its contrast (×1.05), gets lighter
(+6 L) and a little more saturated (×1.15); the ground turns pale like wet paper (contrast ×0.75, +12 L,
chroma ×0.6, warm tint Δb +4). The brush is a fixed procedure, applied again at inference
(``network_input``); the network learns only the colour part, from the brushed photo to the target.

Splits are by a CRC32 hash of the image id (of the sequence name for DAVIS, whose frames are
near-duplicates), the same on every machine: about 12 % of ids are the *report* split (the bench),
10 % the *select* split (checkpoint selection), the rest *train*. SIFT Flow images whose id hashes into
the *parse* pool (25 %, an independent hash) are kept out of Local Xpro and serve only as the scene-parsing
task's labelled images (Eq. 9), for every style.

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
SPLITS = ("train", "select", "report")
HELD_OUT_PERCENT = 12  # the report split
SELECT_PERCENT = 10
PARSE_PERCENT = 25  # SIFT Flow ids used only for scene parsing
CCP_PERCENT = 33  # share of people/ccp used (1 003 photos of one kind would outweigh the other sources)
BRUSH_MAX_SIDE = 512
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One source photo and its annotation: an object mask (pop-out, watercolor) or class labels (xpro)."""

    key: str  # split key: "<dataset>/<sequence>" for DAVIS, "<dataset>/<image id>" otherwise
    name: str
    image: Path
    annotation: Path
    kind: str  # "mask" (object mask 0/255) or "siftflow" (class ids)


def is_held_out(key: str) -> bool:
    """In the report split (the bench's photos)."""
    return split_of(key) == "report"


def split_of(key: str) -> str:
    bucket = zlib.crc32(key.encode()) % 100
    if bucket < HELD_OUT_PERCENT:
        return "report"
    return "select" if bucket < HELD_OUT_PERCENT + SELECT_PERCENT else "train"


def in_parse_pool(key: str) -> bool:
    return zlib.crc32(("parse:" + key).encode()) % 100 < PARSE_PERCENT


# --- sources ----------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _masked(images: Path, masks: Path, prefix: str, keep: Callable[[str], bool] = lambda stem: True,
            key: Callable[[str], str] | None = None) -> list[Sample]:
    found = []
    for image in _images(images):
        mask = masks / (image.stem + ".png")
        if mask.exists() and mask != image and keep(image.stem):  # (photos-with-masks: same folder)
            split_key = prefix + (key(image.stem) if key else image.stem)
            found.append(Sample(split_key, f"{prefix}{image.stem}", image, mask, "mask"))
    return found


def list_samples(datasets: str | Path, style: str) -> list[Sample]:
    """Every usable photo for ``style`` under the datasets root (``../shared/datasets``)."""
    root = Path(datasets)
    samples: list[Sample] = []
    if style in ("pop-out", "watercolor"):
        samples += _masked(root / "davis" / "train" / "images", root / "davis" / "train" / "masks", "davis/",
                           key=lambda stem: stem.rsplit("_", 1)[0])
        samples += _masked(root / "people" / "coco128-seg" / "images", root / "people" / "coco128-seg" / "masks",
                           "coco128-seg/")
        samples += _masked(root / "people" / "ccp" / "images", root / "people" / "ccp" / "masks", "ccp/",
                           keep=lambda stem: zlib.crc32(("ccp:" + stem).encode()) % 100 < CCP_PERCENT)
        pwm = root / "harmonization" / "photos-with-masks"
        samples += _masked(pwm, pwm, "photos-with-masks/")
    elif style == "xpro":
        samples = [s for s in siftflow_samples(root) if not in_parse_pool(s.key)]
    else:
        raise bad_input(f"Unknown style '{style}'; choose one of {', '.join(STYLES)}.")
    if not samples:
        raise bad_input(f"No source photos for style '{style}' under {root} (expected davis/, people/, "
                        "harmonization/photos-with-masks or siftflow/ as described in datasets/README.md).")
    return samples


def siftflow_samples(root: Path) -> list[Sample]:
    found = []
    for image in _images(root / "siftflow" / "train" / "images"):
        labels = root / "siftflow" / "train" / "labels" / (image.stem + ".png")
        if labels.exists():
            found.append(Sample("siftflow/" + image.stem, image.stem, image, labels, "siftflow"))
    return found


def parse_samples(datasets: str | Path) -> list[Sample]:
    """SIFT Flow photos with class labels that no style's adjustment data uses: the scene-parsing task's
    labels (Eq. 9), independent of how any effect is generated."""
    return [s for s in siftflow_samples(Path(datasets)) if in_parse_pool(s.key)]


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(sRGB float H×W×3, annotation: object mask float H×W or class ids uint8 H×W)."""
    rgb = to_float(load_image(sample.image))[..., :3]
    if sample.kind == "mask":
        annotation = (load_mask(sample.annotation) > 127).astype(np.float32)
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


# (contrast, brightness ΔL, chroma gain, Δa, Δb) of the object and of the ground
POP_OUT_TONES = ((1.35, 4.0, 1.4, 0.0, 0.0), (0.7, -6.0, 0.45, 0.0, 0.0))
WATERCOLOR_TONES = ((1.05, 6.0, 1.15, 0.0, 0.0), (0.75, 12.0, 0.6, 0.0, 4.0))


def _two_tones(rgb: np.ndarray, mask: np.ndarray, tones) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    soft = _feather(mask, 0.01)[..., None]
    fg = _tone(lab, soft[..., 0], *tones[0])
    bg = _tone(lab, 1 - soft[..., 0], *tones[1])
    out = soft * fg + (1 - soft) * bg
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    return lab_to_rgb(out)


def pop_out(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _two_tones(rgb, mask, POP_OUT_TONES)


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


def superpixel_brush(rgb: np.ndarray, max_side: int = BRUSH_MAX_SIDE) -> np.ndarray:
    """The Watercolor brush. Superpixels are found on a copy of at most ``max_side`` pixels (their size
    follows the image, so the look does not change; it keeps NumPy SLIC fast on large photos)."""
    lab = rgb_to_lab(rgb)
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = rgb_to_lab(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    else:
        small = lab
    labels = slic(small, max(4, min(small.shape[:2]) // 20))
    if scale < 1:
        labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
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


def watercolor_colour(brushed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watercolor's colour part, on the brushed photo: what SA-AdjustNet learns for this style."""
    return _two_tones(brushed, mask, WATERCOLOR_TONES)


def watercolor(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return watercolor_colour(superpixel_brush(rgb), mask)


def network_input(style: str, rgb: np.ndarray) -> np.ndarray:
    """What the network adjusts: the photo, or for Watercolor the photo after the fixed brush procedure
    (applied the same way in training, in the bench and at inference)."""
    return superpixel_brush(rgb.astype(np.float32)) if style == "watercolor" else rgb


def render(style: str, rgb: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """The target photo (sRGB float H×W×3) of ``style`` for ``rgb`` and its annotation."""
    effects: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "pop-out": pop_out, "xpro": local_xpro, "watercolor": watercolor}
    if style not in effects:
        raise bad_input(f"Unknown style '{style}'; choose one of {', '.join(STYLES)}.")
    return effects[style](rgb.astype(np.float32), annotation)


def pairs(datasets: str | Path, style: str, split: str) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
    """(sample, photo sRGB, target sRGB) of one split ("train", "select", "report")."""
    for sample in list_samples(datasets, style):
        if split_of(sample.key) != split:
            continue
        rgb, annotation = load_sample(sample)
        yield sample, rgb, render(style, rgb, annotation)


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
