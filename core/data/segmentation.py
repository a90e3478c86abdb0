"""Training photos for the semantic segmenter: SIFT Flow scenes plus photos of people with person masks.

SIFT Flow (``siftflow/train``) has per-pixel classes but few people; ``people/ccp`` (full-body street
photos) and ``people/coco128-seg`` (groups, sport, street) add people, labelled only where the mask says
person. Their other pixels have no scene class: in Clothing Co-Parsing every person pixel is annotated,
so the rest is known *not* to be a person (``NOT_PERSON``: the loss pushes the person score down there
without claiming any other class); COCO's polygons are coarse and leave crowds unmasked, so the rest of a
COCO photo is simply unlabeled.

Every photo falls in one of three splits by a hash of its file name (stable when files are added): the
first 10 % are ``heldout`` (SIFT Flow's are the bench's validation images, ``core/data/siftflow.py``'s
``is_validation``), the next 10 % ``select`` (checkpoint picking), the rest ``train``. The standard
200-image SIFT Flow test split is not in ../shared/datasets, so ``heldout`` stands in for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.siftflow import IMAGE_SUFFIXES
from core.protocol import bad_input

UNLABELED = 0  # SIFT Flow's id 0: no supervision
NOT_PERSON = 254  # a pixel known not to show a person, whose scene class is unknown
SPLITS = ("heldout", "select", "train")
PEOPLE_SOURCES = ("people/ccp", "people/coco128-seg")
SCENE_SOURCE = "siftflow/train"


@dataclass(frozen=True)
class LabelledPhoto:
    image: Path
    label: Path  # SIFT Flow: class ids; people: a 0/255 person mask
    source: str  # SCENE_SOURCE or one of PEOPLE_SOURCES

    @property
    def is_people(self) -> bool:
        return self.source in PEOPLE_SOURCES


def split_of(name: str) -> str:
    """'heldout', 'select' or 'train' by a hash of the file's stem (siftflow.is_validation's hash)."""
    bucket = int.from_bytes(hashlib.sha1(Path(name).stem.encode()).digest()[:4], "little") % 100
    return SPLITS[0] if bucket < 10 else SPLITS[1] if bucket < 20 else SPLITS[2]


def _pairs(images: Path, labels: Path, source: str, split: str) -> list[LabelledPhoto]:
    if not images.is_dir() or not labels.is_dir():
        raise bad_input(f"{images.parent} must hold '{images.name}/' and '{labels.name}/' folders.")
    found = []
    for image in sorted(images.iterdir()):
        label = labels / (image.stem + ".png")
        if image.suffix.lower() in IMAGE_SUFFIXES and label.is_file() and split_of(image.name) == split:
            found.append(LabelledPhoto(image, label, source))
    return found


def list_photos(data_root: str | Path, split: str, people: bool = True) -> list[LabelledPhoto]:
    """SIFT Flow photos of ``split`` (then, with ``people``, the people photos of that split), by name."""
    if split not in SPLITS:
        raise bad_input(f"Unknown split '{split}'; expected one of {', '.join(SPLITS)}.")
    root = Path(data_root)
    scene = root / SCENE_SOURCE
    photos = _pairs(scene / "images", scene / "labels", SCENE_SOURCE, split)
    if people:
        for source in PEOPLE_SOURCES:
            photos += _pairs(root / source / "images", root / source / "masks", source, split)
    if not photos:
        raise bad_input(f"No labelled photos for split '{split}' under {root} (expected "
                        f"{SCENE_SOURCE}/images, labels and {', '.join(PEOPLE_SOURCES)}).")
    return photos


def photo_labels(photo: LabelledPhoto, person_id: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 H×W×3 and uint8 H×W labels in the scene classes' ids (plus ``NOT_PERSON``)."""
    try:
        rgb = np.asarray(Image.open(photo.image).convert("RGB"))
        raw = np.asarray(Image.open(photo.label).convert("L"))
    except OSError as exc:
        raise bad_input(f"Cannot read {photo.image} or {photo.label}: {exc}") from None
    if raw.shape != rgb.shape[:2]:
        raise bad_input(f"{photo.label} is {raw.shape[1]}×{raw.shape[0]} but {photo.image} is "
                        f"{rgb.shape[1]}×{rgb.shape[0]}.")
    if not photo.is_people:
        return rgb, raw.astype(np.uint8)
    background = NOT_PERSON if photo.source == "people/ccp" else UNLABELED
    return rgb, np.where(raw >= 128, person_id, background).astype(np.uint8)


def square_views(rgb: np.ndarray, labels: np.ndarray, side: int, label_side: int,
                 both: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The photo resized to short side ``side`` and cut to side×side views, with labels at label_side².

    A square photo gives itself and (``both``) its mirror image; a long one its first square (the top of a
    portrait, where the head is) and (``both``) its last one mirrored, so the two views differ.
    """
    h, w = labels.shape
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    label = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    height, width = label.shape
    views = []
    starts = [(0, 0), (height - side, width - side)]
    for index, (y, x) in enumerate(starts[:2 if both else 1]):
        if index == 1 and (height, width) == (side, side):
            y = x = 0
        im, lb = image[y:y + side, x:x + side], label[y:y + side, x:x + side]
        if index == 1:
            im, lb = im[:, ::-1], lb[:, ::-1]
        small = np.asarray(Image.fromarray(np.ascontiguousarray(lb)).resize(
            (label_side, label_side), Image.Resampling.NEAREST))
        views.append((np.ascontiguousarray(im), small))
    return views
