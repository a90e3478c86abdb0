"""Training data for image harmonization: synthetic composites made from real photos.

As in Tsai et al. (CVPR 2017, Sec. 3.1) and iHarmony4 (Cong et al., CVPR 2020): take a real photo,
pick a region (an object or segment mask), change that region's appearance by transferring colour
statistics from a reference region, preferably of the same semantic class, with randomized
strength. The edited photo is the composite, the untouched photo is the target.

Three kinds of change, in the proportions of ``CHANGE_KINDS``, each the way real composites differ:

* ``reference``: colour statistics of a same-class region from another photo (HCOCO);
* ``retouch``: a retoucher's global edits, several at once (HAdobe5k): exposure, white balance and tint,
  contrast, saturation, a tone curve, split toning;
* ``relight``: the object lit differently from its new surroundings: brighter or darker, warmer or
  cooler light, flatter or harder shading, light falling off across the object.

Half of the time the whole scene is then re-lit (night to bright day, tungsten to shade, coloured
light) and the target is the re-lit photo, while the object keeps the light it was photographed
in (or its changed appearance): what pasting an object from another photo does.

Region sources (all folders are arguments; see ``../shared/datasets/README.md``):

* ``siftflow/train``: 33-class labels, used for regions, same-class references and the
  scene-parsing targets of the joint network;
* ``davis/train``: object masks (split by sequence);
* ``bsds500/{train,val}``: human segmentations (one segment is a region);
* ``harmonization/photos-with-masks``: photos with one object mask each;
* ``people/ccp``, ``people/coco128-seg``: photos with person masks (class "person", so a person is
  re-coloured from another photo's person, as HCOCO pairs same-category instances);
* iHarmony4 folders (``<subset>/composite_images``, ``real_images``, ``masks``) when a user has them:
  those composites are used as given.

Samples are dicts of uint8 arrays: ``composite`` and ``target`` H×W×3, ``mask`` H×W (soft values
allowed), ``labels`` H×W parsing classes 0–32 with ``IGNORE_LABEL`` where unknown.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.imaging.color import lab_to_rgb, rgb_to_lab

IGNORE_LABEL = 255
SIFTFLOW_CLASSES = 33  # ids 1..33 in the label PNGs; 0 = unlabeled
TRANSFER_METHODS = ("lab_stats", "luminance", "temperature", "histogram")
CHANGE_KINDS = {"reference": 0.35, "retouch": 0.4, "relight": 0.25}  # probability of each kind of change
# Probability that the whole scene is re-lit while the object keeps the photo's original light (as an
# object cut from a daylight photo and pasted into a dusk or night scene): the target is the re-lit scene.
SCENE_RELIGHT = 0.5
PERSON_CLASS = 18  # SIFT Flow's "person"; person-mask photos share it for same-class references
MIN_REGION, MAX_REGION = 0.05, 0.6  # region area as a fraction of the image (iHarmony4 keeps 5%–80%)
MIN_CHANGE = 0.02  # mean |Δ| on the region in [0, 1]; weaker edits teach nothing and are redrawn
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Source:
    """One real photo and where its regions come from."""

    kind: str  # "siftflow", "davis", "bsds", "photo", "person", "iharmony"
    image: Path
    region: Path | None  # label PNG / mask PNG / segment PNG; iHarmony4: the mask
    group: str  # photos of one group never straddle the train/validation split
    composite: Path | None = None  # iHarmony4 only


def list_sources(root: Path) -> list[Source]:
    """All usable photos under a datasets root (or under one dataset folder, or an iHarmony4 root)."""
    root = Path(root)
    sources: list[Source] = []
    sift = _find(root, "siftflow/train")
    if sift:
        for image in sorted((sift / "images").glob("*.jpg")):
            label = sift / "labels" / (image.stem + ".png")
            if label.exists():
                sources.append(Source("siftflow", image, label, "siftflow:" + image.stem))
    davis = _find(root, "davis/train")
    if davis:
        for image in sorted((davis / "images").glob("*.jpg")):
            mask = davis / "masks" / (image.stem + ".png")
            if mask.exists():
                sources.append(Source("davis", image, mask, "davis:" + image.stem.rsplit("_", 1)[0]))
    bsds = _find(root, "bsds500")
    if bsds:
        for split in ("train", "val"):
            for image in sorted((bsds / split / "images").glob("*.jpg")):
                segments = bsds / split / "segments" / (image.stem + ".png")
                if segments.exists():
                    sources.append(Source("bsds", image, segments, "bsds:" + image.stem))
    photos = _find(root, "harmonization/photos-with-masks")
    if photos:
        for image in sorted(photos.glob("*.jpg")):
            mask = image.with_suffix(".png")
            if mask.exists():
                sources.append(Source("photo", image, mask, "photo:" + image.stem))
    for folder, prefix in (("people/ccp", "ccp"), ("people/coco128-seg", "coco-person")):
        people = _find(root, folder)
        if people:
            for image in sorted((people / "images").glob("*.jpg")):
                mask = people / "masks" / (image.stem + ".png")
                if mask.exists():
                    sources.append(Source("person", image, mask, f"{prefix}:{image.stem}"))
    sources.extend(list_iharmony4(root))
    return sources


def list_iharmony4(root: Path) -> list[Source]:
    """iHarmony4 layout: ``<subset>/composite_images/<name>_<m>_<k>.jpg``, ``masks/<name>_<m>.png``,
    ``real_images/<name>.jpg`` (HCOCO, HAdobe5k, HFlickr, Hday2night; any subset folder works)."""
    root = Path(root)
    subsets = [root] if (root / "composite_images").is_dir() else sorted(
        p for p in root.iterdir() if (p / "composite_images").is_dir()) if root.is_dir() else []
    sources = []
    for subset in subsets:
        for composite in sorted((subset / "composite_images").iterdir()):
            parts = composite.stem.split("_")
            if composite.suffix.lower() not in IMAGE_SUFFIXES or len(parts) < 3:
                continue
            name, mask_name = "_".join(parts[:-2]), "_".join(parts[:-1])
            real = _first_existing(subset / "real_images", name)
            mask = _first_existing(subset / "masks", mask_name)
            if real and mask:
                sources.append(Source("iharmony", real, mask, f"iharmony:{subset.name}:{name}", composite))
    return sources


def split_sources(sources: list[Source], val_percent: float = 10.0) -> tuple[list[Source], list[Source]]:
    """Deterministic split by source group (a photo, a DAVIS sequence), stable across machines."""
    train, val = [], []
    for source in sources:
        bucket = zlib.crc32(source.group.encode()) % 1000
        (val if bucket < val_percent * 10 else train).append(source)
    return train, val


# --- reading ------------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_region_map(source: Source) -> np.ndarray:
    """Label/segment ids (int32 H×W) or a 0–255 mask (float32 H×W in [0, 1])."""
    raw = cv2.imread(str(source.region), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read region file {source.region}")
    if raw.ndim == 3:
        raw = raw[..., 0]
    if source.kind in ("siftflow", "bsds"):
        return raw.astype(np.int32)
    return raw.astype(np.float32) / (65535.0 if raw.dtype == np.uint16 else 255.0)


class SemanticIndex:
    """Which SIFT Flow photos contain a large region of each class (for same-class references)."""

    def __init__(self, sources: list[Source]):
        self.by_class: dict[int, list[int]] = {}
        for i, source in enumerate(sources):
            if source.kind == "person":
                self.by_class.setdefault(PERSON_CLASS, []).append(i)
            if source.kind != "siftflow":
                continue
            labels = read_region_map(source)
            ids, counts = np.unique(labels, return_counts=True)
            for cls, count in zip(ids.tolist(), counts.tolist(), strict=True):
                if cls > 0 and count >= 0.03 * labels.size:
                    self.by_class.setdefault(cls, []).append(i)


# --- regions ------------------------------------------------------------------------------------


def pick_region(source: Source, region_map: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A foreground mask (float32 H×W in [0, 1]) and its semantic class (0 when unknown)."""
    if source.kind in ("siftflow", "bsds"):
        ids, counts = np.unique(region_map, return_counts=True)
        area = counts / region_map.size
        ok = (area >= MIN_REGION) & (area <= MAX_REGION)
        if source.kind == "siftflow":
            ok &= ids > 0
        if not ok.any():  # fall back to the best-sized region
            ok = np.zeros_like(ok)
            ok[np.argmin(np.abs(area - 0.2))] = True
        choice = int(rng.choice(ids[ok]))
        mask = (region_map == choice).astype(np.float32)
        return _clean(mask), choice if source.kind == "siftflow" else 0
    return region_map.astype(np.float32), PERSON_CLASS if source.kind == "person" else 0


