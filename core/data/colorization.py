"""Colour photos for colorization: every colour photo in ../shared/datasets, split by source group.

Sources (paths under the datasets root): SIFT Flow scenes (with per-pixel classes), BSDS500, DAVIS frames,
ImageNet samples, COCO scenes, Kodak, and the people photos of Clothing Co-Parsing and COCO (with person
masks). A photo's split comes from a hash of its *group* (core.data.segmentation.split_of): the file stem,
except for DAVIS, whose frames of one sequence are near-duplicates and so share the sequence's split.
``heldout`` is what the bench reports, ``select`` picks checkpoints, ``train`` trains. Because the hash
is the segmenter's, the segmenter never trained on a photo the colorization bench reports.

Ground-truth maps exist where labels do: SIFT Flow's classes, and the person masks of the people photos
(``ground_truth_map``: the person region from the mask, elsewhere the predicted map with its stray
'person' pixels set to unlabeled, since a people photo has no scene labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.segmentation import split_of
from core.data.siftflow import IMAGE_SUFFIXES
from core.protocol import bad_input

UNLABELED = 0
# (folder of images, folder of labels or None, kind of label): kind "classes" = SIFT Flow ids,
# "person" = a 0/255 person mask
SOURCES: dict[str, tuple[str, str | None, str | None]] = {
    "siftflow": ("siftflow/train/images", "siftflow/train/labels", "classes"),
    "bsds500-train": ("bsds500/train/images", None, None),
    "bsds500-val": ("bsds500/val/images", None, None),
    "davis": ("davis/train/images", None, None),
    "imagenet-samples": ("photos/imagenet-samples", None, None),
    "coco128": ("photos/coco128", None, None),
    "kodak24": ("photos/kodak24", None, None),
    "ccp": ("people/ccp/images", "people/ccp/masks", "person"),
    "coco128-people": ("people/coco128-seg/images", "people/coco128-seg/masks", "person"),
}
PEOPLE = ("ccp", "coco128-people")
SCENES = tuple(name for name in SOURCES if name not in PEOPLE)


@dataclass(frozen=True)
class ColourPhoto:
    image: Path
    source: str
    label: Path | None  # class ids or a person mask, see ``label_kind``
    label_kind: str | None

    @property
    def is_people(self) -> bool:
        return self.source in PEOPLE


def group_of(source: str, image: Path) -> str:
    """The unit a split keeps together: a DAVIS sequence, otherwise the photo itself."""
    return image.stem.rsplit("_", 1)[0] if source == "davis" else image.stem


def list_colour_photos(data_root: str | Path, split: str, sources: tuple[str, ...] = tuple(SOURCES),
                       ) -> list[ColourPhoto]:
    """All photos of ``split`` ('train', 'select' or 'heldout') from ``sources``, in a stable order."""
    root = Path(data_root)
    photos: list[ColourPhoto] = []
    for source in sources:
        if source not in SOURCES:
            raise bad_input(f"Unknown photo source '{source}'; known: {', '.join(SOURCES)}.")
        images, labels, kind = SOURCES[source]
        folder = root / images
        if not folder.is_dir():
            raise bad_input(f"{folder} is missing: --data must be the datasets folder "
                            f"(../shared/datasets) holding {images}.")
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if split_of(group_of(source, image) + ".x") != split:
                continue
            label = root / labels / (image.stem + ".png") if labels else None
            if label is not None and not label.is_file():
                label, kind_here = None, None
            else:
                kind_here = kind
            photos.append(ColourPhoto(image, source, label, kind_here))
    return photos


def read_photo(photo: ColourPhoto) -> np.ndarray:
    try:
        return np.asarray(Image.open(photo.image).convert("RGB"))
    except OSError as exc:
        raise bad_input(f"Cannot read {photo.image}: {exc}") from None


def ground_truth_map(photo: ColourPhoto, predicted: np.ndarray, person_id: int) -> np.ndarray | None:
    """H×W class ids from the photo's labels (None without labels); ``predicted`` fills what they omit."""
    if photo.label is None:
        return None
    try:
        raw = np.asarray(Image.open(photo.label).convert("L"))
    except OSError as exc:
        raise bad_input(f"Cannot read {photo.label}: {exc}") from None
    if raw.shape != predicted.shape:
        raise bad_input(f"{photo.label} is {raw.shape[1]}×{raw.shape[0]} but the photo is "
                        f"{predicted.shape[1]}×{predicted.shape[0]}.")
    if photo.label_kind == "classes":
        return raw.astype(np.uint8)
    rest = np.where(predicted == person_id, UNLABELED, predicted)
    return np.where(raw >= 128, person_id, rest).astype(np.uint8)


def person_mask(photo: ColourPhoto) -> np.ndarray | None:
    """H×W bool person pixels of a people photo (None for other photos)."""
    if photo.label_kind != "person" or photo.label is None:
        return None
    return np.asarray(Image.open(photo.label).convert("L")) >= 128


def square_view(rgb: np.ndarray, maps: list[np.ndarray], side: int, last: bool) -> tuple[np.ndarray, list]:
    """The photo at short side ``side``, cut to a side×side view: the first square (top of a portrait, where
    the head is; left of a landscape) or, with ``last``, the last square mirrored. Maps follow (nearest)."""
    h, w = rgb.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    resized = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in maps]
    y, x = (size[1] - side, size[0] - side) if last else (0, 0)
    crop = (slice(y, y + side), slice(x, x + side))
    image, resized = image[crop], [m[crop] for m in resized]
    if last:
        image, resized = image[:, ::-1], [m[:, ::-1] for m in resized]
    return np.ascontiguousarray(image), [np.ascontiguousarray(m) for m in resized]


CCP_SKIN = 41  # people/ccp/classes.txt: 41 skin


def skin_mask(photo: ColourPhoto) -> np.ndarray | None:
    """H×W bool skin pixels (Clothing Co-Parsing's clothing-parsing labels); None for other photos."""
    if photo.source != "ccp" or photo.label is None:
        return None
    labels = photo.label.parent.parent / "labels" / photo.label.name
    if not labels.is_file():
        return None
    return np.asarray(Image.open(labels)) == CCP_SKIN
