"""Semantic-segmentation datasets laid out like SIFT Flow: ``images/<name>.jpg``, ``labels/<name>.png``.

The class list comes from ``classes.txt`` beside (or one level above) the split folder, one
``<id> <name>`` per line with 0 = unlabeled, so PASCAL-Context or ADE20K exported in the same layout
train the same code. The validation split is held out by a hash of each file name: stable when files
are added, identical on every machine.

Decoded, resized arrays are cached as ``.npy`` so training time goes to the network, not to JPEG.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.protocol import bad_input

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]  # index = class id; names[0] is "unlabeled"

    @property
    def count(self) -> int:  # including unlabeled
        return len(self.names)

    def to_json(self) -> str:
        return json.dumps(list(self.names))

    @classmethod
    def from_json(cls, text: str) -> ClassList:
        return cls(tuple(json.loads(text)))


def read_classes(path: str | Path) -> ClassList:
    """``classes.txt`` → ClassList; ids must be 0..N-1 without gaps so they index the network's outputs."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"No class list at {path} (expected lines '<id> <name>', 0 = unlabeled).")
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise bad_input(f"{path}, line {number}: expected '<id> <name>', got '{line.strip()}'.")
        names[int(parts[0])] = parts[1].strip()
    if not names or sorted(names) != list(range(len(names))):
        raise bad_input(f"{path}: class ids must run 0, 1, 2, … without gaps (0 = unlabeled).")
    if len(names) > 256:
        raise bad_input(f"{path}: {len(names)} classes do not fit 8-bit label maps.")
    return ClassList(tuple(names[i] for i in range(len(names))))


def find_classes(split_dir: str | Path) -> Path:
    split_dir = Path(split_dir)
    for candidate in (split_dir / "classes.txt", split_dir.parent / "classes.txt"):
        if candidate.is_file():
            return candidate
    raise bad_input(f"No classes.txt in {split_dir} or {split_dir.parent}.")


def is_validation(name: str, val_percent: int = 10) -> bool:
    """Deterministic hold-out by file name (not by listing order, which differs across filesystems)."""
    digest = hashlib.sha1(Path(name).stem.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < val_percent


def split_of(name: str, val_percent: int = 10) -> str:
    """'heldout' (reported, never chosen on), 'select' (checkpoints) or 'train', by the file name's hash: the same
    three-way split as core.data.segmentation.split_of at the default 10 %."""
    bucket = int.from_bytes(hashlib.sha1(Path(name).stem.encode()).digest()[:4], "little") % 100
    return "heldout" if bucket < val_percent else "select" if bucket < 2 * val_percent else "train"


def list_pairs(split_dir: str | Path, split: str = "train", val_percent: int = 10) -> list[tuple[Path, Path]]:
    """(image, label) paths for ``split`` in {"train", "select", "heldout", "all"}, sorted by name."""
    if split not in ("train", "select", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}")
    split_dir = Path(split_dir)
    images, labels = split_dir / "images", split_dir / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise bad_input(f"{split_dir} must hold 'images/' and 'labels/' folders.")
    pairs = []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = labels / (image.stem + ".png")
        if not label.is_file():
            continue
        if split == "all" or split_of(image.name, val_percent) == split:
            pairs.append((image, label))
    if not pairs:
        raise bad_input(f"No image/label pairs for split '{split}' in {split_dir}.")
    return pairs


def load_pair(image_path: Path, label_path: Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 H×W×3 and uint8 H×W labels, optionally resized to size×size (area / nearest)."""
    image = Image.open(image_path).convert("RGB")
    label = Image.open(label_path)
    if label.mode not in ("L", "P"):
        label = label.convert("L")
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BOX)
        label = label.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(image), np.asarray(label, dtype=np.uint8)


def cached_arrays(split_dir: str | Path, split: str, size: int, cache_dir: str | Path,
                  val_percent: int = 10) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """N×S×S×3 uint8 images, N×S×S uint8 labels and names, decoded once then read from ``cache_dir``."""
    pairs = list_pairs(split_dir, split, val_percent)
    names = [p[0].stem for p in pairs]
    key = hashlib.sha1(("\n".join(names) + f"|{Path(split_dir).resolve()}|{size}").encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir)
    images_file = cache_dir / f"{split}_{size}_{key}_images.npy"
    labels_file = cache_dir / f"{split}_{size}_{key}_labels.npy"
    if images_file.exists() and labels_file.exists():
        return np.load(images_file, mmap_mode="r"), np.load(labels_file, mmap_mode="r"), names
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    labels = np.empty((len(pairs), size, size), np.uint8)
    for i, (image_path, label_path) in enumerate(pairs):
        images[i], labels[i] = load_pair(image_path, label_path, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for array, target in ((images, images_file), (labels, labels_file)):
        tmp = target.with_suffix(".part.npy")
        np.save(tmp, array)
        tmp.replace(target)
    return images, labels, names


def random_batch(images: np.ndarray, labels: np.ndarray, batch: int, crop: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crops with horizontal flips: B×crop×crop×3 uint8 and B×crop×crop uint8."""
    n, size = images.shape[0], images.shape[1]
    index = rng.integers(0, n, batch)
    ys, xs = rng.integers(0, size - crop + 1, batch), rng.integers(0, size - crop + 1, batch)
    out_images = np.empty((batch, crop, crop, 3), np.uint8)
    out_labels = np.empty((batch, crop, crop), np.uint8)
    for j, (i, y, x) in enumerate(zip(index, ys, xs)):
        im, lb = images[i, y:y + crop, x:x + crop], labels[i, y:y + crop, x:x + crop]
        if rng.random() < 0.5:
            im, lb = im[:, ::-1], lb[:, ::-1]
        out_images[j], out_labels[j] = im, lb
    return out_images, out_labels