def _clean(mask: np.ndarray) -> np.ndarray:
    """Segment masks have specks; an object a user selects is one solid piece."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)


# --- appearance transfer (the "composite" in a synthetic composite) -----------------------------


def transfer_appearance(rgb: np.ndarray, mask: np.ndarray, ref_rgb: np.ndarray, ref_mask: np.ndarray,
                        method: str, strength: float) -> np.ndarray:
    """Give the masked region of ``rgb`` the appearance of the reference region.

    ``rgb``/``ref_rgb`` float32 H×W×3 in [0, 1]; masks float32 H×W. Returns the whole edited image
    (the caller composites it with the mask).
    """
    fg = mask > 0.5
    ref = ref_mask > 0.5
    if method == "temperature":
        # Gray-world white balance of the reference applied to the region: a colour-cast change.
        src_mean = rgb[fg].mean(axis=0) + 1e-3
        ref_mean = ref_rgb[ref].mean(axis=0) + 1e-3
        gain = (ref_mean / ref_mean.mean()) / (src_mean / src_mean.mean())
        exposure = float(ref_mean.mean() / src_mean.mean()) ** 0.5
        edited = np.clip(rgb * (gain * exposure).astype(np.float32), 0, 1)
    else:
        lab = rgb_to_lab(rgb)
        ref_lab = rgb_to_lab(ref_rgb)
        src_px, ref_px = lab[fg], ref_lab[ref]
        out = lab.copy()
        channels = [0] if method == "luminance" else [0, 1, 2]
        for c in channels:
            if method == "histogram":
                out[..., c] = _match_histogram(lab[..., c], src_px[:, c], ref_px[:, c])
            else:  # Reinhard et al.: match mean and standard deviation
                s_mean, s_std = src_px[:, c].mean(), src_px[:, c].std() + 1e-3
                r_mean, r_std = ref_px[:, c].mean(), ref_px[:, c].std() + 1e-3
                gain = np.clip(r_std / s_std, 0.4, 2.5)
                out[..., c] = (lab[..., c] - s_mean) * gain + r_mean
        out[..., 0] = np.clip(out[..., 0], 0, 100)
        edited = lab_to_rgb(out)
    return rgb + np.float32(strength) * (edited - rgb)


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    return np.power(np.clip(rgb, 0, 1), 2.2, dtype=np.float32)  # light adds up in linear values


def _to_display(linear: np.ndarray) -> np.ndarray:
    return np.power(np.clip(linear, 0, 1), 1 / 2.2, dtype=np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def retouch(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A retoucher's global edits (HAdobe5k-like): two to five of exposure, white balance and tint,
    contrast, saturation, a tone curve and split toning, each at a random strength."""
    edits = rng.choice(6, size=int(rng.integers(2, 6)), replace=False)
    linear = _to_linear(rgb)
    if 0 in edits:  # exposure, ±1.3 stops
        linear = linear * np.float32(2.0 ** rng.uniform(-1.3, 1.3))
    if 1 in edits:  # white balance (blue–amber) and tint (green–magenta)
        temperature, tint = rng.uniform(-0.35, 0.35), rng.uniform(-0.15, 0.15)
        gains = np.array([1 + temperature, 1 + tint, 1 - temperature], np.float32)
        linear = linear * gains / _luminance(gains[None])[0]
    out = _to_display(linear)
    if 2 in edits:  # contrast about the mid-tone
        out = 0.5 + (out - 0.5) * np.float32(rng.uniform(0.55, 1.6))
    if 3 in edits:  # saturation
        gray = _luminance(out)[..., None]
        out = gray + (out - gray) * np.float32(rng.uniform(0.2, 1.7))
    if 4 in edits:  # tone curve: lifted or crushed shadows / highlights (a gamma)
        out = np.power(np.clip(out, 0, 1), np.float32(np.exp(rng.uniform(-0.5, 0.5))))
    if 5 in edits:  # split toning: one colour into the shadows, another into the highlights
        shadows, highlights = rng.normal(0, 0.06, 3), rng.normal(0, 0.06, 3)
        weight = _luminance(np.clip(out, 0, 1))[..., None]
        out = out + ((1 - weight) * shadows + weight * highlights).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32)


