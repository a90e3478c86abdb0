"""Full-resolution semantic-driven colorization: segment, colorize at model resolution, keep the input's L.

The networks see the photo at their training scale (about ``input_size``² pixels); chroma is predicted
there, upsampled edge-aware to the full size with the full-resolution L as the guide (fast guided filter,
``core/colorization/guided.py``: colour edges follow the photo's own edges instead of bleeding across
them) and joined with that L, computed in float CIELab (core.imaging.color) and kept bit-exact, so a
24 MP scan keeps every detail of its luminance. Full-resolution passes run in strips of about
``STRIP_PIXELS`` pixels: small enough to stay in the CPU caches (24 MP in 512-row strips was 3× slower).

Two segmenters predict the map, both from the gray photo, both giving SIFT Flow's class ids: the default
decodes the frozen ImageNet backbone's features (``core/models/segmenter.py``, weights
``segmenter-siftflow``: one decoder, or an ensemble of decoders on the one backbone); GridNet trained from
scratch (``gridnet-siftflow``) is selectable by name.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from core.colorization.guided import GuidedUpsampling, chroma_coefficients
from core.colorization.palette import class_colors
from core.imaging.color import lab_to_rgb, linear_to_lightness_torch, srgb_to_linear_torch
from core.imaging.io import from_float, split_alpha, to_float
from core.models.colorization_unet import AB_SCALE, L_SCALE, ColorizationUNet, ColorizerConfig
from core.models.efficientnet_lite import LITE_VARIANTS, load_pretrained, weight_id_of
from core.models.gridnet import GridNet, GridNetConfig
from core.models.segmenter import PretrainedSegmenter, SegmenterConfig, SegmenterEnsemble
from core.protocol import ErrorCode, SemanticError, bad_input
from core.weights import Manifest, load_verified_state

GRIDNET_WEIGHTS = "gridnet-siftflow"
PRETRAINED_SEGMENTER_WEIGHTS = "segmenter-siftflow"
# user-facing segmenter names (CLI --segmenter, action param "segmenter") → weight ids
SEGMENTERS = {"pretrained": PRETRAINED_SEGMENTER_WEIGHTS, "gridnet": GRIDNET_WEIGHTS}
DEFAULT_SEGMENTER = "pretrained"
COLORIZER_WEIGHTS = "colorizer-lite0"
STRIP_PIXELS = 1 << 18  # full-resolution conversions run in strips of about this many pixels
MAX_MAP_SIDE = 1024  # predicted class scores are interpolated up to this side before the argmax
MAP_OVERSAMPLING = 4  # a full-size map is thinned (nearest) to this × the model grid before the majority vote
GUIDED = GuidedUpsampling()


@dataclass
class Segmenter:
    model: GridNet | PretrainedSegmenter | SegmenterEnsemble  # all: N×1×H×W L/50 − 1 → N×K×H×W class logits
    classes: tuple[str, ...]
    input_size: int
    device: torch.device


@dataclass
class Colorizer:
    model: ColorizationUNet
    classes: tuple[str, ...]
    input_size: int
    device: torch.device


def load_segmenter(device: torch.device, weight_id: str = PRETRAINED_SEGMENTER_WEIGHTS,
                   manifest: Manifest | None = None) -> Segmenter:
    """Any kind of segmenter, told apart by the manifest entry's model ("segmenter", "segmenter-ensemble"
    or "gridnet")."""
    manifest = manifest or Manifest.load()
    entry = manifest.entry(weight_id)
    config = dict(entry.config)
    classes, size = tuple(config.pop("classes")), int(config.pop("input_size"))
    if entry.model in ("segmenter", "segmenter-ensemble"):
        problem = _decoder_configs_problem(config.get("members") if entry.model == "segmenter-ensemble"
                                           else [config], len(classes))
        if problem:
            raise SemanticError(ErrorCode.weights_corrupt, f"The manifest entry of {manifest.path(weight_id)} "
                                                           f"{problem}. Re-run the installer.")
    if entry.model == "segmenter":
        model = PretrainedSegmenter(SegmenterConfig.from_dict(config))
        # the frozen backbone ships once (its own verified file); this weight file holds the decoder
        model.backbone = load_pretrained(manifest, weight_id=weight_id_of(model.config.backbone))
        load_verified_state(model.decoder, manifest, weight_id, "the segmenter's decoder")
    elif entry.model == "segmenter-ensemble":
        members = [dict(member) for member in config["members"]]
        sizes = [int(member.pop("input_size", size)) for member in members]
        model = SegmenterEnsemble([SegmenterConfig.from_dict(member) for member in members], sizes)
        model.backbone = load_pretrained(manifest, weight_id=weight_id_of(model.configs[0].backbone))
        load_verified_state(model.decoders, manifest, weight_id, "the segmenter's decoders")
    else:
        model = GridNet(GridNetConfig.from_dict(config))
        model.load_state_dict(manifest.load_state_dict(weight_id), strict=True)
    return Segmenter(model.to(device).eval(), classes, size, device)


def _decoder_configs_problem(members, class_count: int) -> str:
    """What is wrong with a manifest entry's decoder configs (one, or an ensemble's list), or ""."""
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        return "lists no decoder configs"
    variants = {str(m.get("backbone", SegmenterConfig.backbone)) for m in members}
    if not variants <= set(LITE_VARIANTS) or len(variants) != 1:
        return (f"names the backbone {' and '.join(sorted(variants))}: one of {', '.join(LITE_VARIANTS)} was "
                "expected")
    if any(m.get("num_classes", SegmenterConfig.num_classes) != class_count for m in members):
        return f"gives a decoder for another number of classes than its {class_count} class names"
    return ""


def load_colorizer(device: torch.device, weight_id: str = COLORIZER_WEIGHTS,
                   manifest: Manifest | None = None) -> Colorizer:
    manifest = manifest or Manifest.load()
    entry = manifest.entry(weight_id)
    config = dict(entry.config)
    classes, size = tuple(config.pop("classes")), int(config.pop("input_size"))
    model = ColorizationUNet(ColorizerConfig.from_dict(config))
    state = manifest.load_state_dict(weight_id)
    if model.config.backbone and not any(key.startswith("backbone.") for key in state):
        # the frozen backbone ships once (its own verified file); this weight file holds the rest
        missing = model.backbone.load_state_dict(load_pretrained(manifest).state_dict(), strict=False).missing_keys
        head = {key for key in model.state_dict() if not key.startswith("backbone.")}
        if missing or set(state) != head:
            raise SemanticError(ErrorCode.weights_corrupt,
                                f"Weight file {manifest.path(weight_id)} does not fit the colorizer "
                                f"(missing {sorted(head - set(state))[:3]}, unexpected "
                                f"{sorted(set(state) - head)[:3]}). Re-run the installer.")
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict(state, strict=True)
    return Colorizer(model.to(device).eval(), classes, size, device)


def model_shape(height: int, width: int, side: int, multiple: int = 16) -> tuple[int, int]:
    """The network's input size: area about side², the photo's aspect ratio, sides multiples of 16."""
    scale = side / np.sqrt(height * width)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def strip_rows(width: int) -> int:
    return max(1, STRIP_PIXELS // max(1, width))


def over_strips(height: int, width: int, work: Callable[[int, int], None]) -> None:
    """Call work(start, stop) for every strip of rows, the strips spread over torch's thread count.

    Whole strips per thread, each strip's torch ops on one thread: a multi-threaded op per strip meets
    its threads at a barrier dozens of times per strip, and on a loaded CPU (a descheduled thread holding
    the barrier) 24 MP took 10× the CPU time of one thread. torch ops, OpenCV and NumPy's large-array
    loops release the GIL, so Python threads run the strips in parallel.
    """
    rows = strip_rows(width)
    starts = range(0, height, rows)
    threads = torch.get_num_threads()
    if threads <= 1 or len(starts) <= 1:
        for start in starts:
            work(start, min(height, start + rows))
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(lambda start: work(start, min(height, start + rows)), starts):
                pass
    finally:
        torch.set_num_threads(threads)


def image_lightness(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Any H×W×C image → (H×W float32 CIELab L in [0, 100], alpha or None); color is ignored.

    L alone (not a and b), and for 8/16-bit pixels the sRGB curve read from a table of every level,
    computed by the same function on the same float32 values, so the result is the one of the formula."""
    color, alpha = split_alpha(image)
    table = None
    if color.dtype in (np.uint8, np.uint16):
        levels = torch.arange(np.iinfo(color.dtype).max + 1, dtype=torch.float32)
        table = srgb_to_linear_torch(torch.from_numpy(to_float(levels.numpy().astype(color.dtype)))).numpy()
    lightness = np.empty(color.shape[:2], np.float32)

    @torch.no_grad()
    def convert(start: int, stop: int) -> None:
        strip = color[start:stop]
        linear = torch.from_numpy(np.take(table, strip)) if table is not None else srgb_to_linear_torch(
            torch.from_numpy(to_float(strip)))
        lightness[start:stop] = linear_to_lightness_torch(linear, dim=-1).numpy()

    over_strips(*color.shape[:2], convert)
    return lightness, alpha


