"""One propagation run: strokes → DeepProp learning (or its incremental update) → superpixel-wise or
per-pixel estimation → Eq. 15 post-processing → the chosen application.

``ImageState`` is what the daemon keeps per image between runs (in JobContext.models): the patch
tensor, superpixels, the edge graph and the trained network with its class keys, so re-running
after editing one path reuses everything that did not change (Sec. 4.1).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from core.imaging.color import rgb_to_lab
from core.models.deepprop import DeepProp, DeepPropConfig
from core.models.efficientnet_lite import EfficientNetLite0, load_pretrained
from core.propagation import apps
from core.propagation.estimate import PatchSource, estimate_pixels, estimate_superpixels, is_gray
from core.propagation.learn import TrainingLog, learn
from core.propagation.semantic import SemanticConfig, guided_filter, semantic_features
from core.propagation.slic import SlicResult, slic
from core.propagation.smoothing import (
    EdgeGraph,
    SmoothingConfig,
    eroded_edge_weights,
    image_edge_weights,
    smooth,
)
from core.propagation.snap import StrokeSupport, local_change, snap_selection
from core.propagation.strokes import DEFAULT_BG, DEFAULT_FG, RGB, Strokes
from core.protocol import bad_input

Progress = Callable[[float, str], None]
BackboneLoader = Callable[[], EfficientNetLite0]
PIXELS_PER_SUPERPIXEL = 100  # default density: S ≈ 10 px


@dataclass(frozen=True)
class PropagationOptions:
    mode: str = "masks"
    superpixels: int = 0  # number of SLIC superpixels; 0 = one per ``pixels_per_superpixel`` pixels
    pixels_per_superpixel: int = PIXELS_PER_SUPERPIXEL
    per_pixel: bool = False  # per-pixel estimation instead of superpixel-wise
    superpixel_iterations: int = 10  # SLIC's assignment/update rounds (Achanta et al. use 10)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    fg: RGB = DEFAULT_FG
    bg: RGB = DEFAULT_BG
    seed: int = 0
    model: DeepPropConfig = field(default_factory=DeepPropConfig)
    # How the semantic features are computed when ``model.semantic_channels`` > 0 (its channels
    # field is taken from the model config).
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    color_space: str = "lab"  # colorize: where the strokes' chroma is mixed (apps.COLOR_SPACES)
    # Select mode: a correction changes only the parts of the selection it touches (snap.local_change).
    local_corrections: bool = False


# Named configurations (``--config`` of the CLI and the bench). "paper" is Endo et al.'s network and
# post-processing as published (with the measured reading of Algorithm 1, see DeepPropConfig).
# "semantic" (the default) adds what the dev split showed the paper's network lacks (30 dev images,
# mean F1 first → after one correction stroke, user-like strokes): semantic features of the frozen
# ImageNet backbone, 8 principal components of its stride-8/16 maps (paper 0.764 → 0.806 / 0.808 →
# 0.837), stroke pixels as constraints of the Eq. 15 post-processing (→ 0.817 / 0.846) with the
# network's estimate weighted 0.1 elsewhere (→ 0.823 / 0.853; the same without semantic features
# 0.803 / 0.838); the backbone's input mirrored by 32 px so the frame has no zero-padding band (→ 0.813
# / 0.847, a fix for the frame, within the noise), the estimate re-weighted by the classes' shares of
# the stroke pixels (→ 0.834 / 0.855: small objects were over-predicted, coco128-seg 0.699 / 0.747 →
# 0.755 / 0.795). Baselines on the same strokes: GrabCut 0.778 /
# 0.811, random walker 0.748 / 0.815. Within the noise of 30 images (±0.01), so left at the above:
# 16 components (0.823 / 0.838), stride-4/8 taps (0.821 / 0.855), λ = 2 (0.818 / 0.857) or 20
# (0.828 / 0.841), data weight 0.01 (0.827 / 0.856), β band radius 8 px (0.826 / 0.856), Ω' 30 %
# (0.826 / 0.859, slower), half of an update's Ω' from the new stroke (0.823 / 0.853). Colorization
# (6 BSDS dev photos, ΔE): Lab 6.84 / 6.97 on a gray made from L* / from luma, "luma" 7.09 / 6.95.
#
# Then, on the same dev split (from 0.834 / 0.855): 64 % of the wrong pixels lay within 4 px of the
# true outline (DAVIS 85 %), often a halo of background around a person, and a correction stroke
# lowered photos-with-masks (0.911 → 0.906) and DAVIS frames. Kept: the incremental update at 0.3×
# Adam's rate (→ 0.834 / 0.861; every set now rises after the correction: a fresh Adam's first steps
# had shaken the kept network, 1.0× 0.855, from-scratch retraining 0.860); guided filters of the
# semantic features and of the estimate, radius 8 (→ 0.851 / 0.870 with both; each alone 0.841 / 0.862
# and 0.840 / 0.860); in select mode a graph cut (GrabCut's colour models fitted to the estimate)
# re-deciding a band of 10 px, at most a third of the object's depth, around the outline (all of the
# above: 0.861 / 0.882; ccp 0.917 / 0.939 → 0.955 / 0.960; a fixed 10 px band took small COCO objects
# away, coco128-seg 0.693 first); SLIC with 5 iterations instead of 10 (0.860 / 0.879, within the
# noise, 0.1 s less at 640×480). The same default with the guided filter's resampling moved from
# OpenCV to torch (faster, numerically a hair different): 0.861 / 0.868, the correction round moved by
# two images alone (a tiny-people COCO photo, 0.532 → 0.394, and a dog whose simulated correction
# stroke covers its legs, 0.903 → 0.762): the correction round is that noisy on 30 images. Neither a
# 16 px band (0.864 / 0.869) nor 5 GrabCut iterations (0.861 / 0.869) did better; a 0.1× rate gave
# 0.861 / 0.875 (coco128-seg 0.794 vs 0.777, within the noise of 8 images; 0.3 kept). Tried and dropped:
# a per-image colour histogram posterior multiplied into the estimate (w 0.3 / 0.5: 0.836 / 0.848 and
# 0.835 / 0.851), one superpixel per 200 px (0.855 / 0.874, COCO's small objects lose),
# chromaticity-preserving colorization (BSDS dev ΔE 7.20 vs 6.84).
# Colorization stays in "lab" (GIMP's gray is L*-consistent, and the plug-in promises the lightness
# kept); "auto" (apps.matching_color_space: reads from the strokes whether the gray is L* or luma) is an
# option: Levin's luma-gray example2 ΔE 16.9 → 12.5 (Levin 9.0), example3 12.8 → 16.2 (Levin 17.4),
# BSDS unchanged (it picks lab there).
# Pass two: the guided filters' resampling moved to OpenCV's one-pass multichannel resize and the
# semantic features resampled from their stride-8 grid straight to the filter's coefficient grid (no
# full-size copy shrunk again): 640×480 full run 1.08 → 0.83 CPU s, dev F1 0.860 / 0.875 (numerically
# a hair different features). Tried for colorization and not kept (6 BSDS dev photos ΔE, example2):
# each non-stroke pixel's data weight scaled by the estimate's reliability, its top-two margin or the
# class purity of a 17 px / 33 px window, with the CG solve converged (tolerance 1e-5): BSDS 6.89 →
# 6.89 / 7.10 (first 5 photos), example2 16.95 → 16.58 / 16.54 (Levin 8.97): the glasses' wrong
# classes are confident, so no reliability of the estimate finds them; a converged solve with data
# weight 0.1 / 0.01 everywhere: BSDS 6.89 / 6.91, example2 16.77 / 16.72. Outline precision (dev F1
# first / corrected, from 0.860 / 0.875): the estimate's guided filter with ε = 1e-4 0.857 / 0.872, its
# coefficients at 1/2 size 0.858 / 0.871 (ccp 0.949 / 0.960 against 0.949 / 0.964): not kept.
# Pass three: on the bench a background correction on the pavement between a woman's legs also took
# her grey coat away (F1 0.945 → 0.80), a retrained network moving far from the edit. Kept: in select
# mode a correction changes only the flipped parts of the selection it touches (snap.local_change):
# dev 0.860 / 0.876 → 0.860 / 0.878, corrections that lowered F1 6 → 2 of 30. The simulated correction
# stroke now marks missed or extra pixels, never both (simulate.correction_stroke).
# Pass four: the 2 dev corrections that still lowered F1 flipped more than their stroke marked, in one
# connected part: a background stroke in the grass between a dog's legs took the legs (0.896 → 0.769),
# one over a blurred street crowd took the people (0.458 → 0.313). Kept: a flip must be supported by
# its stroke (snap.supported_flips: closer in CIELab to 5 k-means centres of the new stroke's colours
# than to 5 of the other side's unflipped pixels around it, and connected to the stroke through such
# pixels; doubts smaller than a brush's footprint count as supported): dev 0.859 / 0.877 → 0.859 / 0.887,
# no correction lowers F1 (2 of 30 before; photos-with-masks 0.929 → 0.952, coco128-seg 0.786 → 0.806);
# it costs ~4 ms CPU of a 0.27 s correction (dev, 480 px).
# Measured, not kept: without the speck rule 0.886 (good corrections trimmed: a small person 0.553 →
# 0.514); without it also 3 centres 0.886 (one lowered), a flip supported when its distance to the stroke's side is
# within 2× / 4× that to the other's 0.886 / 0.884, a GrabCut of the touched flips (strokes and
# unflipped pixels as hard constraints) 0.878, both still lowered; the snap's graph cut re-deciding
# everything within 15 / 30 px of the new stroke 0.885 / 0.885. GrabCut's k-means start now has a fixed
# seed: OpenCV's random state left by earlier calls had moved one dev photo's first round by 0.017
# (this pass's numbers are with the seed).
CONFIGS: dict[str, dict] = {
    "paper": {"model": DeepPropConfig(), "smoothing": SmoothingConfig(), "color_space": "lab"},
    "semantic": {
        "model": DeepPropConfig(semantic_channels=8, stroke_prior=1.0, incremental_lr_scale=0.3),
        "smoothing": SmoothingConfig(
            stroke_weight=100.0, data_weight=0.1, guide_radius=8, snap_band=10, correction_colours=5
        ),
        "semantic": SemanticConfig(guide_radius=8),
        "superpixel_iterations": 5,
        "color_space": "lab",
        "local_corrections": True,
    },
}
DEFAULT_CONFIG = "semantic"


def configured(mode: str, config: str = DEFAULT_CONFIG, **fields) -> PropagationOptions:
    """Options for ``mode`` with the named configuration's network, post-processing and colour space;
    ``fields`` set the rest (fg, bg, seed, ...)."""
    if config not in CONFIGS:
        raise bad_input(f"Unknown DeepProp configuration '{config}'; choose one of {', '.join(CONFIGS)}.")
    return PropagationOptions(mode=mode, **{**CONFIGS[config], **fields})


@dataclass
class ImageState:
    fingerprint: str
    source: PatchSource
    lab: np.ndarray
    superpixels: dict[tuple[int, int], SlicResult] = field(default_factory=dict)  # by (count, iterations)
    graphs: dict[float | None, EdgeGraph] = field(default_factory=dict)
    model: DeepProp | None = None
    class_keys: list[str] = field(default_factory=list)
    stroke_labels: np.ndarray | None = None  # the strokes the kept network was trained on
    strokes_digest: str = ""
    # The last Eq. 15 solve: (what was smoothed, its solution minus its estimate), to start the next
    # solve of the same kind close to its answer.
    last_smoothing: tuple[tuple, np.ndarray] | None = None
    # The patch source with semantic features, per semantic config: computed once per image, so an
    # incremental update does not run the backbone again.
    semantic_sources: dict[SemanticConfig, PatchSource] = field(default_factory=dict)
    last_selection: np.ndarray | None = None  # select mode's last output, for local corrections

    def source_for(self, rgb: np.ndarray, cfg: SemanticConfig, backbone: BackboneLoader) -> PatchSource:
        """The patch source with ``rgb``'s (this state's image) semantic features."""
        if cfg.channels <= 0:
            return self.source
        if cfg not in self.semantic_sources:
            features = semantic_features(rgb, backbone(), cfg)
            self.semantic_sources[cfg] = self.source.with_semantic(features)
        return self.semantic_sources[cfg]

    def warm_start(self, key: tuple, values: np.ndarray) -> np.ndarray | None:
        """x_prev + (y − y_prev): the previous solution moved by how much the estimate changed. Exact
        where the edit did not change the estimate; after adding one stroke that is most of the image,
        so CG only has to work where the new stroke changed things."""
        if self.last_smoothing is None or self.last_smoothing[0] != key:
            return None
        return values + self.last_smoothing[1]

    def surviving_rows(self, keys: list[str], labels: np.ndarray) -> list[int | None]:
        """For each new class, its LE row in the kept network, or None for a new class.

        A class survives when it keeps its key and at least half of its previous stroke pixels:
        extending or trimming a path keeps what was learned; a path redrawn elsewhere (or a color
        reused for a different region) is a new class, so old knowledge cannot contradict it.
        """
        rows: list[int | None] = []
        for index, key in enumerate(keys):
            row = self.class_keys.index(key) if key in self.class_keys else None
            if (
                row is not None
                and self.stroke_labels is not None
                and self.stroke_labels.shape == labels.shape
            ):
                before = self.stroke_labels == row
                if (labels[before] == index).sum() * 2 < before.sum():
                    row = None
            rows.append(row)
        return rows

    def superpixels_for(self, count: int, iterations: int = 10) -> SlicResult:
        if (count, iterations) not in self.superpixels:
            self.superpixels[(count, iterations)] = slic(self.lab, count, iterations=iterations)
        return self.superpixels[(count, iterations)]

    def graph_for(self, sigma: float | None) -> EdgeGraph:
        if sigma not in self.graphs:
            self.graphs[sigma] = EdgeGraph(self.lab, sigma)
        return self.graphs[sigma]


@dataclass
class PropagationResult:
    output: np.ndarray  # colorize/recolor: H×W×3 RGB; select: H×W; masks: H×W×n (floats in [0, 1])
    probabilities: np.ndarray  # raw estimate H×W×n (before post-processing)
    colors: np.ndarray  # n×3 u8 class colors
    log: TrainingLog | None
    incremental: bool
    timings: dict[str, float]


def image_fingerprint(rgb: np.ndarray) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(rgb).view(np.uint8)).hexdigest()
    return f"{rgb.shape[0]}x{rgb.shape[1]}:{digest[:16]}"


def new_state(
    rgb: np.ndarray, device: torch.device | str = "cpu", fingerprint: str | None = None
) -> ImageState:
    return ImageState(
        fingerprint or image_fingerprint(rgb), PatchSource.from_image(rgb, device=device), rgb_to_lab(rgb)
    )


def propagate(
    rgb: np.ndarray,
    strokes: Strokes,
    options: PropagationOptions,
    state: ImageState | None = None,
    progress: Progress | None = None,
    device: torch.device | str = "cpu",
    backbone: BackboneLoader | None = None,
) -> tuple[PropagationResult, ImageState]:
    """rgb: H×W×3 float in [0, 1]; strokes at the same size. Returns the result and the state to keep.
    ``backbone`` gives the frozen ImageNet backbone when the config uses semantic features (default:
    loaded from the verified weight file)."""
    report = progress or (lambda fraction, text: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if options.mode not in apps.MODES:
        raise bad_input(f"Unknown mode '{options.mode}'; choose one of {', '.join(apps.MODES)}.")
    if strokes.labels.shape != rgb.shape[:2]:
        raise bad_input(
            f"The strokes are {strokes.labels.shape[1]}×{strokes.labels.shape[0]} but the image is "
            f"{rgb.shape[1]}×{rgb.shape[0]}; they must have the same size."
        )
    if strokes.num_classes < 2:
        raise bad_input(
            "Only one stroke class was found. Draw strokes in at least two colors (e.g. one on the "
            "object and one on the background) so there is something to tell apart."
        )
    is_fg = (
        apps.foreground_classes(strokes.colors, options.fg, options.bg) if options.mode == "select" else None
    )

    fingerprint = image_fingerprint(rgb)
    if state is None or state.fingerprint != fingerprint:
        state = new_state(rgb, device, fingerprint)
    cfg = replace(options.model, in_channels=state.source.channels)
    if cfg.semantic_channels:
        loader = backbone or (lambda: load_pretrained(device=device))
        source = state.source_for(rgb, replace(options.semantic, channels=cfg.semantic_channels), loader)
    else:
        source = state.source
    keys = strokes.keys()
    digest = hashlib.sha1(strokes.labels.tobytes() + ",".join(keys).encode()).hexdigest()
    timings["prepare"] = time.perf_counter() - clock

    # Learning (Algorithm 1) or its incremental update (Sec. 4.1).
    clock = time.perf_counter()
    log = None
    new_pixels = None
    edited = None  # stroke pixels added or erased since the kept network's strokes
    # Sec. 4.1 refines the kept network when strokes are added or removed; when no stroke class
    # survives, the strokes describe a new problem and Algorithm 1 starts over (with pre-training).
    kept_rows = state.surviving_rows(keys, strokes.labels) if state.model is not None else [None] * len(keys)
    incremental = state.model is not None and state.model.cfg == cfg and any(r is not None for r in kept_rows)
    if incremental and digest == state.strokes_digest and keys == state.class_keys:
        model = state.model  # nothing changed: the trained network already fits these strokes
        report(0.7, "Strokes unchanged; reusing the trained network")
    else:
        model = None
        if incremental:
            previous = state.stroke_labels
            marked = strokes.labels >= 0
            new_pixels = marked if previous is None or previous.shape != marked.shape else marked & (previous < 0)
            if previous is not None and previous.shape == marked.shape:
                edited = new_pixels | ((previous >= 0) & ~marked)  # strokes added or erased
            # A copy, so a cancelled or failed run leaves the kept network and its class keys intact.
            model = copy.deepcopy(state.model)
            model.resize_classes(kept_rows)
        model, log = learn(
            model,
            source,
            strokes.labels,
            cfg,
            seed=options.seed,
            progress=lambda f, t: report(0.05 + 0.65 * f, t),
            new_pixels=new_pixels,
        )
    state.model, state.class_keys, state.strokes_digest = model, keys, digest
    state.stroke_labels = strokes.labels
    timings["learn"] = time.perf_counter() - clock

    # Estimation (Sec. 5.1).
    clock = time.perf_counter()
    h, w = rgb.shape[:2]
    if options.per_pixel:
        report(0.72, "Estimating every pixel")
        probs = estimate_pixels(
            model, source, lambda f: report(0.72 + 0.13 * f, "Estimating every pixel")
        )
        radius = options.smoothing.radius or 2.0
    else:
        report(0.72, "Superpixels")
        count = options.superpixels or max(2, h * w // options.pixels_per_superpixel)
        superpixels = state.superpixels_for(int(count), options.superpixel_iterations)
        report(0.8, "Estimating superpixels")
        probs = estimate_superpixels(model, source, superpixels.labels, superpixels.centers)
        radius = options.smoothing.radius or max(1.0, superpixels.spacing / 4)
    if cfg.stroke_prior > 0:
        shares = np.bincount(strokes.labels[strokes.labels >= 0], minlength=probs.shape[2]).astype(np.float32)
        prior = (shares / max(shares.sum(), 1.0) * probs.shape[2]) ** cfg.stroke_prior
        probs = probs * prior
        probs /= np.maximum(probs.sum(2, keepdims=True), 1e-12)
    if options.smoothing.guide_radius > 0:
        probs = guided_filter(
            rgb, probs, options.smoothing.guide_radius, options.smoothing.guide_eps, options.smoothing.guide_subsample
        )
        probs = np.clip(probs, 1e-6, None)
        probs /= probs.sum(2, keepdims=True)
    timings["estimate"] = time.perf_counter() - clock

    # Post-processing (Sec. 5.2, Eq. 15).
    clock = time.perf_counter()
    report(0.86, "Edge-aware smoothing")
    iterations = []
    estimate = probs
    if options.smoothing.strength > 0:
        cfg_smooth = options.smoothing
        graph = state.graph_for(None if cfg_smooth.affinity == "local" else cfg_smooth.sigma)
        if cfg_smooth.edges_from == "image":
            weights = image_edge_weights(state.lab, radius)
        else:
            weights = eroded_edge_weights(probs.argmax(2), radius)
        if cfg_smooth.stroke_weight > 0:
            # The user said what these pixels are: their class, held with the stroke weight.
            marked = strokes.labels >= 0
            estimate = probs.copy()
            estimate[marked] = np.eye(probs.shape[2], dtype=probs.dtype)[strokes.labels[marked]]
            weights = weights * cfg_smooth.data_weight
            weights[marked] = cfg_smooth.stroke_weight

        def smoother(values: np.ndarray) -> np.ndarray:
            key = (options.mode, options.smoothing, options.per_pixel, values.shape)
            start = state.warm_start(key, values)
            out, its = smooth(graph, values, weights, options.smoothing, start)
            state.last_smoothing = (key, out - values)
            iterations.append(its)
            return out
    else:

        def smoother(values: np.ndarray) -> np.ndarray:
            return values

    if options.mode == "colorize":
        space = options.color_space
        if space == "auto":
            space = apps.matching_color_space(rgb, strokes.labels, strokes.colors)
        output = apps.colorize(rgb, estimate, strokes.colors, smoother, state.lab, space)
    elif options.mode == "recolor":
        output = apps.recolor(rgb, estimate, strokes.labels, strokes.colors, smoother, state.lab)
    elif options.mode == "select":
        output = apps.select(estimate, is_fg, smoother)
        fg_strokes = np.isin(strokes.labels, np.flatnonzero(is_fg))
        bg_strokes = (strokes.labels >= 0) & ~fg_strokes
        if options.smoothing.snap_band > 0:
            output = snap_selection(
                rgb, output, fg_strokes, bg_strokes, options.smoothing.snap_band, options.smoothing.snap_iterations
            )
        last = state.last_selection
        if options.local_corrections and edited is not None and last is not None:
            colours = options.smoothing.correction_colours
            support = StrokeSupport(state.lab, fg_strokes, bg_strokes, colours) if colours > 0 else None
            output = local_change(last, output, edited, support=support)
        state.last_selection = output
    else:
        output = apps.masks(estimate, smoother)
    if options.mode != "select":
        state.last_selection = None
    timings["postprocess"] = time.perf_counter() - clock
    timings["cg_iterations"] = float(sum(iterations))
    report(1.0, "Done")
    return PropagationResult(output, probs, strokes.colors, log, incremental, timings), state


def prepare_rgb(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Any action image (H×W×C u8/u16/f32, gray or with alpha) → (float RGB, alpha, was gray)."""
    from core.imaging.io import split_alpha, to_float

    if image.ndim == 2:
        image = image[..., None]
    color, alpha = split_alpha(image)
    rgb = to_float(color)
    return rgb, alpha, is_gray(rgb)