def relight_scene(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole photo under other light: from night (−4 stops) to bright day (+1.5), from tungsten to
    shade; sometimes a coloured tint of dusk or neon."""
    light = np.float32(2.0 ** rng.uniform(-4.0, 1.5))
    warmth = rng.uniform(-0.5, 0.5)
    colour = np.array([1 + warmth, 1 + 0.2 * warmth, 1 - warmth], np.float32)
    if rng.random() < 0.25:
        colour = colour * rng.uniform(0.6, 1.4, 3).astype(np.float32)
    linear = _to_linear(rgb) * light * colour / _luminance(colour[None])[0]
    return _to_display(linear)


def relight(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object lit otherwise than its surroundings: light level and colour, flatter or harder
    shading, and light falling off across the object."""
    linear = _to_linear(rgb)
    level = 2.0 ** rng.uniform(-1.5, 1.5)
    # Daylight–tungsten colour of the light: a warm light raises red and lowers blue together.
    warmth = rng.uniform(-0.4, 0.4)
    light = np.array([1 + warmth, 1 + 0.2 * warmth, 1 - warmth], np.float32) * np.float32(level)
    linear = linear * light
    fg = mask > 0.5
    if rng.random() < 0.6:  # flatter (< 1) or harder (> 1) shading: scale the log-luminance spread
        luminance = _luminance(linear) + 1e-4
        log_l = np.log(luminance)
        centre = float(np.median(log_l[fg])) if fg.any() else float(np.median(log_l))
        hardness = rng.uniform(0.6, 1.5)
        linear = linear * np.exp((log_l - centre) * (hardness - 1))[..., None].astype(np.float32)
    if rng.random() < 0.4:  # light falling off across the object (a linear ramp of ±40 %)
        h, w = mask.shape
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / max(h, w)
        ramp = (ramp - ramp[fg].mean()) if fg.any() else ramp - ramp.mean()
        linear = linear * np.clip(1 + rng.uniform(0.2, 0.8) * ramp, 0.3, 2.0)[..., None]
    return _to_display(linear)


def _match_histogram(values: np.ndarray, src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    quantiles = np.linspace(0, 100, 65)
    src_q = np.percentile(src, quantiles)
    ref_q = np.percentile(ref, quantiles)
    src_q = np.maximum.accumulate(src_q + np.arange(len(src_q)) * 1e-6)
    return np.interp(values, src_q, ref_q).astype(np.float32)


# --- samples ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """Scale to (height, width), then take the size×size square at (y0, x0)."""

    height: int
    width: int
    y0: int
    x0: int
    size: int

    def apply(self, array: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        if interpolation == cv2.INTER_AREA and (self.height > array.shape[0] or self.width > array.shape[1]):
            interpolation = cv2.INTER_LINEAR  # area averaging is only meant for shrinking
        resized = cv2.resize(array, (self.width, self.height), interpolation=interpolation)
        return resized[self.y0:self.y0 + self.size, self.x0:self.x0 + self.size]


def square_crop(shape: tuple[int, int], size: int, region: np.ndarray | None,
                rng: np.random.Generator | None) -> Crop:
    """Short side to ``size`` and a square around the region's centre (jittered when ``rng``)."""
    h, w = shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if region is not None and region.any():
        ys, xs = np.nonzero(region)
        cy, cx = ys.mean() * nh / h, xs.mean() * nw / w
    else:
        cy, cx = nh / 2, nw / 2
    jitter = rng.uniform(-0.25, 0.25, 2) * size if rng is not None else np.zeros(2)
    y0 = int(np.clip(cy - size / 2 + jitter[0], 0, nh - size))
    x0 = int(np.clip(cx - size / 2 + jitter[1], 0, nw - size))
    return Crop(nh, nw, y0, x0, size)


def make_sample(sources: list[Source], index: int, rng: np.random.Generator, size: int,
                semantic: SemanticIndex | None = None, tries: int = 6) -> dict[str, np.ndarray] | None:
    """Render one synthetic composite from ``sources[index]`` at size×size; None if no usable region."""
    source = sources[index]
    photo = read_rgb(source.image)
    region_map = read_region_map(source)
    if source.kind == "iharmony":
        return _iharmony_sample(source, photo, region_map, size)
    for _ in range(tries):
        mask_full, cls = pick_region(source, region_map, rng)
        if not MIN_REGION * 0.5 <= (mask_full > 0.5).mean() <= 0.85:
            continue
        crop = square_crop(photo.shape[:2], size, mask_full > 0.5, rng)
        rgb = crop.apply(photo).astype(np.float32) / 255.0
        mask = np.clip(crop.apply(mask_full), 0, 1).astype(np.float32)
        if not MIN_REGION * 0.5 <= (mask > 0.5).mean() <= 0.9:
            continue
        change = str(rng.choice(list(CHANGE_KINDS), p=list(CHANGE_KINDS.values())))
        if change == "retouch":
            edited = retouch(rgb, rng)
        elif change == "relight":
            edited = relight(rgb, mask, rng)
        else:
            ref_rgb, ref_mask = _reference(sources, index, cls, semantic, rng, size)
            if (ref_mask > 0.5).sum() < 16:
                continue
            methods = rng.choice(TRANSFER_METHODS, size=1 + int(rng.random() < 0.3), replace=False)
            edited = rgb
            for method in methods:
                edited = transfer_appearance(edited, mask, ref_rgb, ref_mask, str(method), rng.uniform(0.4, 1.0))
        if rng.random() < 0.3:  # users' selections are often feathered
            mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.7, 2.0))
        if rng.random() < SCENE_RELIGHT:
            if rng.random() < 0.5:
                edited = rgb  # the object as photographed, the scene re-lit around it
            rgb = relight_scene(rgb, rng)
        composite = rgb + mask[..., None] * (edited - rgb)
        if np.abs(composite - rgb)[mask > 0.5].mean() < MIN_CHANGE:
            continue
        return {"composite": _u8(composite), "target": _u8(rgb), "mask": _u8(mask),
                "labels": _labels(source, region_map, crop)}
    return None


def _labels(source: Source, region_map: np.ndarray, crop: Crop) -> np.ndarray:
    if source.kind == "person":  # the person is known, the rest of the photo is not labelled
        person = crop.apply(region_map.astype(np.float32)) > 0.5
        return np.where(person, PERSON_CLASS - 1, IGNORE_LABEL).astype(np.uint8)
    if source.kind != "siftflow":
        return np.full((crop.size, crop.size), IGNORE_LABEL, np.uint8)
    labels = region_map - 1
    labels[labels < 0] = IGNORE_LABEL
    return crop.apply(labels.astype(np.uint8), cv2.INTER_NEAREST)


def _reference(sources: list[Source], index: int, cls: int, semantic: SemanticIndex | None,
               rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A region from another photo: the same class when known (Sec. 3.1), else any region."""
    candidates = semantic.by_class.get(cls, []) if semantic is not None and cls > 0 else []
    other = index
    if len(candidates) > 1:
        while other == index:
            other = int(rng.choice(candidates))
        region_map = read_region_map(sources[other])
        ref_mask = region_map if sources[other].kind == "person" else (region_map == cls).astype(np.float32)
    else:
        while other == index or sources[other].kind == "iharmony":
            other = int(rng.integers(len(sources)))
            if len(sources) < 2:
                break
        region_map = read_region_map(sources[other])
        ref_mask = pick_region(sources[other], region_map, rng)[0] if rng.random() < 0.7 else \
            np.ones(region_map.shape, np.float32)
    photo = read_rgb(sources[other].image)
    crop = square_crop(photo.shape[:2], size, None, None)
    return crop.apply(photo).astype(np.float32) / 255.0, crop.apply(ref_mask).astype(np.float32)


def _iharmony_sample(source: Source, real: np.ndarray, mask: np.ndarray, size: int) -> dict[str, np.ndarray]:
    composite = read_rgb(source.composite)
    if mask.shape != real.shape[:2]:
        mask = cv2.resize(mask, (real.shape[1], real.shape[0]), interpolation=cv2.INTER_LINEAR)
    if composite.shape != real.shape:
        composite = cv2.resize(composite, (real.shape[1], real.shape[0]), interpolation=cv2.INTER_AREA)
    crop = square_crop(real.shape[:2], size, mask > 0.5, None)
    return {"composite": crop.apply(composite), "target": crop.apply(real),
            "mask": _u8(np.clip(crop.apply(mask), 0, 1)),
            "labels": np.full((size, size), IGNORE_LABEL, np.uint8)}


def _u8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def _find(root: Path, relative: str) -> Path | None:
    """``root`` may be the datasets folder or the dataset folder itself."""
    if (root / relative).is_dir():
        return root / relative
    return root if root.is_dir() and root.resolve().as_posix().endswith(relative) else None


def _first_existing(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / (stem + suffix)).exists():
            return folder / (stem + suffix)
    return None


# --- cache --------------------------------------------------------------------------------------


def render_cache(data_root: Path, out: Path, size: int, train_count: int, val_count: int,
                 seed: int = 0, val_percent: float = 10.0, log=print) -> dict:
    """Pre-render composites into ``out/{train,val}_*.npy`` so training is not bound by JPEG decoding.

    Arrays: composite/target N×S×S×3 u8, mask N×S×S u8, labels N×S×S u8, group N (index of the
    source photo). Deterministic for a given seed and dataset.
    """
    sources = list_sources(data_root)
    if not sources:
        raise ValueError(f"no harmonization sources found under {data_root}")
    train, val = split_sources(sources, val_percent)
    out.mkdir(parents=True, exist_ok=True)
    info = {"size": size, "seed": seed, "val_percent": val_percent, "sources": len(sources)}
    for name, subset, count, offset in (("val", val, val_count, 1), ("train", train, train_count, 0)):
        semantic = SemanticIndex(subset)
        rng = np.random.default_rng(seed * 2 + offset)
        arrays = {k: np.lib.format.open_memmap(out / f"{name}_{k}.npy.part", "w+", np.uint8, shape)
                  for k, shape in (("composite", (count, size, size, 3)), ("target", (count, size, size, 3)),
                                   ("mask", (count, size, size)), ("labels", (count, size, size)))}
        groups = np.zeros(count, np.int32)
        # Balance region sources so that 2 488 SIFT Flow photos do not drown the object masks.
        by_kind: dict[str, list[int]] = {}
        for i, source in enumerate(subset):
            by_kind.setdefault(source.kind, []).append(i)
        kinds = sorted(by_kind)
        fixed = {k: v for k, v in {"siftflow": 0.3, "person": 0.3}.items() if k in by_kind}
        rest = (1.0 - sum(fixed.values())) / max(1, len(kinds) - len(fixed))
        weights = np.array([fixed.get(k, rest) for k in kinds])
        weights = weights / weights.sum()
        n, failures = 0, 0
        while n < count:
            kind = kinds[int(rng.choice(len(kinds), p=weights))]
            index = int(rng.choice(by_kind[kind]))
            sample = make_sample(subset, index, rng, size, semantic)
            if sample is None:
                failures += 1
                if failures > 50 + 10 * count:
                    raise ValueError(f"{name}: too few usable regions among {len(subset)} photos")
                continue
            for k, array in arrays.items():
                array[n] = sample[k]
            groups[n] = index
            n += 1
            if n % 500 == 0:
                log(f"{name}: {n}/{count}")
        for k, array in arrays.items():
            array.flush()
            Path(out / f"{name}_{k}.npy.part").replace(out / f"{name}_{k}.npy")
        np.save(out / f"{name}_group.npy", groups)
        (out / f"{name}_source_groups.json").write_text(json.dumps([subset[i].group for i in groups.tolist()]))
        info[f"{name}_count"] = count
        info[f"{name}_photos"] = len(subset)
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


def validation_half(out: Path) -> np.ndarray:
    """For each cached validation composite, "select" (picks checkpoints) or "report" (the bench):
    split by source group (a photo, a whole DAVIS sequence), so the numbers a bench reports never chose
    the model they describe."""
    path = out / "val_source_groups.json"
    if not path.exists():  # caches rendered before the split by source group
        raise SystemExit(f"{out} has no {path.name}: it was rendered by an older version; render it again "
                         "(python -m core.data.harmonization --data ... --out ...).")
    groups = json.loads(path.read_text())
    return np.array(["select" if zlib.crc32(group.encode()) % 2 == 0 else "report" for group in groups])


def load_cache(out: Path, name: str) -> dict[str, np.ndarray]:
    """Memory-mapped cache arrays written by ``render_cache``."""
    keys = ("composite", "target", "mask", "labels")
    return {k: np.load(out / f"{name}_{k}.npy", mmap_mode="r") for k in keys}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Pre-render synthetic harmonization composites.")
    parser.add_argument("--data", type=Path, required=True, help="datasets root (e.g. ../shared/datasets)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(render_cache(args.data, args.out, args.size, args.train, args.val, args.seed)))


if __name__ == "__main__":
    main()