def _resize(array: np.ndarray, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = shape
    if array.shape[:2] == (h, w):
        return array
    return cv2.resize(array, (w, h), interpolation=interpolation)


def _gray_tensor(lightness_small: np.ndarray, device: torch.device, channels: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(lightness_small)) / L_SCALE - 1
    return t[None, None].expand(1, channels, -1, -1).contiguous().to(device)


@torch.no_grad()
def segment(lightness: np.ndarray, segmenter: Segmenter) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution L → (class ids at full size H×W uint8, class ids at model size)."""
    model = segmenter.model
    # an ensemble's members each read the photo at about their training size, resized from full resolution
    sides = model.input_sizes if isinstance(model, SegmenterEnsemble) else (segmenter.input_size,)
    grays = [_gray_tensor(_resize(lightness, model_shape(*lightness.shape, side, model.pad_multiple()),
                                  cv2.INTER_AREA), segmenter.device, 1) for side in sides]
    logits = (model(grays) if isinstance(model, SegmenterEnsemble) else model(grays[0]))[0].float().cpu()
    logits = logits[1:]  # 'unlabeled' is not a prediction: ids are argmax + 1
    ids_small = (logits.argmax(0) + 1).numpy().astype(np.uint8)
    h, w = lightness.shape
    scale = min(1.0, MAX_MAP_SIDE / max(h, w))
    mid = (max(1, round(h * scale)), max(1, round(w * scale)))
    # class scores interpolate smoothly; the argmax at a finer grid gives boundaries that are not blocky
    fine = torch.nn.functional.interpolate(logits[None], size=mid, mode="bilinear", align_corners=False)
    ids_mid = (fine[0].argmax(0) + 1).numpy().astype(np.uint8)
    return _resize(ids_mid, (h, w), cv2.INTER_NEAREST), ids_small


def downsample_ids(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class ids → smaller grid by majority (area coverage), so thin regions do not alias away."""
    if ids.shape == shape:
        return ids
    present = np.unique(ids)
    best = np.full(shape, -1.0, np.float32)
    out = np.zeros(shape, np.uint8)
    for c in present:
        coverage = _resize((ids == c).astype(np.float32), shape, cv2.INTER_AREA)
        better = coverage > best
        best[better], out[better] = coverage[better], c
    return out


def model_inputs(lightness: np.ndarray, ids: np.ndarray | None, colorizer: Colorizer,
                 ids_small: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution L and class ids (or None: no map) → the colorizer's (gray, map) inputs at model size.

    ``ids_small``, the segmenter's ids at model size, saves reducing a huge map when the sizes agree.
    """
    shape = model_shape(*lightness.shape, colorizer.input_size)
    if ids_small is not None and ids_small.shape == shape:
        ids = ids_small
    elif ids is not None and ids.shape[0] > MAP_OVERSAMPLING * shape[0]:
        # the majority vote needs coverage, not every pixel: a 24 MP map thinned to 4× the grid first
        # (~0.5 s saved at 24 MP), nearest so that no class id is invented
        ids = _resize(ids, (MAP_OVERSAMPLING * shape[0], MAP_OVERSAMPLING * shape[1]), cv2.INTER_NEAREST)
    small = _resize(lightness, shape, cv2.INTER_AREA)
    gray = _gray_tensor(small, colorizer.device, colorizer.model.config.in_channels)
    if ids is None:
        semantic = torch.zeros_like(gray)
    else:
        palette = torch.from_numpy(class_colors(len(colorizer.classes)).astype(np.float32) / 255)
        ids_small = torch.from_numpy(downsample_ids(ids, shape).astype(np.int64))
        if int(ids_small.max()) >= len(colorizer.classes):
            raise bad_input(f"The semantic map uses class id {int(ids_small.max())}, but the colorizer knows "
                            f"only {len(colorizer.classes)} classes.")
        semantic = palette[ids_small].permute(2, 0, 1)[None].to(colorizer.device)
    return gray, semantic


@torch.no_grad()
def predict_ab(lightness: np.ndarray, ids: np.ndarray | None, colorizer: Colorizer,
               ids_small: np.ndarray | None = None) -> np.ndarray:
    """Full-resolution L and full-resolution class ids (or None: no map) → ab at model size h×w×2."""
    ab = colorizer.model(*model_inputs(lightness, ids, colorizer, ids_small))[0].float().cpu()
    return ab.permute(1, 2, 0).numpy() * AB_SCALE


def combine(lightness: np.ndarray, ab_small: np.ndarray, guided: GuidedUpsampling = GUIDED,
            out_dtype: np.dtype | None = None,
            alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-resolution L + model-size ab → (full-resolution float32 Lab with L kept bit-exact, and with
    ``out_dtype`` the RGB(A) image of that pixel type converted strip by strip while the Lab is fresh)."""
    h, w = lightness.shape
    coefficients = chroma_coefficients(lightness, ab_small, guided)
    lab = np.empty((h, w, 3), np.float32)
    out = None if out_dtype is None else np.empty((h, w, 3 if alpha is None else 4), out_dtype)

    def fill(start: int, stop: int) -> None:
        strip = lightness[start:stop]
        lab[start:stop, :, 0] = strip
        coefficients.rows(strip, start, out=lab[start:stop, :, 1:])
        if out is not None:
            out[start:stop, :, :3] = from_float(lab_to_rgb(lab[start:stop]), out_dtype)

    over_strips(h, w, fill)
    if out is not None and alpha is not None:
        out[..., 3:] = _alpha_as(alpha, out_dtype)
    return lab, out


def _alpha_as(alpha: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return alpha.astype(dtype) if alpha.dtype == dtype else from_float(to_float(alpha), dtype)


def lab_to_image(lab: np.ndarray, dtype: np.dtype, alpha: np.ndarray | None) -> np.ndarray:
    """Float Lab → RGB(A) of the input's pixel type, in strips."""
    h, w = lab.shape[:2]
    out = np.empty((h, w, 3 if alpha is None else 4), dtype)

    def convert(start: int, stop: int) -> None:
        out[start:stop, :, :3] = from_float(lab_to_rgb(lab[start:stop]), dtype)

    over_strips(h, w, convert)
    if alpha is not None:
        out[..., 3:] = _alpha_as(alpha, dtype)
    return out


def colorize(image: np.ndarray, colorizer: Colorizer, ids: np.ndarray | None,
             lightness: np.ndarray | None = None,
             ids_small: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """H×W×C image (gray or RGB, any size/type) → (colorized image of the same size, type and alpha, Lab).

    ``lightness`` is image_lightness(image)[0] when the caller has it already.
    """
    alpha = split_alpha(image)[1]
    if lightness is None:
        lightness = image_lightness(image)[0]
    if ids is not None and ids.shape != lightness.shape:
        raise bad_input(f"The semantic map is {ids.shape[1]}×{ids.shape[0]} but the image is "
                        f"{lightness.shape[1]}×{lightness.shape[0]}; they must be the same size.")
    ab_small = predict_ab(lightness, ids, colorizer, ids_small if ids is not None else None)
    dtype = image.dtype if image.dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
    lab, out = combine(lightness, ab_small, out_dtype=dtype, alpha=alpha)
    return out, lab
